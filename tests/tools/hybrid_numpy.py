"""An independent float64 numpy implementation of ReHyAt attention (SPEC §3): the per-head
feature maps φ and the hybrid attention of every kind (rehyat causal / non-causal, linear,
uniform_hybrid, softmax), written from the SPEC with explicit masks, sharing nothing with
the C++ framework. hook() plugs it into wan_numpy.forward's self-attention.
"""
import math

import numpy as np

import wan_numpy as wan


class AttentionConfig:
    def __init__(self, kind="softmax", chunk_frames=3, overlap_frames=1, causal=True, degree=2,
                 feature_dim=0, hidden_dim=0, activation="gelu", rate=2, hybrid_blocks=None):
        self.kind, self.chunk_frames, self.overlap_frames = kind, chunk_frames, overlap_frames
        self.causal, self.degree, self.activation, self.rate = causal, degree, activation, rate
        self.feature_dim, self.hidden_dim = feature_dim, hidden_dim
        self.hybrid_blocks = hybrid_blocks  # None: every block

    def dims(self, head_dim):
        return (self.hidden_dim or 2 * head_dim), (self.feature_dim or 2 * head_dim)

    def converted(self, num_layers):
        if self.kind == "softmax":
            return []
        return list(range(num_layers)) if self.hybrid_blocks is None else sorted(self.hybrid_blocks)

    def to_yaml(self):
        lines = ["attention:", f"  kind: {self.kind}", f"  chunk_frames: {self.chunk_frames}",
                 f"  overlap_frames: {self.overlap_frames}", f"  causal: {str(self.causal).lower()}",
                 f"  degree: {self.degree}", f"  feature_dim: {self.feature_dim}",
                 f"  hidden_dim: {self.hidden_dim}", f"  activation: {self.activation}", f"  rate: {self.rate}"]
        if self.hybrid_blocks is not None:
            lines.append(f"  hybrid_blocks: [{', '.join(map(str, self.hybrid_blocks))}]")
        return "\n".join(lines) + "\n"


def phi_shapes(cfg, att):
    """The feature-map tensors of every converted block with their shapes."""
    H, d = cfg.num_heads, cfg.head_dim
    h, dp = att.dims(d)
    shapes = {}
    for n in att.converted(cfg.num_layers):
        for phi in ("phi_q", "phi_k"):
            p = f"blocks.{n}.self_attn.{phi}."
            shapes.update({p + "0.weight": (H, h, d), p + "0.bias": (H, h),
                           p + "2.weight": (H, dp, h), p + "2.bias": (H, dp)})
    return shapes


def random_phi_weights(cfg, att, rng):
    """Random φ weights, scaled so the softplus works on O(1) values."""
    weights = {}
    for name, shape in phi_shapes(cfg, att).items():
        if name.endswith("bias"):
            w = 0.1 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / math.sqrt(shape[-1])
        weights[name] = w.astype(np.float32)
    return weights


def feature_map(x, w1, b1, w2, b2, degree, activation):
    """x [B, N, H, d] -> φ [B, N, H, Dp]; w1 [H, h, d], b1 [H, h], w2 [H, Dp, h], b2 [H, Dp]."""
    hidden = np.einsum("bnhd,hjd->bnhj", x, w1) + b1
    if activation == "gelu":
        hidden = wan.gelu_tanh(hidden)
    elif activation == "relu":
        hidden = np.maximum(hidden, 0.0)
    psi = np.logaddexp(0.0, np.einsum("bnhj,hfj->bnhf", hidden, w2) + b2)  # softplus
    parts = np.split(psi, degree, axis=-1)
    return np.concatenate([p ** (i + 1) for i, p in enumerate(parts)], axis=-1)


def key_sets(kind, frames, chunk_frames, overlap_frames, causal, rate):
    """Boolean [T, T] masks (query frame, key frame) of the softmax and linear key sets."""
    T = frames
    S = np.zeros((T, T), bool)
    L = np.zeros((T, T), bool)
    for fq in range(T):
        if kind == "softmax":
            S[fq, :] = True
        elif kind == "linear":
            L[fq, :] = True
        elif kind == "uniform_hybrid":
            S[fq, :] = np.arange(T) % rate == 0
            L[fq, :] = ~S[fq, :]
        else:  # rehyat
            t = fq // chunk_frames
            lo, hi = max(t * chunk_frames - overlap_frames, 0), min((t + 1) * chunk_frames, T)
            S[fq, lo:hi] = True
            if causal:
                L[fq, :lo] = True
            else:
                L[fq, :] = ~S[fq, :]
    return S, L


def hybrid_attention(q, k, v, phi_q, phi_k, frame_tokens, kind="rehyat", chunk_frames=3, overlap_frames=1,
                     causal=True, rate=2, linear_eps=1e-6):
    """q, k, v [B, N, H, d], phi [B, N, H, Dp] -> y [B, N, H, d] (SPEC §3, explicit masks)."""
    B, N, H, d = q.shape
    T = N // frame_tokens
    S, L = key_sets(kind, T, chunk_frames, overlap_frames, causal, rate)
    frame = np.arange(N) // frame_tokens
    S = S[frame][:, frame]  # [N, N] token masks
    L = L[frame][:, frame]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    kernel = np.einsum("bqhf,bkhf->bhqk", phi_q, phi_k) * L
    if S.any(axis=1).all():
        c = np.where(S, s, -np.inf).max(-1, keepdims=True)
        es = np.where(S, np.exp(s - c), 0.0)
    else:  # linear only
        es = np.zeros_like(s)
    num = np.einsum("bhqk,bkhd->bqhd", es + kernel, v)
    den = (es + kernel).sum(-1).transpose(0, 2, 1)[..., None]  # [B, N, H, 1]
    if kind == "linear":
        den = den + linear_eps
    return num / den


def hook(att):
    """wan_numpy.forward(..., attention_hook=hook(att)): ReHyAt in the converted blocks."""
    converted = set(att.converted(10 ** 6))

    def make_core(W, block, grid):
        if block not in converted:
            return None
        f, h, w = grid

        def core(q, k, v):
            p = f"blocks.{block}.self_attn."
            pq = feature_map(q, *(W[p + "phi_q." + n] for n in ("0.weight", "0.bias", "2.weight", "2.bias")),
                             att.degree, att.activation)
            pk = feature_map(k, *(W[p + "phi_k." + n] for n in ("0.weight", "0.bias", "2.weight", "2.bias")),
                             att.degree, att.activation)
            return hybrid_attention(q, k, v, pq, pk, h * w, att.kind, att.chunk_frames, att.overlap_frames,
                                    att.causal, att.rate)
        return core
    return make_core


def forward(weights, cfg, att, latents, timestep, context):
    """velocity of the hybrid Wan (float64)."""
    return wan.forward(weights, cfg, latents, timestep, context, attention_hook=hook(att))
