// WanModel: construction, parameter listing and the staged forward.
#include "layers/wan_model.h"

#include "autograd/ops.h"

namespace rehyat::layers {

std::string block_prefix(int index) { return fmt::format("blocks.{}", index); }

namespace {
ParamFactory factory(Device device, DType dtype, uint64_t seed) {
  REHYAT_CHECK(is_floating(dtype), "WanModel: param dtype must be floating, got {}", dtype_name(dtype));
  return ParamFactory{device, dtype, seed};
}
}  // namespace

WanModel::WanModel(const WanConfig& config, Device device, DType param_dtype, uint64_t seed)
    : config_(config), device_(device), param_dtype_(param_dtype) {
  config_.validate();
  const ParamFactory f = factory(device, param_dtype, seed);
  const int64_t D = config_.dim;
  patch_embedding_ = PatchEmbedding(f, config_.in_dim, D, config_.patch_size);
  text_embedding_ = TextEmbedding(f, config_.text_dim, D, config_.text_len);
  time_embedding_ = TimeEmbedding(f, config_.freq_dim, D);
  for (int i = 0; i < int(config_.num_layers); ++i)
    blocks_.push_back(std::make_unique<WanBlock>(f, block_prefix(i), D, config_.ffn_dim, config_.num_heads, config_.eps));
  head_ = Head(f, D, config_.out_dim * config_.patch_volume(), config_.eps);
}

NamedTensors WanModel::named_parameters() const {
  NamedTensors out;
  patch_embedding_.collect("patch_embedding", out);
  text_embedding_.collect(out);
  time_embedding_.collect(out);
  for (int i = 0; i < num_blocks(); ++i) blocks_[size_t(i)]->collect(block_prefix(i), out);
  head_.collect(out);
  return out;
}

std::vector<Tensor> WanModel::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t WanModel::parameter_count() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void WanModel::set_requires_grad(bool enabled) {
  for (auto& [name, t] : named_parameters()) t.set_requires_grad(enabled);
}

void WanModel::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

WanBlock& WanModel::block(int index) {
  REHYAT_CHECK(index >= 0 && index < num_blocks(), "block index {} out of range [0, {})", index, num_blocks());
  return *blocks_[size_t(index)];
}

const WanBlock& WanModel::block(int index) const {
  REHYAT_CHECK(index >= 0 && index < num_blocks(), "block index {} out of range [0, {})", index, num_blocks());
  return *blocks_[size_t(index)];
}

PreparedInputs WanModel::prepare(const Tensor& latents, const Tensor& timestep, const Tensor& context,
                                 DType compute, int64_t frame_offset) const {
  const Precision p = Precision::for_compute(compute);
  REHYAT_CHECK(timestep.dim() == 1 && latents.dim() == 5 && timestep.size(0) == latents.size(0) &&
                   context.dim() == 3 && context.size(0) == latents.size(0),
               "WanModel: latents {}, timestep {} and context {} must be [B, C, F, H, W], [B] and [B, L, C]",
               latents.str(), timestep.str(), context.str());
  PreparedInputs in;
  in.precision = p;
  in.grid = patch_grid(latents.shape(), config_.patch_size);
  in.grid.frame_offset = frame_offset;
  in.x = patch_embedding_.forward(latents.to(device_), p);
  const TimeEmbedding::Output t = time_embedding_.forward(timestep, p, device_);
  in.e = t.e;
  in.e0 = t.e0;
  in.context = text_embedding_.forward(context.to(device_), p);
  in.rope = RopeTables::build(config_.head_dim(), in.grid, p.high, device_);
  return in;
}

Tensor WanModel::run_block(int index, const Tensor& x, const PreparedInputs& in, BlockActivations* capture) const {
  return block(index).forward(x, in.e0, in.context, in.rope, in.precision, capture);
}

Tensor WanModel::run_blocks(const Tensor& x_in, const PreparedInputs& in, const BlockHook& hook) const {
  Tensor x = x_in;
  for (int i = 0; i < num_blocks(); ++i) {
    if (!hook) {
      x = run_block(i, x, in);
      continue;
    }
    BlockActivations activations;
    x = run_block(i, x, in, &activations);
    hook(i, activations);
  }
  return x;
}

Tensor WanModel::run_head(const Tensor& x, const PreparedInputs& in) const {
  return unpatchify(head_.forward(x, in.e, in.precision), in.grid, config_.patch_size, config_.out_dim);
}

Tensor WanModel::forward(const Tensor& latents, const Tensor& timestep, const Tensor& context, DType compute,
                         const BlockHook& hook) const {
  const PreparedInputs in = prepare(latents, timestep, context, compute);
  return run_head(run_blocks(in.x, in, hook), in);
}

}  // namespace rehyat::layers
