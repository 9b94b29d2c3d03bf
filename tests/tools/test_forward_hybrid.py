"""`rehyat forward` with ReHyAt attention against the independent numpy model
(wan_numpy.py + hybrid_numpy.py).

The same random Wan weights plus random φ weights and inputs go to both; the model file
carries an `attention:` section (or `--set attention.*` overrides). Velocities must agree to
float32 accuracy on the CPU for rehyat causal / non-causal (T not divisible by Tc, and
To >= Tc), linear and uniform_hybrid; `--grad` gradients of φ parameters must match float64
finite differences of the numpy model. Missing φ tensors must be named. The binary comes
from $REHYAT_BIN (set by ctest).
"""

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hybrid_numpy as hyb
import test_forward as tf
import wan_numpy as wan

CFG = tf.CONFIGS["d48"]  # head_dim 48, 2 heads, 2 blocks

CASES = {
    # name: (attention config, frames)
    "rehyat_causal": (hyb.AttentionConfig("rehyat", chunk_frames=2, overlap_frames=1, causal=True), 5),
    "rehyat_noncausal": (hyb.AttentionConfig("rehyat", chunk_frames=2, overlap_frames=1, causal=False), 5),
    "rehyat_overlap_ge_chunk": (hyb.AttentionConfig("rehyat", chunk_frames=2, overlap_frames=3, causal=True), 7),
    "rehyat_p3_relu_one_block": (hyb.AttentionConfig("rehyat", chunk_frames=3, overlap_frames=0, causal=False,
                                                     degree=3, feature_dim=36, hidden_dim=20, activation="relu",
                                                     hybrid_blocks=[1]), 5),
    "linear": (hyb.AttentionConfig("linear"), 4),
    "uniform_hybrid": (hyb.AttentionConfig("uniform_hybrid", rate=2), 5),
}


def make_hybrid_case(tmp_path, att, seed, frames, grad=False, attention_in_file=True):
    paths, weights, inputs = tf.make_case(tmp_path, CFG, seed, frames=frames, height=4, width=4, batch=1, grad=grad)
    weights = {**weights, **hyb.random_phi_weights(CFG, att, np.random.default_rng(seed + 100))}
    save_file(weights, str(paths["weights.safetensors"]))
    if attention_in_file:
        paths["model.yaml"].write_text(CFG.to_yaml() + att.to_yaml())
    return paths, weights, inputs


@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_hybrid_forward_matches_numpy(rehyat_bin, tmp_path, name):
    att, frames = CASES[name]
    paths, weights, inputs = make_hybrid_case(tmp_path, att, seed=11, frames=frames)
    out = tmp_path / "out.safetensors"
    tf.run(rehyat_bin, *tf.forward_args(paths, out, "--device", "cpu", "--dtype", "f32"))
    got = load_file(str(out))["velocity"]
    want = hyb.forward(weights, CFG, att, inputs["latents"], inputs["timestep"], inputs["context"])
    assert got.shape == want.shape and np.isfinite(got).all()
    assert tf.rel_error(got, want) < 5e-5, tf.rel_error(got, want)
    # Not the teacher: the hybrid attention changes the output.
    teacher = tf.numpy_velocity(weights, CFG, inputs)
    assert tf.rel_error(teacher, want) > 1e-4


def test_set_overrides_the_attention_section(rehyat_bin, tmp_path):
    att = hyb.AttentionConfig("rehyat", chunk_frames=2, overlap_frames=1, causal=True)
    paths, weights, inputs = make_hybrid_case(tmp_path, att, seed=12, frames=5, attention_in_file=False)
    out = tmp_path / "out.safetensors"
    tf.run(rehyat_bin, *tf.forward_args(paths, out, "--set", "attention.kind=rehyat", "--set",
                                        "attention.chunk_frames=2"))
    want = hyb.forward(weights, CFG, att, inputs["latents"], inputs["timestep"], inputs["context"])
    assert tf.rel_error(load_file(str(out))["velocity"], want) < 5e-5
    # Tc >= T: full softmax, the teacher (SPEC §3), whatever φ is.
    tf.run(rehyat_bin, *tf.forward_args(paths, out, "--force", "--set", "attention.kind=rehyat", "--set",
                                        "attention.chunk_frames=5"))
    assert tf.rel_error(load_file(str(out))["velocity"], tf.numpy_velocity(weights, CFG, inputs)) < 2e-5
    # A bad override names itself.
    result = tf.run(rehyat_bin, *tf.forward_args(paths, out, "--force", "--set", "attention.chunk_frames=0"),
                    check=False)
    assert result.returncode != 0 and "attention.chunk_frames" in result.stderr, result.stderr


def test_missing_feature_maps_are_named(rehyat_bin, tmp_path):
    att = hyb.AttentionConfig("rehyat")
    paths, weights, _ = make_hybrid_case(tmp_path, att, seed=13, frames=3)
    teacher = {k: v for k, v in weights.items() if ".phi_" not in k}
    save_file(teacher, str(paths["weights.safetensors"]))
    result = tf.run(rehyat_bin, *tf.forward_args(paths, tmp_path / "out.safetensors"), check=False)
    assert result.returncode != 0
    for text in ("weights.safetensors", "blocks.0.self_attn.phi_q.0.weight", "attention.kind=softmax"):
        assert text in result.stderr, (text, result.stderr)
    assert not (tmp_path / "out.safetensors").exists()


def test_cpu_phi_gradients_match_numpy_finite_differences(rehyat_bin, tmp_path):
    att = hyb.AttentionConfig("rehyat", chunk_frames=1, overlap_frames=1, causal=True)
    paths, weights, inputs = make_hybrid_case(tmp_path, att, seed=14, frames=3, grad=True)
    out = tmp_path / "out.safetensors"
    tf.run(rehyat_bin, *tf.forward_args(paths, out, "--device", "cpu", "--dtype", "f32", "--grad"))
    got = load_file(str(out))
    want_keys = {"velocity", "grad.latents"} | {f"grad.{name}" for name in weights}
    assert set(got) == want_keys, sorted(set(got) ^ want_keys)
    grads = {key[len("grad."):]: value for key, value in got.items() if key.startswith("grad.")}
    g = inputs["grad_velocity"].astype(np.float64)
    rng = np.random.default_rng(15)
    names = [f"blocks.{b}.self_attn.{phi}.{p}" for b in (0, 1) for phi in ("phi_q", "phi_k")
             for p in ("0.weight", "2.bias")] + ["blocks.1.self_attn.q.weight", "latents"]
    failures = []
    for name in names:
        base = inputs["latents"] if name == "latents" else weights[name]
        assert grads[name].shape == base.shape, name
        delta = rng.standard_normal(base.shape)
        eps = 1e-5

        def loss(sign):
            value = base.astype(np.float64) + sign * eps * delta
            if name == "latents":
                v = hyb.forward(weights, CFG, att, value, inputs["timestep"], inputs["context"])
            else:
                v = hyb.forward({**weights, name: value}, CFG, att, inputs["latents"], inputs["timestep"],
                                inputs["context"])
            return float((v * g).sum())

        numeric = (loss(1) - loss(-1)) / (2 * eps)
        analytic = float((grads[name].astype(np.float64) * delta).sum())
        scale = float(np.abs(grads[name] * delta).sum()) + 1e-12
        if not abs(numeric) > 0 or abs(numeric - analytic) > 1e-4 * scale + 1e-6:
            failures.append(f"{name}: finite difference {numeric:.8g} vs rehyat {analytic:.8g} (scale {scale:.3g})")
    assert not failures, "\n".join(failures)
