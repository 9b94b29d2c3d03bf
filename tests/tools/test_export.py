"""`rehyat export --format safetensors` end to end, read back with the reference Python
safetensors/numpy reader (no PyTorch needed), and with safetensors.torch where PyTorch is
installed (the GPU machines; skipped with a message elsewhere).

A tiny pipeline run (teacher -> cache -> distill -> finetune of the quick start's DiT, a few
steps each, one block converted) writes checkpoints that carry their model and attention
config; each is exported in both namings and three dtypes and every tensor is compared with
the checkpoint's (f32/f16 with numpy, bf16 from the raw bytes: numpy has no bf16). Also:
the metadata JSON, a checkpoint without metadata (--config needed; a wrong one fails), a
config that contradicts the metadata, overwrite protection and --format onnx.
The binary comes from $REHYAT_BIN (set by ctest).
"""
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TOY_MODEL = ROOT / "configs" / "models" / "toy.yaml"

# The quick start's model, a few steps of each stage, one of the two blocks converted.
TINY = [
    "data.train_videos=6", "data.heldout_videos=2",
    "teacher.steps=3", "teacher.batch=2", "teacher.log_every=1",
    "cache.prompts=3", "cache.sample_steps=2", "cache.capture_steps=[1]",
    "distill.steps=3", "distill.eval_entries=1", "distill.log_every=1",
    "finetune.steps=2", "finetune.batch=2", "finetune.log_every=1",
    "sample.prompts=2", "eval.videos=2", "sample.mode=parallel",  # recurrent needs every block converted
    "attention.hybrid_block_count=1",
]
QUICKSTART_MODEL = {"dim": 64, "ffn_dim": 128, "freq_dim": 64, "num_heads": 2, "num_layers": 2, "in_dim": 3,
                    "out_dim": 3, "text_len": 12, "text_dim": 32, "eps": 1e-6, "patch_size": [1, 2, 2]}
ATTENTION_FIELDS = {"kind", "chunk_frames", "overlap_frames", "causal", "degree", "feature_dim", "hidden_dim",
                    "activation", "rate", "hybrid_blocks", "hybrid_block_count", "block_ranking", "converted_blocks"}


