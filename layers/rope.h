// Wan2.1's 3D rotary position embedding (SPEC §2; wan/modules/model.py rope_params and
// rope_apply).
//
// A head of dim d is d/2 complex pairs of adjacent elements (x[2j], x[2j+1]). The pairs
// form three bands: the first (d - 4*(d/6))/2 rotate by the token's frame index f, the
// next (d/6) by its row h, the last (d/6) by its column w. The j-th pair of a band of
// width dim_axis (in elements) turns by pos * 10000^(-2j/dim_axis). Angles, cos and sin
// are computed in f64 on the host and stored in the table dtype (f32, or f64 for f64
// runs); applying the rotation is composed from differentiable elementwise ops, so its
// gradient (the inverse rotation) comes from autograd on CPU and CUDA alike.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace rehyat::layers {

// The token grid after patching: tokens are frame-major, then row, then column.
// frame_offset shifts the frame positions (chunk-by-chunk inference sees later frames).
struct TokenGrid {
  int64_t frames = 0, height = 0, width = 0;
  int64_t frame_offset = 0;
  int64_t frame_tokens() const { return height * width; }
  int64_t tokens() const { return frames * height * width; }
  bool operator==(const TokenGrid&) const = default;
};

// Pairs per axis for head dim d: f gets d/2 - 2*(d/6) pairs, h and w get d/6 each.
struct RopeBands {
  int64_t frame_pairs = 0, row_pairs = 0, col_pairs = 0;
};
RopeBands rope_bands(int64_t head_dim);

// Rotation angles [tokens, d/2] (row-major, f64) of every token of `grid`.
std::vector<double> rope_angles(int64_t head_dim, const TokenGrid& grid);

// cos/sin of the angles as [tokens, 1, d/2] tensors (broadcast over batch and heads).
struct RopeTables {
  Tensor cos, sin;  // [N, 1, d/2]
  TokenGrid grid;
  int64_t head_dim = 0;
  static RopeTables build(int64_t head_dim, const TokenGrid& grid, DType dtype, Device device);
};

// x [B, N, H, d] -> x rotated pairwise: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
// Runs in the tables' dtype (x is cast to it); differentiable in x.
Tensor apply_rope(const Tensor& x, const RopeTables& tables);

}  // namespace rehyat::layers
