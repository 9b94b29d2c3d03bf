"""Activation caches written by rehyat, read with h5py alone (SPEC §4 step 1: readable
with h5py).

The files come from the C++ test binary's WritesFilesForPython case ($REHYAT_CACHE_TEST_BIN,
set by ctest), which writes f32.h5 (no gzip) and bf16.h5 (gzip 4) into $REHYAT_CACHE_PY_DIR:
blocks {1, 3}, tokens 4, dim 6, 3 of 4 entries written, every attn_in value
(7b + 3e + 5n - 2d) / 8 and attn_out = attn_in + 1; metadata prompt_id 10+e, seed 2^63+e,
step 2e, sigma 1 - e/4. Values, attributes, layout and the per-row CRC-32 checksums are
checked the way a user would, with numpy and zlib.
"""
import os
import struct
import subprocess
import zlib

import h5py
import numpy as np
import pytest

BLOCKS, TOKENS, DIM, WRITTEN, TOTAL = [1, 3], 4, 6, 3, 4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    binary = os.environ.get("REHYAT_CACHE_TEST_BIN")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(f"REHYAT_CACHE_TEST_BIN must name the built test_activation_cache (got {binary!r}); run through ctest")
    out = tmp_path_factory.mktemp("activation_cache")
    result = subprocess.run([binary, "--gtest_filter=ActivationCache.WritesFilesForPython"],
                            env={**os.environ, "REHYAT_CACHE_PY_DIR": str(out)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def expected_attn_in(block, entry):
    n, d = np.meshgrid(np.arange(TOKENS), np.arange(DIM), indexing="ij")
    return ((7 * block + 3 * entry + 5 * n - 2 * d) / 8).astype(np.float32)


def stored_bytes(row_f32, dtype):
    """The bytes the checksum covers: f32 as is, bf16 as the top 16 bits of each f32."""
    row_f32 = np.ascontiguousarray(row_f32, dtype="<f4")
    if dtype == "bf16":
        return (row_f32.view("<u4") >> 16).astype("<u2").tobytes()
    return row_f32.tobytes()


@pytest.mark.parametrize("name,dtype,gzip", [("f32.h5", "f32", 0), ("bf16.h5", "bf16", 4)])
def test_cache_reads_with_h5py(cache_dir, name, dtype, gzip):
    with h5py.File(cache_dir / name, "r") as f:
        attrs = dict(f.attrs)
        assert attrs["format"] == "rehyat-activation-cache"
        assert attrs["format_version"] == 1
        assert attrs["model_hash"] == "py-hash"
        assert list(attrs["blocks"]) == BLOCKS
        assert (attrs["tokens"], attrs["dim"]) == (TOKENS, DIM)
        assert attrs["dtype"] == dtype
        assert (attrs["total_entries"], attrs["entries_written"], attrs["gzip_level"]) == (TOTAL, WRITTEN, gzip)

        for block in BLOCKS:
            for side, offset in (("attn_in", 0.0), ("attn_out", 1.0)):
                ds = f[f"blocks/{block}/{side}"]
                assert ds.shape == (TOTAL, TOKENS, DIM)
                assert ds.chunks == (1, TOKENS, DIM)
                assert ds.compression == ("gzip" if gzip else None)
                stored = ds.id.get_type()  # bf16: sign bit 15, exponent 7..14, mantissa 0..6
                assert stored.get_size() == (2 if dtype == "bf16" else 4)
                if dtype == "bf16":
                    assert stored.get_fields() == (15, 7, 8, 0, 7)
                crcs = f[f"blocks/{block}/{side}_crc32"][:]
                for entry in range(WRITTEN):
                    row = ds.astype("f4")[entry]  # exact f32 for bf16 storage too
                    np.testing.assert_array_equal(row, expected_attn_in(block, entry) + offset)
                    assert zlib.crc32(stored_bytes(row, dtype)) == crcs[entry], (block, side, entry)

        meta = {k: f[f"meta/{k}"][:] for k in ("prompt_id", "seed", "step", "sigma", "crc32")}
        assert meta["seed"].dtype == np.uint64
        for entry in range(WRITTEN):
            row = (int(meta["prompt_id"][entry]), int(meta["seed"][entry]), int(meta["step"][entry]),
                   float(meta["sigma"][entry]))
            assert row == (10 + entry, 2**63 + entry, 2 * entry, 1 - entry / 4)
            assert zlib.crc32(struct.pack("<qQqd", *row)) == meta["crc32"][entry]
