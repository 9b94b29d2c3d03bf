"""An independent float64 numpy implementation of the Wan2.1 text-to-video DiT forward.

Written from Wan2.1's public model code (wan/modules/model.py) and SPEC §2, sharing
nothing with the C++ framework: the parity tests feed it the same weights and inputs as
`rehyat forward` and compare velocities, and use its finite differences to check the
gradients `rehyat forward --grad` writes. Weights are a dict of Wan key names to arrays.
forward()'s optional `attention_hook` replaces the self-attention core of every block
(hybrid_numpy.py plugs ReHyAt in through it).
"""
import math

import numpy as np


class WanConfig:
    def __init__(self, dim, ffn_dim, freq_dim, num_heads, num_layers, in_dim, out_dim,
                 text_len, text_dim, eps=1e-6, patch_size=(1, 2, 2)):
        self.dim, self.ffn_dim, self.freq_dim = dim, ffn_dim, freq_dim
        self.num_heads, self.num_layers = num_heads, num_layers
        self.in_dim, self.out_dim = in_dim, out_dim
        self.text_len, self.text_dim, self.eps = text_len, text_dim, eps
        self.patch_size = tuple(patch_size)

    @property
    def head_dim(self):
        return self.dim // self.num_heads

    def to_yaml(self):
        keys = ["dim", "ffn_dim", "freq_dim", "num_heads", "num_layers", "in_dim", "out_dim",
                "text_len", "text_dim", "eps"]
        lines = ["model:"] + [f"  {k}: {getattr(self, k)}" for k in keys]
        lines.append(f"  patch_size: [{', '.join(map(str, self.patch_size))}]")
        return "\n".join(lines) + "\n"


def parameter_shapes(cfg):
    """Every tensor of a Wan checkpoint (original naming) with its shape."""
    D, pt, ph, pw = cfg.dim, *cfg.patch_size
    shapes = {
        "patch_embedding.weight": (D, cfg.in_dim, pt, ph, pw),
        "patch_embedding.bias": (D,),
        "text_embedding.0.weight": (D, cfg.text_dim), "text_embedding.0.bias": (D,),
        "text_embedding.2.weight": (D, D), "text_embedding.2.bias": (D,),
        "time_embedding.0.weight": (D, cfg.freq_dim), "time_embedding.0.bias": (D,),
        "time_embedding.2.weight": (D, D), "time_embedding.2.bias": (D,),
        "time_projection.1.weight": (6 * D, D), "time_projection.1.bias": (6 * D,),
        "head.modulation": (1, 2, D),
        "head.head.weight": (cfg.out_dim * pt * ph * pw, D),
        "head.head.bias": (cfg.out_dim * pt * ph * pw,),
    }
    for n in range(cfg.num_layers):
        b = f"blocks.{n}."
        shapes[b + "modulation"] = (1, 6, D)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}{attn}.{proj}.weight"] = (D, D)
                shapes[f"{b}{attn}.{proj}.bias"] = (D,)
            shapes[f"{b}{attn}.norm_q.weight"] = (D,)
            shapes[f"{b}{attn}.norm_k.weight"] = (D,)
        shapes[b + "norm3.weight"] = (D,)
        shapes[b + "norm3.bias"] = (D,)
        shapes[b + "ffn.0.weight"] = (cfg.ffn_dim, D)
        shapes[b + "ffn.0.bias"] = (cfg.ffn_dim,)
        shapes[b + "ffn.2.weight"] = (D, cfg.ffn_dim)
        shapes[b + "ffn.2.bias"] = (D,)
    return shapes


def random_weights(cfg, rng):
    """Random weights at scales that keep activations O(1) through the tiny model."""
    weights = {}
    for name, shape in parameter_shapes(cfg).items():
        if name.endswith("modulation"):
            w = 0.3 * rng.standard_normal(shape)
        elif ".norm" in name and name.endswith("weight"):
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            w = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            w = rng.standard_normal(shape) / math.sqrt(fan_in)
        weights[name] = w.astype(np.float32)
    return weights


# --- primitives -----------------------------------------------------------------------

def linear(x, w, b):
    return x @ w.T + b


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, eps, weight=None, bias=None):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight + bias
    return y


