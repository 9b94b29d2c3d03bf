// Plain-loop helpers for the CPU reference kernels: visit every element of a shape and
// hand the callback the element offset of each operand (strides may be 0 or anything).
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace rehyat::kernels::cpu {

// fn(offsets) is called with offsets[k] = sum_d index[d] * strides[k][d], in row-major
// order of `shape`.
template <size_t N, typename Fn>
void for_each_offset(const Shape& shape, const std::array<const Shape*, N>& strides, Fn&& fn) {
  const int rank = int(shape.size());
  const int64_t numel = shape_numel(shape);
  if (numel == 0) return;
  std::array<int64_t, N> off{};
  if (rank == 0) {
    fn(off);
    return;
  }
  std::vector<int64_t> index(rank, 0);
  const int last = rank - 1;
  const int64_t inner = shape[last];
  std::array<int64_t, N> inner_stride;
  for (size_t k = 0; k < N; ++k) inner_stride[k] = (*strides[k])[last];
  for (int64_t done = 0; done < numel; done += inner) {
    std::array<int64_t, N> o = off;
    for (int64_t i = 0; i < inner; ++i) {
      fn(o);
      for (size_t k = 0; k < N; ++k) o[k] += inner_stride[k];
    }
    // advance the odometer over the outer dims
    for (int d = last - 1; d >= 0; --d) {
      ++index[d];
      for (size_t k = 0; k < N; ++k) off[k] += (*strides[k])[d];
      if (index[d] < shape[d]) break;
      for (size_t k = 0; k < N; ++k) off[k] -= (*strides[k])[d] * shape[d];
      index[d] = 0;
    }
  }
}

}  // namespace rehyat::kernels::cpu
