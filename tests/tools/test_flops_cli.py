"""`rehyat flops --json` against an independent count written here from SPEC §2-3.

Wan2.1-1.3B at 81 x 480 x 832 pixels (21 x 30 x 52 tokens): the softmax block, a causal
ReHyAt block (Tc, To) and the whole model are recounted in Python (matmul = 2mnk,
attention over the key pairs each query uses); Tc >= T must give softmax; bad video
sizes must fail naming the value. The binary comes from $REHYAT_BIN (set by ctest).
"""
import json
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAN13 = os.path.join(REPO, "configs", "models", "wan2.1-t2v-1.3b.yaml")
D, FFN, H, LAYERS, TEXT_LEN, TEXT_DIM, FREQ, IN, OUT = 1536, 8960, 12, 30, 512, 4096, 256, 16, 16
d = D // H


def flops_json(rehyat_bin, *sets, frames=81, height=480, width=832):
    args = [rehyat_bin, "flops", "--model", WAN13, "--frames", str(frames), "--height", str(height),
            "--width", str(width), "--json"]
    for s in sets:
        args += ["--set", s]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def block(T, ft, Tc=None, To=0, hd=2 * d, Dp=2 * d):
    """One block's FLOPs; Tc None = full softmax. Returns (block, self-attention op)."""
    N = T * ft
    dense = 2 * N * D * D * 4 + 2 * N * D * D * 2 + 2 * 2 * TEXT_LEN * D * D + 2 * 2 * N * TEXT_LEN * d * H \
        + 2 * 2 * N * D * FFN
    if Tc is None:
        attn = 4 * N * N * d * H
        return dense + attn, attn
    pairs, queries, state_frames = 0, 0, 0
    for t in range((T + Tc - 1) // Tc):
        first, last = max(t * Tc - To, 0), min((t + 1) * Tc, T)
        q_frames = last - t * Tc
        pairs += q_frames * ft * (last - first) * ft
        if first > 0:
            queries += q_frames * ft
            state_frames = max(state_frames, first)
    keys = state_frames * ft
    attn = 4 * pairs * d * H
    if queries:
        attn += 2 * H * 2 * N * (d * hd + hd * Dp)                 # phi_q, phi_k
        attn += H * (2 * Dp * d * keys + Dp * keys)                # S, z
        attn += H * (2 * queries * d * Dp + 2 * queries * Dp)      # phi_q S, phi_q z
    return dense + attn, attn


def outside(N):
    return 2 * N * D * IN * 4 + 2 * (FREQ * D + D * D + 6 * D * D) + 2 * (TEXT_LEN * TEXT_DIM * D + TEXT_LEN * D * D) \
        + 2 * N * D * OUT * 4


def test_softmax_and_rehyat_match_an_independent_count(rehyat_bin):
    T, ft = 21, 30 * 52
    j = flops_json(rehyat_bin, "attention.kind=rehyat", "attention.chunk_frames=3", "attention.overlap_frames=1")
    assert j["tokens"] == {"frames": 21, "height": 30, "width": 52, "total": 32760}
    soft, soft_attn = block(T, ft)
    hyb, hyb_attn = block(T, ft, 3, 1)
    assert j["softmax_block_tflops"] == pytest.approx(soft / 1e12, rel=1e-12)
    assert j["hybrid_block_tflops"] == pytest.approx(hyb / 1e12, rel=1e-12)
    assert j["self_attention_tflops"] == pytest.approx(hyb_attn / 1e12, rel=1e-12)
    assert j["softmax_self_attention_tflops"] == pytest.approx(soft_attn / 1e12, rel=1e-12)
    assert j["model_tflops"] == pytest.approx((outside(T * ft) + LAYERS * hyb) / 1e12, rel=1e-12)
    assert j["softmax_model_tflops"] == pytest.approx((outside(T * ft) + LAYERS * soft) / 1e12, rel=1e-12)
    assert len(j["blocks"]) == LAYERS and all(b["attention"] == "rehyat" for b in j["blocks"])


def test_partial_conversion_and_chunk_covering_the_video(rehyat_bin):
    T, ft = 21, 30 * 52
    j = flops_json(rehyat_bin, "attention.kind=rehyat", "attention.chunk_frames=5", "attention.overlap_frames=2",
                   "attention.hybrid_block_count=10")
    soft, _ = block(T, ft)
    hyb, _ = block(T, ft, 5, 2)
    assert j["attention"]["converted_blocks"] == list(range(10))
    assert j["model_tflops"] == pytest.approx((outside(T * ft) + 10 * hyb + 20 * soft) / 1e12, rel=1e-12)
    full = flops_json(rehyat_bin, "attention.kind=rehyat", "attention.chunk_frames=21")
    assert full["hybrid_block_tflops"] == full["softmax_block_tflops"]
    assert full["self_attention_tflops"] == full["softmax_self_attention_tflops"]


def test_table_and_bad_sizes(rehyat_bin):
    out = subprocess.run([rehyat_bin, "flops", "--model", WAN13, "--frames", "641", "--height", "320", "--width",
                          "480", "--set", "attention.kind=rehyat"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "161 x 20 x 30 tokens" in out.stdout and "self_attn.linear_state" in out.stdout
    bad = subprocess.run([rehyat_bin, "flops", "--model", WAN13, "--frames", "80"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "4k + 1" in bad.stderr and "80" in bad.stderr
