// 3D RoPE tables (f64 angles) and their application from differentiable ops.
#include "layers/rope.h"

#include <cmath>

#include "autograd/ops.h"
#include "layers/modules.h"

namespace rehyat::layers {

RopeBands rope_bands(int64_t head_dim) {
  REHYAT_CHECK(head_dim % 2 == 0 && head_dim / 6 > 0, "3D RoPE needs an even head dim of at least 6, got {}",
               head_dim);
  const int64_t pairs = head_dim / 2, side = head_dim / 6;  // == pairs / 3 for even d
  return RopeBands{pairs - 2 * side, side, side};
}

std::vector<double> rope_angles(int64_t head_dim, const TokenGrid& grid) {
  const RopeBands bands = rope_bands(head_dim);
  const int64_t pairs = head_dim / 2;
  // Inverse frequencies per band: 10000^(-2j/dim_axis), dim_axis = 2 * pairs of the band
  // (Wan: 1 / 10000^(arange(0, dim_axis, 2) / dim_axis) in f64).
  auto band_freqs = [](int64_t band_pairs) {
    std::vector<double> f(static_cast<size_t>(band_pairs));
    const double dim_axis = double(2 * band_pairs);
    for (int64_t j = 0; j < band_pairs; ++j) f[size_t(j)] = 1.0 / std::pow(10000.0, double(2 * j) / dim_axis);
    return f;
  };
  const std::vector<double> ff = band_freqs(bands.frame_pairs), fh = band_freqs(bands.row_pairs),
                            fw = band_freqs(bands.col_pairs);
  std::vector<double> angles(size_t(grid.tokens() * pairs));
  size_t i = 0;
  for (int64_t f = 0; f < grid.frames; ++f)
    for (int64_t h = 0; h < grid.height; ++h)
      for (int64_t w = 0; w < grid.width; ++w) {
        const double pf = double(f + grid.frame_offset), ph = double(h), pw = double(w);
        for (double v : ff) angles[i++] = pf * v;
        for (double v : fh) angles[i++] = ph * v;
        for (double v : fw) angles[i++] = pw * v;
      }
  return angles;
}

RopeTables RopeTables::build(int64_t head_dim, const TokenGrid& grid, DType dtype, Device device) {
  const std::vector<double> angles = rope_angles(head_dim, grid);
  std::vector<double> c(angles.size()), s(angles.size());
  for (size_t i = 0; i < angles.size(); ++i) {
    c[i] = std::cos(angles[i]);
    s[i] = std::sin(angles[i]);
  }
  const Shape shape = {grid.tokens(), 1, head_dim / 2};
  return RopeTables{Tensor::from_vector(c, shape, dtype, device), Tensor::from_vector(s, shape, dtype, device), grid,
                    head_dim};
}

Tensor apply_rope(const Tensor& x_in, const RopeTables& tables) {
  REHYAT_CHECK(x_in.dim() == 4 && x_in.size(1) == tables.grid.tokens() && x_in.size(3) == tables.head_dim,
               "apply_rope: x {} does not match the RoPE tables ({} tokens, head dim {}); expected [B, N, H, d]",
               x_in.str(), tables.grid.tokens(), tables.head_dim);
  const Tensor x = cast(x_in, tables.cos.dtype());
  const int64_t B = x.size(0), N = x.size(1), H = x.size(2), d = x.size(3);
  const Tensor pairs = x.reshape({B, N, H, d / 2, 2});
  const Tensor x0 = pairs.select(-1, 0), x1 = pairs.select(-1, 1);  // [B, N, H, d/2]
  const Tensor y0 = x0 * tables.cos - x1 * tables.sin;
  const Tensor y1 = x0 * tables.sin + x1 * tables.cos;
  return concat({y0.unsqueeze(-1), y1.unsqueeze(-1)}, -1).view({B, N, H, d});
}

}  // namespace rehyat::layers