def run(rehyat_bin, *args, check=True):
    result = subprocess.run([rehyat_bin, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"rehyat {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def fails(rehyat_bin, *args):
    """Runs rehyat expecting the one-line user error; returns its message."""
    result = run(rehyat_bin, *args, check=False)
    assert result.returncode == 1, f"expected failure, got {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "rehyat: error:" in result.stderr, result.stderr
    return result.stderr


@pytest.fixture(scope="session")
def run_dir(rehyat_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_run")
    run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={out}", "run.name=tiny", "--stages",
        "teacher,cache,distill,finetune", *TINY)
    return out / "tiny"


def metadata(path):
    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()


def raw_tensors(path):
    """name -> (dtype string, shape, raw bytes), straight from the file layout."""
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


# Wan -> diffusers key names (diffusers' convert_wan_to_diffusers.py), written here
# independently of the C++ table: the longest matching prefix wins.
TOP_RULES = {"patch_embedding.": "patch_embedding.",
             "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
             "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
             "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
             "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
             "time_projection.1.": "condition_embedder.time_proj.",
             "head.modulation": "scale_shift_table", "head.head.": "proj_out."}
BLOCK_RULES = {"modulation": "scale_shift_table", "self_attn.q.": "attn1.to_q.", "self_attn.k.": "attn1.to_k.",
               "self_attn.v.": "attn1.to_v.", "self_attn.o.": "attn1.to_out.0.",
               "self_attn.norm_q.": "attn1.norm_q.", "self_attn.norm_k.": "attn1.norm_k.", "self_attn.": "attn1.",
               "cross_attn.q.": "attn2.to_q.", "cross_attn.k.": "attn2.to_k.", "cross_attn.v.": "attn2.to_v.",
               "cross_attn.o.": "attn2.to_out.0.", "cross_attn.norm_q.": "attn2.norm_q.",
               "cross_attn.norm_k.": "attn2.norm_k.", "cross_attn.": "attn2.", "norm3.": "norm2.",
               "ffn.0.": "ffn.net.0.proj.", "ffn.2.": "ffn.net.2."}


def to_diffusers(name):
    prefix, rules = "", TOP_RULES
    if name.startswith("blocks."):
        n = name.split(".")[1]
        prefix, name, rules = f"blocks.{n}.", name[len(f"blocks.{n}."):], BLOCK_RULES
    best = max((k for k in rules if name.startswith(k)), key=len)
    return prefix + rules[best] + name[len(best):]


def bf16_bits(values):
    """float32 -> bfloat16 bit patterns, rounded to nearest even (no NaNs here)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_pipeline_checkpoints_describe_their_model(run_dir):
    errors = json.loads((run_dir / "distill" / "errors.json").read_text())
    converted, ranking = errors["converted_blocks"], errors["ranking"]
    assert len(converted) == 1 and converted[0] == ranking[0] and sorted(ranking) == [0, 1]

    teacher = metadata(run_dir / "teacher" / "model.safetensors")
    assert json.loads(teacher["rehyat.model_config"]) == QUICKSTART_MODEL
    assert json.loads(teacher["rehyat.attention_config"])["kind"] == "softmax"
    assert json.loads(teacher["rehyat.attention_config"])["converted_blocks"] == []

    for stage in ("distill", "finetune"):
        path = run_dir / stage / "model.safetensors"
        meta = metadata(path)
        assert json.loads(meta["rehyat.model_config"]) == QUICKSTART_MODEL
        attention = json.loads(meta["rehyat.attention_config"])
        assert set(attention) == ATTENTION_FIELDS
        assert attention["kind"] == "rehyat" and attention["chunk_frames"] == 3 and attention["overlap_frames"] == 1
        assert attention["causal"] is True and attention["degree"] == 2 and attention["activation"] == "gelu"
        assert attention["hybrid_blocks"] == converted and attention["converted_blocks"] == converted
        assert attention["block_ranking"] == ranking and attention["hybrid_block_count"] == 0
        # φ exactly in the converted block.
        phi_blocks = {int(k.split(".")[1]) for k in load_file(str(path)) if ".phi_" in k}
        assert phi_blocks == set(converted)


@pytest.mark.parametrize("stage", ["teacher", "distill", "finetune"])
def test_f32_wan_export_equals_the_checkpoint(rehyat_bin, run_dir, tmp_path, stage):
    ckpt = run_dir / stage / "model.safetensors"
    out = tmp_path / f"{stage}.safetensors"
    result = run(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out)
    source, exported = load_file(str(ckpt)), load_file(str(out))
    assert set(exported) == set(source)
    for name, value in source.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    assert any(np.any(v != 0) for v in exported.values())
    n_params = sum(v.size for v in source.values())
    assert f"{len(source)} tensors, {n_params} parameters" in result.stdout and str(out) in result.stdout
    meta, source_meta = metadata(out), metadata(ckpt)
    assert meta["format"] == "pt" and meta["rehyat.naming"] == "wan"
    for key in ("rehyat.model_config", "rehyat.attention_config"):
        assert json.loads(meta[key]) == json.loads(source_meta[key]), key


def test_f16_diffusers_export_holds_rounded_values(rehyat_bin, run_dir, tmp_path):
    ckpt = run_dir / "finetune" / "model.safetensors"
    out = tmp_path / "diffusers-f16.safetensors"
    run(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out, "--naming", "diffusers", "--dtype", "f16")
    source, exported = load_file(str(ckpt)), load_file(str(out))
    assert set(exported) == {to_diffusers(k) for k in source}
    assert "scale_shift_table" in exported and any(".attn1.phi_q.0.weight" in k for k in exported)
    for name, value in source.items():
        got = exported[to_diffusers(name)]
        assert got.dtype == np.float16 and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value.astype(np.float16), err_msg=name)
    meta = metadata(out)
    assert meta["rehyat.naming"] == "diffusers"
    assert json.loads(meta["rehyat.attention_config"]) == json.loads(metadata(ckpt)["rehyat.attention_config"])


def test_bf16_export_holds_rounded_bits(rehyat_bin, run_dir, tmp_path):
    ckpt = run_dir / "distill" / "model.safetensors"
    out = tmp_path / "bf16.safetensors"
    run(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out, "--dtype", "bf16")
    source, exported = load_file(str(ckpt)), raw_tensors(out)
    assert set(exported) == set(source)
    for name, value in source.items():
        dtype, shape, raw = exported[name]
        assert dtype == "BF16" and shape == list(value.shape), name
        np.testing.assert_array_equal(np.frombuffer(raw, dtype="<u2").reshape(value.shape), bf16_bits(value),
                                      err_msg=name)
    # And back through rehyat: bf16 -> f32 export is exact.
    back = tmp_path / "back.safetensors"
    run(rehyat_bin, "export", out, "--format", "safetensors", "--out", back)
    for name, value in load_file(str(back)).items():
        bits = np.frombuffer(exported[name][2], dtype="<u2").astype(np.uint32) << 16
        np.testing.assert_array_equal(value, bits.view(np.float32).reshape(value.shape), err_msg=name)


def test_exports_load_in_pytorch(rehyat_bin, run_dir, tmp_path):
    """safetensors.torch reads every export dtype with the checkpoint's values (f16/bf16 as
    torch rounds them: to nearest even, like rehyat) and the metadata. PyTorch is not on the
    CI machine; the GPU machines have it (this test ran there)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the PyTorch load is not checked here")
    from safetensors.torch import load_file as torch_load_file
    ckpt = run_dir / "finetune" / "model.safetensors"
    source = load_file(str(ckpt))
    assert any(".phi_q." in name for name in source)
    for dtype, torch_dtype in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
        out = tmp_path / f"{dtype}.safetensors"
        run(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out, "--dtype", dtype)
        tensors = torch_load_file(str(out))
        assert set(tensors) == set(source)
        for name, value in source.items():
            t = tensors[name]
            assert t.dtype == torch_dtype and list(t.shape) == list(value.shape), (dtype, name)
            assert torch.equal(t, torch.from_numpy(value).to(torch_dtype)), (dtype, name)
        with safe_open(str(out), framework="pt") as f:
            assert json.loads(f.metadata()["rehyat.model_config"]) == json.loads(metadata(ckpt)["rehyat.model_config"])


def test_checkpoint_without_metadata_needs_the_right_config(rehyat_bin, run_dir, tmp_path):
    teacher = load_file(str(run_dir / "teacher" / "model.safetensors"))
    plain = tmp_path / "plain.safetensors"
    save_file(teacher, str(plain))  # no metadata, as a Wan2.1 release
    out = tmp_path / "out.safetensors"
    message = fails(rehyat_bin, "export", plain, "--format", "safetensors", "--out", out)
    assert str(plain) in message and "--config" in message
    # The run config converts every block: the teacher has no feature maps.
    message = fails(rehyat_bin, "export", plain, "--format", "safetensors", "--out", out, "--config", QUICKSTART)
    assert "missing tensor 'blocks.0.self_attn.phi_q.0.weight'" in message and str(QUICKSTART) in message
    # Another model's shapes.
    message = fails(rehyat_bin, "export", plain, "--format", "safetensors", "--out", out, "--config", TOY_MODEL)
    assert "tensor 'blocks.0.self_attn.q.weight' has shape [64, 64], expected [96, 96]" in message
    assert not out.exists()
    # The run config as the teacher.
    run(rehyat_bin, "export", plain, "--format", "safetensors", "--out", out, "--config", QUICKSTART,
        "--set", "attention.kind=softmax")
    for name, value in load_file(str(out)).items():
        np.testing.assert_array_equal(value, teacher[name], err_msg=name)
    meta = metadata(out)
    assert json.loads(meta["rehyat.model_config"]) == QUICKSTART_MODEL
    assert json.loads(meta["rehyat.attention_config"])["kind"] == "softmax"


def test_config_contradicting_the_metadata_fails(rehyat_bin, run_dir, tmp_path):
    ckpt = run_dir / "distill" / "model.safetensors"
    out = tmp_path / "out.safetensors"
    message = fails(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out, "--config", TOY_MODEL)
    assert "model.dim: 64" in message and "96" in message and str(TOY_MODEL) in message
    # The run config without the count converts every block; the checkpoint has one.
    message = fails(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out, "--config", QUICKSTART)
    assert "converted blocks" in message and "[0, 1]" in message
    assert not out.exists()
    # The config the run was made with agrees.
    run(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out, "--config", QUICKSTART,
        "--set", "attention.hybrid_block_count=1")
    assert out.exists()


def test_existing_output_is_kept_without_force(rehyat_bin, run_dir, tmp_path):
    ckpt = run_dir / "teacher" / "model.safetensors"
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"a file the user made")
    message = fails(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out)
    assert "already exists" in message and "--force" in message
    assert out.read_bytes() == b"a file the user made"
    run(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", out, "--force")
    assert set(load_file(str(out))) == set(load_file(str(ckpt)))
    message = fails(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", ckpt, "--force")
    assert "is the checkpoint being exported" in message
    message = fails(rehyat_bin, "export", ckpt, "--format", "pt", "--out", tmp_path / "x")
    assert "--format must be safetensors or onnx" in message
    message = fails(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", tmp_path / "x", "--dtype", "f64")
    assert "--dtype must be f32, bf16 or f16" in message


def test_format_specific_options_are_refused_elsewhere(rehyat_bin, run_dir, tmp_path):
    ckpt = run_dir / "teacher" / "model.safetensors"
    message = fails(rehyat_bin, "export", ckpt, "--format", "safetensors", "--out", tmp_path / "x", "--height", "16")
    assert "--height does not apply to --format safetensors" in message


def every_block_converted(run_dir, path):
    """The distilled checkpoint with its one block's feature maps copied into the other block,
    described (metadata written from Python) as ReHyAt in every block: what ONNX export takes."""
    tensors = load_file(str(run_dir / "distill" / "model.safetensors"))
    meta = metadata(run_dir / "distill" / "model.safetensors")
    attention = json.loads(meta["rehyat.attention_config"])
    (source,) = attention["converted_blocks"]
    for name in [k for k in tensors if k.startswith(f"blocks.{source}.self_attn.phi_")]:
        tensors[name.replace(f"blocks.{source}.", f"blocks.{1 - source}.", 1)] = tensors[name].copy()
    attention.update(hybrid_blocks=[0, 1], converted_blocks=[0, 1])
    meta["rehyat.attention_config"] = json.dumps(attention)
    save_file(tensors, str(path), metadata=meta)


def test_onnx_format_exports_or_says_how_to_get_it(rehyat_bin, run_dir, tmp_path):
    ckpt = tmp_path / "all-rehyat.safetensors"
    every_block_converted(run_dir, ckpt)
    out = tmp_path / "model.onnx"
    args = ["--format", "onnx", "--out", out, "--height", "16", "--width", "16"]
    result = run(rehyat_bin, "export", ckpt, *args, check=False)
    if "built without ONNX support" in result.stderr:
        assert result.returncode == 1 and "libonnx-dev" in result.stderr
        assert not out.exists()
        return
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 4 * sum(v.size for v in load_file(str(ckpt)).values())  # f32 weights embedded
    assert f"wrote {out}: onnx step function, chunks of 3 latent frames" in result.stdout
    # Only every block converted and causal runs chunk by chunk: the distilled model (one block) does not.
    message = fails(rehyat_bin, "export", run_dir / "distill" / "model.safetensors", *args[:2], "--out",
                    tmp_path / "partial.onnx", *args[4:])
    assert "every block" in message and not (tmp_path / "partial.onnx").exists()
    message = fails(rehyat_bin, "export", ckpt, *args)
    assert "already exists" in message
    message = fails(rehyat_bin, "export", ckpt, *args, "--force", "--dtype", "bf16")
    assert "--dtype does not apply to --format onnx" in message
