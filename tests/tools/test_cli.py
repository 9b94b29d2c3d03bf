"""The `rehyat` CLI against the reference Python readers and writers.

Files written by `rehyat example` must load with the safetensors package (the Rust
loader that PyTorch/diffusers use) with the same values `rehyat inspect --json` reports;
files written by safetensors.numpy and h5py must be listed correctly; corrupt files must
fail with the file named. The binary comes from $REHYAT_BIN (set by ctest).
"""
import json
import os
import re
import subprocess

import h5py
import numpy as np
import pytest
from safetensors import deserialize, safe_open
from safetensors.numpy import save_file

ALL_DTYPES = {"f32", "f64", "bf16", "f16", "i32", "i64"}
NUMPY_DTYPE = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def run(rehyat_bin, *args, check=True):
    result = subprocess.run([rehyat_bin, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"rehyat {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def inspect_json(rehyat_bin, path, values=0):
    args = ["inspect", path, "--json"] + (["--values", values] if values else [])
    return json.loads(run(rehyat_bin, *args).stdout)


def bf16_to_float32(raw):
    return (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view(np.float32)


def test_help_lists_the_subcommands(rehyat_bin):
    out = run(rehyat_bin, "--help").stdout
    assert "inspect" in out and "example" in out
    assert "inspect" in run(rehyat_bin, "inspect", "--help").stdout


def test_version_reports_cuda_and_gpus(rehyat_bin):
    out = run(rehyat_bin, "--version").stdout
    assert re.match(r"rehyat \d+\.\d+\.\d+\n", out), out
    assert re.search(r"CUDA: (yes|no \(CPU-only build\)), GPUs found: \d+", out), out


def test_usage_errors_exit_nonzero(rehyat_bin):
    assert run(rehyat_bin, check=False).returncode != 0
    assert run(rehyat_bin, "inspect", check=False).returncode != 0
    assert run(rehyat_bin, "no-such-command", check=False).returncode != 0


def test_example_then_inspect(rehyat_bin, tmp_path):
    path = tmp_path / "example.safetensors"
    run(rehyat_bin, "example", path, "--seed", 3)
    text = run(rehyat_bin, "inspect", path).stdout
    assert str(path) in text and "embed.weight" in text and "total:" in text

    info = inspect_json(rehyat_bin, path)
    assert info["format"] == "safetensors"
    assert {t["dtype"] for t in info["tensors"]} == ALL_DTYPES
    assert info["metadata"]["generator"] == "rehyat example"
    assert info["metadata"]["seed"] == "3"
    assert info["total_tensors"] == len(info["tensors"])
    assert info["total_bytes"] == sum(t["bytes"] for t in info["tensors"])
    assert info["file_bytes"] == os.path.getsize(path)


def test_example_loads_with_the_reference_reader_with_the_same_values(rehyat_bin, tmp_path):
    path = tmp_path / "example.safetensors"
    run(rehyat_bin, "example", path)
    ours = {t["name"]: t for t in inspect_json(rehyat_bin, path, values=10_000)["tensors"]}

    # deserialize() runs the Rust loader's full validation (gap-free, exact size).
    raw = dict(deserialize(path.read_bytes()))
    assert set(raw) == set(ours)
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["generator"] == "rehyat example"
        for name, entry in raw.items():
            assert entry["shape"] == ours[name]["shape"], name
            assert entry["dtype"].lower() == ours[name]["dtype"], name
            if entry["dtype"] == "BF16":  # numpy has no bfloat16: decode the bits
                values = bf16_to_float32(entry["data"])
            else:
                values = f.get_tensor(name)
                assert values.dtype == NUMPY_DTYPE[entry["dtype"]], name
            np.testing.assert_array_equal(np.asarray(values, dtype=np.float64).ravel(),
                                          np.asarray(ours[name]["values"], dtype=np.float64), err_msg=name)


def test_example_is_deterministic_per_seed(rehyat_bin, tmp_path):
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    run(rehyat_bin, "example", a, "--seed", 5)
    run(rehyat_bin, "example", b, "--seed", 5)
    run(rehyat_bin, "example", c, "--seed", 6)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_example_never_replaces_a_file_it_did_not_write(rehyat_bin, tmp_path):
    precious = tmp_path / "notes.safetensors"
    precious.write_text("my notes")
    result = run(rehyat_bin, "example", precious, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("rehyat: error:") and str(precious) in result.stderr
    assert precious.read_text() == "my notes"

    run(rehyat_bin, "example", precious, "--force")
    run(rehyat_bin, "example", precious, "--seed", 1)  # its own earlier output may be replaced
    assert inspect_json(rehyat_bin, precious)["metadata"]["seed"] == "1"


def test_inspect_file_written_by_safetensors_numpy(rehyat_bin, tmp_path):
    path = tmp_path / "from_numpy.safetensors"
    rng = np.random.default_rng(0)
    tensors = {
        "layer.weight": rng.standard_normal((2, 3)).astype(np.float32),
        "layer.bias": rng.standard_normal(4).astype(np.float16),
        "step": np.array(1234, dtype=np.int64),
        "empty": np.zeros((0, 5), dtype=np.int32),
        "stats": rng.standard_normal((1, 2, 3)).astype(np.float64),
    }
    save_file(tensors, str(path), metadata={"format": "np", "epoch": "7"})

    info = inspect_json(rehyat_bin, path, values=100)
    assert info["metadata"] == {"format": "np", "epoch": "7"}
    listed = {t["name"]: t for t in info["tensors"]}
    assert set(listed) == set(tensors)
    expected_dtype = {np.float32: "f32", np.float16: "f16", np.int64: "i64", np.int32: "i32", np.float64: "f64"}
    for name, array in tensors.items():
        assert listed[name]["shape"] == list(array.shape), name
        assert listed[name]["dtype"] == expected_dtype[array.dtype.type], name
        assert listed[name]["bytes"] == array.nbytes, name
        np.testing.assert_array_equal(np.asarray(listed[name]["values"], dtype=np.float64),
                                      array.astype(np.float64).ravel(), err_msg=name)


def test_inspect_hdf5_written_by_h5py(rehyat_bin, tmp_path):
    path = tmp_path / "cache.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("blocks/0/attn_in", data=np.ones((4, 8), np.float32), chunks=(2, 8), compression="gzip")
        f.create_dataset("meta/seeds", data=np.arange(3, dtype=np.int64))
        f.create_dataset("meta/half", data=np.ones(5, np.float16))
    info = inspect_json(rehyat_bin, path)
    assert info["format"] == "hdf5"
    listed = {t["name"]: t for t in info["tensors"]}
    assert listed["/blocks/0/attn_in"]["dtype"] == "f32"
    assert listed["/blocks/0/attn_in"]["shape"] == [4, 8]
    assert listed["/blocks/0/attn_in"]["chunks"] == [2, 8]
    assert any(name.startswith("gzip") for name in listed["/blocks/0/attn_in"]["filters"])
    assert listed["/meta/seeds"]["dtype"] == "i64" and listed["/meta/seeds"]["shape"] == [3]
    assert listed["/meta/half"]["dtype"] == "f16"
    assert "/blocks/0/attn_in" in run(rehyat_bin, "inspect", path).stdout

    result = run(rehyat_bin, "inspect", path, "--values", 3, check=False)
    assert result.returncode == 1 and str(path) in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad_json", "missing"])
def test_inspect_of_a_corrupt_file_fails_naming_it(rehyat_bin, tmp_path, damage):
    good = tmp_path / "good.safetensors"
    run(rehyat_bin, "example", good)
    path = tmp_path / f"{damage}.safetensors"
    data = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:-10])
    elif damage == "garbage":
        path.write_bytes(os.urandom(64))
    elif damage == "bad_json":
        path.write_bytes(data[:8] + b"#" + data[9:])
    result = run(rehyat_bin, "inspect", path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("rehyat: error:")
    assert str(path) in result.stderr
    assert result.stdout == ""
