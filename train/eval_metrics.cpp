// The metrics read their tensors back to the host (videos here are small) and accumulate
// in double, so the same inputs give the same numbers on every device.
#include "train/eval_metrics.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "data/shapes.h"

namespace rehyat::train {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

double psnr(const Tensor& a, const Tensor& b) {
  REHYAT_CHECK(a.defined() && b.defined() && a.shape() == b.shape(), "psnr: shapes differ ({} vs {})",
               a.defined() ? a.str() : "undefined", b.defined() ? b.str() : "undefined");
  REHYAT_CHECK(a.numel() > 0, "psnr: empty tensors {}", a.str());
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  double squared = 0;
  for (size_t i = 0; i < x.size(); ++i) squared += (x[i] - y[i]) * (x[i] - y[i]);
  const double mse = squared / double(x.size());
  if (std::isnan(mse)) return kNaN;
  return mse == 0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(4.0 / mse);
}

double trajectory_smoothness(const Tensor& centres, bool wrap, int64_t width, int64_t height) {
  REHYAT_CHECK(centres.defined() && centres.dim() == 2 && centres.size(1) == 2,
               "trajectory_smoothness: expected centres [T, 2] (got {})",
               centres.defined() ? centres.str() : "undefined");
  REHYAT_CHECK(!wrap || (width > 0 && height > 0),
               "trajectory_smoothness: wrapped centres need the frame's width and height (got {} x {})", width, height);
  const std::vector<double> c = centres.to_vector();  // [T, 2]
  const int64_t frames = centres.size(0);
  auto finite = [&](int64_t t) { return std::isfinite(c[size_t(2 * t)]) && std::isfinite(c[size_t(2 * t + 1)]); };
  // Second difference at frame t of axis k (0: x, 1: y); on a wrapped axis the change of
  // step, each step taken the short way round.
  auto second_difference = [&](int64_t t, int k, int64_t extent) {
    const double previous = c[size_t(2 * t - 2 + k)], now = c[size_t(2 * t + k)], next = c[size_t(2 * t + 2 + k)];
    if (!wrap) return next - 2 * now + previous;
    return data::minimum_image(next - now, double(extent)) - data::minimum_image(now - previous, double(extent));
  };
  double total = 0;
  int64_t count = 0;
  for (int64_t t = 1; t + 1 < frames; ++t) {
    if (!finite(t - 1) || !finite(t) || !finite(t + 1)) continue;
    const double dx = second_difference(t, 0, width), dy = second_difference(t, 1, height);
    total += std::hypot(dx, dy);
    ++count;
  }
  return count == 0 ? kNaN : total / double(count);
}

double chunk_boundary_incoherence(const Tensor& video, int64_t chunk_frames) {
  REHYAT_CHECK(video.defined() && video.dim() == 4,
               "chunk_boundary_incoherence: expected a video [C, T, H, W] (got {})",
               video.defined() ? video.str() : "undefined");
  REHYAT_CHECK(chunk_frames >= 1, "chunk_boundary_incoherence: chunk_frames must be >= 1 (got {})", chunk_frames);
  const int64_t channels = video.size(0), frames = video.size(1), pixels = video.size(2) * video.size(3);
  const std::vector<double> v = video.to_vector();  // [C, T, H*W]
  double boundary = 0, inside = 0;
  int64_t boundary_count = 0, inside_count = 0;
  for (int64_t t = 0; t + 1 < frames; ++t) {
    double diff = 0;  // sum |x_{t+1} − x_t| over (C, H, W)
    for (int64_t c = 0; c < channels; ++c) {
      const double* now = &v[size_t((c * frames + t) * pixels)];
      for (int64_t p = 0; p < pixels; ++p) diff += std::abs(now[p + pixels] - now[p]);
    }
    diff /= double(channels * pixels);
    if ((t + 1) % chunk_frames == 0) {
      boundary += diff;
      ++boundary_count;
    } else {
      inside += diff;
      ++inside_count;
    }
  }
  if (boundary_count == 0 || inside_count == 0) return kNaN;
  return (boundary / double(boundary_count)) / (inside / double(inside_count));
}

}  // namespace rehyat::train
