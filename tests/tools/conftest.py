"""Shared pytest fixtures of the CLI tests (pytest loads this file for every test here)."""
import os

import pytest


@pytest.fixture(scope="session")
def rehyat_bin():
    """The built `rehyat` binary, from REHYAT_BIN (ctest sets it)."""
    path = os.environ.get("REHYAT_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"REHYAT_BIN must name the built rehyat binary (got {path!r}); run through ctest")
    return path
