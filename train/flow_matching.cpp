// Flow-matching batches and loss (see flow_matching.h), built from the elementwise ops
// so that they run on the tensors' device.
#include "train/flow_matching.h"

#include <vector>

#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/check.h"
#include "core/philox.h"

namespace rehyat::train {
namespace {

constexpr uint64_t kNoiseCounterOffset = uint64_t(1) << 40;  // eps counters; s uses [0, B)

uint64_t step_key(uint64_t seed, int64_t step) {
  const philox::U4 words = philox::block(seed, uint64_t(step));
  return uint64_t(words.v[0]) | (uint64_t(words.v[1]) << 32);
}

}  // namespace

Tensor shifted_sigma(const Tensor& s, double shift) {
  REHYAT_CHECK(shift > 0, "flow matching: shift must be positive, got {}", shift);
  autograd::NoGradGuard no_grad;
  // Separate multiplies and adds, never alpha x + beta with an inexact product in one op
  // (CUDA would fuse it into an FMA): each op rounds once on every device.
  return div(mul(s, shift), add(mul(s, shift - 1.0), 1.0));
}

FlowMatchingBatch make_flow_matching_batch(const Tensor& x0, uint64_t seed, int64_t step,
                                           const FlowMatchingOptions& options, SampleSlice slice) {
  REHYAT_CHECK(x0.dim() >= 1 && x0.size(0) > 0 && is_floating(x0.dtype()),
               "flow matching: x0 must be a floating tensor [B, ...] with B > 0, got {}", x0.str());
  REHYAT_CHECK(step >= 0, "flow matching: step {} is negative", step);
  REHYAT_CHECK(slice.first >= 0 && slice.stride >= 1, "flow matching: bad sample slice (first {}, stride {})",
               slice.first, slice.stride);
  autograd::NoGradGuard no_grad;
  const int64_t batch = x0.size(0);
  const Device device = x0.device();
  const uint64_t key = step_key(seed, step);

  // s = 1 - u with u uniform in [0, 1) on the 2^-24 grid: exactly (0, 1]. The affine maps
  // 1 - x here have an exact product (alpha = -1), so they round once on every device.
  const int64_t sample_numel = x0.numel() / batch;
  Tensor uniform, eps;  // [B], [B, ...]
  if (slice.stride == 1) {
    uniform = Tensor::rand({batch}, key, uint64_t(slice.first), DType::F32, device);
    eps = Tensor::randn(x0.shape(), key, kNoiseCounterOffset + uint64_t(slice.first * sample_numel), x0.dtype(), device);
  } else {  // one draw per sample at its global counters
    Shape one = x0.shape();
    one[0] = 1;
    std::vector<Tensor> u, e;
    for (int64_t j = 0; j < batch; ++j) {
      const uint64_t i = uint64_t(slice.first + j * slice.stride);
      u.push_back(Tensor::rand({1}, key, i, DType::F32, device));
      e.push_back(Tensor::randn(one, key, kNoiseCounterOffset + i * uint64_t(sample_numel), x0.dtype(), device));
    }
    uniform = concat(u, 0);
    eps = concat(e, 0);
  }
  const Tensor s = affine(uniform, -1.0, 1.0);                                 // [B]
  FlowMatchingBatch out;
  out.sigma = shifted_sigma(s, options.shift);  // [B] f32
  out.timestep = mul(out.sigma, 1000.0);        // [B] f32

  Shape per_sample(size_t(x0.dim()), 1);
  per_sample[0] = batch;
  const Tensor sigma = out.sigma.to(x0.dtype()).view(per_sample);  // [B, 1, ...]
  const Tensor keep = affine(sigma, -1.0, 1.0);                     // [B, 1, ...] 1 - sigma
  const Tensor x = x0.detach();
  out.noisy = add(mul(keep, x), mul(sigma, eps));  // [B, ...]
  out.target = sub(eps, x);                        // [B, ...]
  return out;
}

Tensor flow_matching_loss(const Tensor& predicted, const Tensor& target) {
  REHYAT_CHECK(predicted.shape() == target.shape(), "flow matching loss: prediction {} and target {} differ",
               predicted.str(), target.str());
  const DType dtype = predicted.dtype() == DType::F64 ? DType::F64 : DType::F32;
  const Tensor p = predicted.dtype() == dtype ? predicted : predicted.to(dtype);
  const Tensor t = target.dtype() == dtype ? target.detach() : target.detach().to(dtype);
  return mse_loss(p, t.device() == p.device() ? t : t.to(p.device()));
}

}  // namespace rehyat::train
