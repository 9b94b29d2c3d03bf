"""`rehyat forward` against the independent numpy Wan2.1 implementation (wan_numpy.py).

The same random Wan-named weights and inputs go to both; the velocities must agree to
float32 accuracy on the CPU (and on CUDA when a GPU is present, bf16 more loosely), and
every gradient written by `--grad` must match a float64 finite difference of the numpy
model along a random direction. Bad inputs must fail naming the file and tensor. The
binary comes from $REHYAT_BIN (set by ctest).
"""
import re
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import wan_numpy as wan

# head_dim 48 (RoPE bands of 16/16/16 dims) runs the generic attention path; head_dim 64
# is what the fast CUDA kernels take.
CONFIGS = {
    "d48": wan.WanConfig(dim=96, ffn_dim=160, freq_dim=32, num_heads=2, num_layers=2, in_dim=4,
                         out_dim=4, text_len=12, text_dim=24),
    "d64": wan.WanConfig(dim=128, ffn_dim=192, freq_dim=64, num_heads=2, num_layers=2, in_dim=4,
                         out_dim=3, text_len=10, text_dim=16),
}


@pytest.fixture(scope="session")
def gpu_count(rehyat_bin):
    out = subprocess.run([rehyat_bin, "--version"], capture_output=True, text=True).stdout
    return int(re.search(r"GPUs found: (\d+)", out).group(1))