def rms_norm(x, weight, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * weight


def attention(q, k, v):
    """q [B, Nq, H, d], k/v [B, Nk, H, d]: full softmax attention, scale 1/sqrt(d)."""
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def sinusoidal_embedding(freq_dim, t):
    half = freq_dim // 2
    s = np.outer(t.astype(np.float64), np.power(10000.0, -np.arange(half) / half))
    return np.concatenate([np.cos(s), np.sin(s)], axis=1)


def rope_angles(head_dim, f, h, w):
    """[f*h*w, head_dim/2] angles: bands of pairs rotated by frame, row and column."""
    c = head_dim // 2
    bands = [c - 2 * (c // 3), c // 3, c // 3]  # pairs per axis, Wan's freqs.split
    dims = [2 * n for n in bands]
    grids = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
    parts = []
    for pos, pairs, dim_axis in zip(grids, bands, dims):
        inv = 1.0 / np.power(10000.0, np.arange(0, dim_axis, 2) / dim_axis)
        assert len(inv) == pairs
        parts.append(pos.reshape(-1, 1) * inv[None, :])
    return np.concatenate(parts, axis=1)


def rope(x, angles):
    """x [B, N, H, d]: rotate adjacent pairs (x[2j], x[2j+1]) by angles [N, d/2]."""
    xc = x[..., 0::2] + 1j * x[..., 1::2]
    rot = np.exp(1j * angles)[None, :, None, :]
    y = xc * rot
    out = np.empty_like(x)
    out[..., 0::2] = y.real
    out[..., 1::2] = y.imag
    return out


# --- the model ---------------------------------------------------------------------------

def patchify(latents, patch):
    """[B, C, F, H, W] -> [B, tokens, C*pt*ph*pw] in Conv3d weight order (c, p, q, r)."""
    B, C, F, H, W = latents.shape
    pt, ph, pw = patch
    f, h, w = F // pt, H // ph, W // pw
    x = latents.reshape(B, C, f, pt, h, ph, w, pw)
    x = x.transpose(0, 2, 4, 6, 1, 3, 5, 7)  # b f h w c p q r
    return x.reshape(B, f * h * w, C * pt * ph * pw), (f, h, w)


def unpatchify(y, grid, patch, out_dim):
    B = y.shape[0]
    f, h, w = grid
    pt, ph, pw = patch
    u = y.reshape(B, f, h, w, pt, ph, pw, out_dim)
    u = np.einsum("bfhwpqrc->bcfphqwr", u)
    return u.reshape(B, out_dim, f * pt, h * ph, w * pw)


def self_attention(W, pre, x, cfg, angles, core=attention):
    """core(q, k, v) -> o, all [B, N, H, d] with q, k normed and rotated."""
    B, N, D = x.shape
    H, d = cfg.num_heads, cfg.head_dim
    q = rms_norm(linear(x, W[pre + "q.weight"], W[pre + "q.bias"]), W[pre + "norm_q.weight"], cfg.eps)
    k = rms_norm(linear(x, W[pre + "k.weight"], W[pre + "k.bias"]), W[pre + "norm_k.weight"], cfg.eps)
    v = linear(x, W[pre + "v.weight"], W[pre + "v.bias"])
    q, k, v = (t.reshape(B, N, H, d) for t in (q, k, v))
    o = core(rope(q, angles), rope(k, angles), v).reshape(B, N, D)
    return linear(o, W[pre + "o.weight"], W[pre + "o.bias"])


def cross_attention(W, pre, x, ctx, cfg):
    B, N, D = x.shape
    H, d = cfg.num_heads, cfg.head_dim
    q = rms_norm(linear(x, W[pre + "q.weight"], W[pre + "q.bias"]), W[pre + "norm_q.weight"], cfg.eps)
    k = rms_norm(linear(ctx, W[pre + "k.weight"], W[pre + "k.bias"]), W[pre + "norm_k.weight"], cfg.eps)
    v = linear(ctx, W[pre + "v.weight"], W[pre + "v.bias"])
    L = ctx.shape[1]
    o = attention(q.reshape(B, N, H, d), k.reshape(B, L, H, d), v.reshape(B, L, H, d)).reshape(B, N, D)
    return linear(o, W[pre + "o.weight"], W[pre + "o.bias"])


def forward(weights, cfg, latents, timestep, context, capture=None, attention_hook=None):
    """velocity [B, out_dim, F, H, W] in float64. capture, when a dict, receives per block
    the self-attention input and output (the distillation cache's two tensors).
    attention_hook, when given, is called as attention_hook(W, block, grid) with the float64 weights,
    the block index and the token grid (f, h, w); it returns that block's self-attention
    core q, k, v -> o, or None for full softmax."""
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    D = cfg.dim
    latents = np.asarray(latents, np.float64)
    B = latents.shape[0]

    tokens, grid = patchify(latents, cfg.patch_size)
    x = linear(tokens, W["patch_embedding.weight"].reshape(D, -1), W["patch_embedding.bias"])

    e = sinusoidal_embedding(cfg.freq_dim, np.asarray(timestep))
    e = linear(silu(linear(e, W["time_embedding.0.weight"], W["time_embedding.0.bias"])),
               W["time_embedding.2.weight"], W["time_embedding.2.bias"])
    e0 = linear(silu(e), W["time_projection.1.weight"], W["time_projection.1.bias"]).reshape(B, 6, D)

    ctx = np.zeros((B, cfg.text_len, cfg.text_dim))
    ctx[:, :context.shape[1]] = context  # zero padding to text_len; padded rows still attend
    ctx = linear(gelu_tanh(linear(ctx, W["text_embedding.0.weight"], W["text_embedding.0.bias"])),
                 W["text_embedding.2.weight"], W["text_embedding.2.bias"])

    angles = rope_angles(cfg.head_dim, *grid)
    for n in range(cfg.num_layers):
        b = f"blocks.{n}."
        m = W[b + "modulation"] + e0  # [B, 6, D]
        m = [m[:, i:i + 1, :] for i in range(6)]
        attn_in = layer_norm(x, cfg.eps) * (1 + m[1]) + m[0]
        core = attention_hook(W, n, grid) if attention_hook is not None else None
        y = self_attention(W, b + "self_attn.", attn_in, cfg, angles, core or attention)
        if capture is not None:
            capture[n] = (attn_in, y)
        x = x + y * m[2]
        x = x + cross_attention(W, b + "cross_attn.",
                                layer_norm(x, cfg.eps, W[b + "norm3.weight"], W[b + "norm3.bias"]), ctx, cfg)
        y = linear(gelu_tanh(linear(layer_norm(x, cfg.eps) * (1 + m[4]) + m[3],
                                    W[b + "ffn.0.weight"], W[b + "ffn.0.bias"])),
                   W[b + "ffn.2.weight"], W[b + "ffn.2.bias"])
        x = x + y * m[5]

    hm = W["head.modulation"] + e[:, None, :]  # [B, 2, D]: shift, scale
    y = linear(layer_norm(x, cfg.eps) * (1 + hm[:, 1:2]) + hm[:, 0:1], W["head.head.weight"], W["head.head.bias"])
    return unpatchify(y, grid, cfg.patch_size, cfg.out_dim)