def run(rehyat_bin, *args, check=True):
    result = subprocess.run([rehyat_bin, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"rehyat {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def make_case(tmp_path, cfg, seed, frames=3, height=4, width=6, batch=2, context_len=None, grad=False):
    """Writes model.yaml, weights and inputs; returns their paths and the arrays."""
    rng = np.random.default_rng(seed)
    weights = wan.random_weights(cfg, rng)
    context_len = context_len or cfg.text_len - 3  # shorter than text_len: padding is exercised
    inputs = {
        "latents": rng.standard_normal((batch, cfg.in_dim, frames, height, width)).astype(np.float32),
        "timestep": rng.uniform(0, 1000, size=batch).astype(np.float32),
        "context": rng.standard_normal((batch, context_len, cfg.text_dim)).astype(np.float32),
    }
    if grad:
        out_shape = (batch, cfg.out_dim, frames, height, width)
        inputs["grad_velocity"] = rng.standard_normal(out_shape).astype(np.float32)
    paths = {name: tmp_path / name for name in ("model.yaml", "weights.safetensors", "inputs.safetensors")}
    paths["model.yaml"].write_text(cfg.to_yaml())
    save_file(weights, str(paths["weights.safetensors"]))
    save_file(inputs, str(paths["inputs.safetensors"]))
    return paths, weights, inputs


def forward_args(paths, out, *extra):
    return ["forward", "--model", paths["model.yaml"], "--weights", paths["weights.safetensors"],
            "--inputs", paths["inputs.safetensors"], "--out", out, *extra]


def rel_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def numpy_velocity(weights, cfg, inputs):
    return wan.forward(weights, cfg, inputs["latents"], inputs["timestep"], inputs["context"])


@pytest.mark.parametrize("name", ["d48", "d64"])
def test_cpu_forward_matches_numpy(rehyat_bin, tmp_path, name):
    cfg = CONFIGS[name]
    paths, weights, inputs = make_case(tmp_path, cfg, seed=1)
    out = tmp_path / "out.safetensors"
    run(rehyat_bin, *forward_args(paths, out, "--device", "cpu", "--dtype", "f32"))
    got = load_file(str(out))
    assert set(got) == {"velocity"}
    want = numpy_velocity(weights, cfg, inputs)
    assert got["velocity"].dtype == np.float32 and got["velocity"].shape == want.shape
    assert np.isfinite(got["velocity"]).all()
    assert rel_error(got["velocity"], want) < 2e-5
    # Not a trivial agreement: a different timestep moves the output.
    assert rel_error(numpy_velocity(weights, cfg, {**inputs, "timestep": inputs["timestep"] + 10}), want) > 1e-3


def directional_check(weights, cfg, inputs, grads, name, rng, eps=1e-5):
    """<grad, delta> from rehyat against a central difference of the float64 numpy loss."""
    g = inputs["grad_velocity"].astype(np.float64)
    is_input = name == "latents"
    base = inputs["latents"] if is_input else weights[name]
    delta = rng.standard_normal(base.shape)

    def loss(sign):
        value = base.astype(np.float64) + sign * eps * delta
        if is_input:
            v = wan.forward(weights, cfg, value, inputs["timestep"], inputs["context"])
        else:
            v = wan.forward({**weights, name: value}, cfg, inputs["latents"], inputs["timestep"], inputs["context"])
        return float((v * g).sum())

    numeric = (loss(1) - loss(-1)) / (2 * eps)
    analytic = float((grads[name].astype(np.float64) * delta).sum())
    scale = float(np.abs(grads[name] * delta).sum()) + 1e-12
    return numeric, analytic, scale


def test_cpu_gradients_match_numpy_finite_differences(rehyat_bin, tmp_path):
    cfg = CONFIGS["d48"]
    paths, weights, inputs = make_case(tmp_path, cfg, seed=2, frames=2, height=4, width=4, grad=True)
    out = tmp_path / "out.safetensors"
    run(rehyat_bin, *forward_args(paths, out, "--device", "cpu", "--dtype", "f32", "--grad"))
    got = load_file(str(out))
    want_keys = {"velocity", "grad.latents"} | {f"grad.{name}" for name in weights}
    assert set(got) == want_keys, sorted(set(got) ^ want_keys)
    grads = {key[len("grad."):]: value for key, value in got.items() if key.startswith("grad.")}
    for name, value in grads.items():
        ref = inputs[name] if name == "latents" else weights[name]
        assert value.shape == ref.shape and value.dtype == np.float32, name
        assert np.isfinite(value).all(), name
    rng = np.random.default_rng(3)
    failures = []
    for name in sorted(grads):
        numeric, analytic, scale = directional_check(weights, cfg, inputs, grads, name, rng)
        if abs(numeric - analytic) > 1e-4 * scale + 1e-6:
            failures.append(f"{name}: finite difference {numeric:.8g} vs rehyat {analytic:.8g} (scale {scale:.3g})")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name,dtype,tol", [("d48", "f32", 1e-4), ("d64", "f32", 1e-4), ("d64", "bf16", 4e-2)])
def test_cuda_forward_matches_numpy(rehyat_bin, gpu_count, tmp_path, name, dtype, tol):
    if gpu_count == 0:
        pytest.skip("no CUDA device: the CUDA parity runs on the GPU machine")
    cfg = CONFIGS[name]
    paths, weights, inputs = make_case(tmp_path, cfg, seed=4, frames=5, height=6, width=8)
    out = tmp_path / "out.safetensors"
    run(rehyat_bin, *forward_args(paths, out, "--device", "cuda", "--dtype", dtype))
    assert rel_error(load_file(str(out))["velocity"], numpy_velocity(weights, cfg, inputs)) < tol


def test_cuda_gradients_match_cpu(rehyat_bin, gpu_count, tmp_path):
    if gpu_count == 0:
        pytest.skip("no CUDA device: the CUDA gradient parity runs on the GPU machine")
    cfg = CONFIGS["d64"]
    paths, weights, inputs = make_case(tmp_path, cfg, seed=5, grad=True)
    results = {}
    for device, dtype in [("cpu", "f32"), ("cuda", "f32"), ("cuda", "bf16")]:
        out = tmp_path / f"out_{device}_{dtype}.safetensors"
        run(rehyat_bin, *forward_args(paths, out, "--device", device, "--dtype", dtype, "--grad"))
        results[device, dtype] = load_file(str(out))
    cpu = results["cpu", "f32"]
    for (device, dtype), tol in [(("cuda", "f32"), 1e-3), (("cuda", "bf16"), 8e-2)]:
        for key, value in cpu.items():
            err = float(np.linalg.norm(results[device, dtype][key] - value) / (np.linalg.norm(value) + 1e-30))
            assert err < tol, f"{device} {dtype} {key}: relative error {err:.3g}"


def test_missing_and_misshapen_weights_are_named(rehyat_bin, tmp_path):
    cfg = CONFIGS["d48"]
    paths, weights, _ = make_case(tmp_path, cfg, seed=6)
    broken = dict(weights)
    del broken["blocks.1.ffn.0.bias"]
    broken["blocks.0.self_attn.q.weight"] = broken["blocks.0.self_attn.q.weight"][:, :-1].copy()
    broken["blocks.0.unexpected"] = np.ones(3, np.float32)
    save_file(broken, str(paths["weights.safetensors"]))
    result = run(rehyat_bin, *forward_args(paths, tmp_path / "out.safetensors"), check=False)
    assert result.returncode != 0
    for text in ("weights.safetensors", "blocks.1.ffn.0.bias", "blocks.0.self_attn.q.weight", "blocks.0.unexpected"):
        assert text in result.stderr, (text, result.stderr)
    assert not (tmp_path / "out.safetensors").exists()


def test_bad_inputs_are_named(rehyat_bin, tmp_path):
    cfg = CONFIGS["d48"]
    paths, _, inputs = make_case(tmp_path, cfg, seed=7)
    cases = {
        "context": {**inputs, "context": np.ones((2, cfg.text_len + 1, cfg.text_dim), np.float32)},
        "latents": {**inputs, "latents": np.ones((2, cfg.in_dim, 3, 5, 6), np.float32)},  # H not a patch multiple
        "timestep": {k: v for k, v in inputs.items() if k != "timestep"},
    }
    for tensor, bad in cases.items():
        save_file(bad, str(paths["inputs.safetensors"]))
        result = run(rehyat_bin, *forward_args(paths, tmp_path / "out.safetensors"), check=False)
        assert result.returncode != 0 and tensor in result.stderr and "inputs.safetensors" in result.stderr, \
            (tensor, result.stderr)


def test_existing_output_is_not_overwritten_without_force(rehyat_bin, tmp_path):
    cfg = CONFIGS["d48"]
    paths, _, _ = make_case(tmp_path, cfg, seed=8, frames=1, height=2, width=2)
    out = tmp_path / "out.safetensors"
    out.write_text("a user's file")
    result = run(rehyat_bin, *forward_args(paths, out), check=False)
    assert result.returncode != 0 and "--force" in result.stderr
    assert out.read_text() == "a user's file"
    run(rehyat_bin, *forward_args(paths, out, "--force"))
    assert "velocity" in load_file(str(out))
