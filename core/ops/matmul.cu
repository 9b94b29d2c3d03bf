// Matrix products on CUDA: c[b] = alpha * a[b] @ b[b] + beta * c[b] (see matmul.h).
//
// Nothing is saved. c is assigned when beta == 0 (cuBLAS then never reads c, so an
// uninitialised output is fine) and accumulated into (c = alpha*a@b + beta*c) otherwise.
//
// Layout. rehyat is row-major, cuBLAS column-major. The row-major buffer of c[m, n] read
// column-major is c^T[n, m], so we ask cuBLAS for c^T = b^T @ a^T. A row-major operand
// read column-major already is its transpose (op N, leading dim = stride[-2]); a
// column-major operand (a transposed view such as w.transpose(0, 1)) is the matrix itself
// and gets op T (leading dim = stride[-1]). No operand is ever copied here.
//
// Batch. c is contiguous [batch..., m, n]; a and b carry the same batch dims collapsed
// to one uniform stride, or none (stride 0: broadcast). When b is broadcast and a's
// matrices sit back to back row-major (x [B, L, D] @ w), the batch folds into the rows
// of one large product, which cuBLAS runs faster than a strided batch.
//
// An f32 c with bf16 / f16 operands is the wide-output product (fp32 results of a
// low-precision product, e.g. weight gradients): cuBLASLt takes the c layout's own type.
// bf16 / f16 / f32 go through cublasLtMatmul with CUBLAS_COMPUTE_32F and an f32 scale
// (f32 stays exact fp32: no TF32). The matmul descriptor, the three layouts and the
// heuristic's algorithm are cached per problem key (dtype, device, shapes, leading dims,
// batch strides, transposes, pointer alignments), so a repeated shape costs one lookup.
// f64 (reference checks only) goes through cublasDgemmStridedBatched.
#include "core/ops/cuda_common.cuh"  // first: it configures fmt for nvcc

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "core/cuda_context.h"
#include "core/ops/cuda_ops.h"
#include "core/ops/matmul.h"

namespace rehyat::kernels::cuda {

namespace {

using rehyat::cuda::DeviceContext;

// One operand as cuBLAS sees it: a column-major matrix with leading dim `ld`, used as
// stored (CUBLAS_OP_N) or transposed (CUBLAS_OP_T); `batch_stride` elements between
// consecutive matrices (0: the same matrix for every batch).
struct BlasOperand {
  cublasOperation_t op = CUBLAS_OP_N;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

// kernels::collapsed_batch_stride, failing (naming the operand) when it does not exist.
int64_t checked_batch_stride(const Tensor& t, const char* name) {
  const std::optional<int64_t> stride = kernels::collapsed_batch_stride(t);
  REHYAT_CHECK(stride.has_value(), "matmul: batch dims of {} {} (strides {}) do not collapse to one stride", name,
               t.str(), t.strides());
  return *stride;
}

// cuBLAS must see X^T for a rehyat matrix X = t[..., R, C]: that is X read column-major
// when X is row-major (op N), or X itself transposed when X is column-major (op T).
BlasOperand transposed_operand(const Tensor& t, const char* name) {
  const int64_t R = t.size(-2), C = t.size(-1), sr = t.stride(-2), sc = t.stride(-1);
  BlasOperand o;
  o.batch_stride = checked_batch_stride(t, name);
  if ((C == 1 || sc == 1) && (R == 1 || sr >= C)) {
    o.op = CUBLAS_OP_N;  // stored [C, R] column-major
    o.ld = R == 1 ? C : sr;
  } else if ((R == 1 || sr == 1) && (C == 1 || sc >= R)) {
    o.op = CUBLAS_OP_T;  // stored [R, C] column-major
    o.ld = C == 1 ? R : sc;
  } else {
    REHYAT_FAIL("matmul: operand {} {} (strides {}) is neither row- nor column-major with a valid leading dim",
                name, t.str(), t.strides());
  }
  return o;
}

// Largest power of two (up to 256, cuBLASLt's default requirement) dividing the address
// and, when batched, the byte distance between matrices.
uint32_t alignment_bytes(const void* ptr, int64_t batch_stride_bytes) {
  const uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(ptr)) | uint64_t(batch_stride_bytes) | 256u;
  return uint32_t(bits & (~bits + 1));
}

cudaDataType_t blas_dtype(DType d) {
  switch (d) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    case DType::F64: return CUDA_R_64F;
    default: REHYAT_FAIL("matmul: dtype {} is not supported on CUDA", dtype_name(d));
  }
}

// Everything the cached cuBLASLt plan depends on. "first" is the b side (cuBLAS's A),
// "second" the a side (cuBLAS's B); m, n, k are cuBLAS's (n, m, k of rehyat).
struct LtKey {
  int device = 0;
  DType dtype = DType::F32;          // c's
  DType operand_dtype = DType::F32;  // a's and b's: c's, or bf16 / f16 with an f32 c
  cublasOperation_t op_first = CUBLAS_OP_N, op_second = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0;
  int64_t ld_first = 0, ld_second = 0;
  int64_t batch = 1, stride_first = 0, stride_second = 0;
  uint32_t align_first = 0, align_second = 0, align_c = 0;
  bool operator==(const LtKey&) const = default;
};

struct LtKeyHash {
  size_t operator()(const LtKey& key) const {
    size_t h = 0;
    auto mix = [&h](uint64_t v) { h ^= std::hash<uint64_t>{}(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    mix(uint64_t(key.device));
    mix(uint64_t(key.dtype) << 8 | uint64_t(key.operand_dtype));
    mix(uint64_t(key.op_first) << 8 | uint64_t(key.op_second));
    for (int64_t v : {key.m, key.n, key.k, key.ld_first, key.ld_second, key.batch, key.stride_first,
                      key.stride_second})
      mix(uint64_t(v));
    mix(uint64_t(key.align_first) << 32 | key.align_second);
    mix(key.align_c);
    return h;
  }
};

// A ready cuBLASLt problem: descriptor, layouts (c doubles as d: in place) and algorithm.
class LtPlan {
 public:
  LtPlan(const LtKey& key, cublasLtHandle_t handle, size_t workspace_bytes) {
    const cudaDataType_t type = blas_dtype(key.operand_dtype), c_type = blas_dtype(key.dtype);
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F,
                                          CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &key.op_first,
                                                sizeof(key.op_first)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &key.op_second,
                                                sizeof(key.op_second)));
    // Stored shapes: op(first) is [m, k], op(second) is [k, n], c is [m, n] with ld m.
    const bool first_n = key.op_first == CUBLAS_OP_N, second_n = key.op_second == CUBLAS_OP_N;
    first_ = make_layout(type, first_n ? key.m : key.k, first_n ? key.k : key.m, key.ld_first, key.batch,
                         key.stride_first);
    second_ = make_layout(type, second_n ? key.k : key.n, second_n ? key.n : key.k, key.ld_second, key.batch,
                          key.stride_second);
    c_ = make_layout(c_type, key.m, key.n, key.m, key.batch, key.m * key.n);

    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t max_workspace = workspace_bytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &max_workspace, sizeof(max_workspace)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &key.align_first, sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &key.align_second, sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                      &key.align_c, sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                      &key.align_c, sizeof(uint32_t)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, desc_, first_, second_, c_, c_, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    CUBLAS_CHECK(status);
    REHYAT_CHECK(found > 0, "matmul: cuBLASLt has no algorithm for {} -> {} m={} n={} k={} batch={} (cuBLAS terms)",
                 dtype_name(key.operand_dtype), dtype_name(key.dtype), key.m, key.n, key.k, key.batch);
    algo_ = result.algo;
  }
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  ~LtPlan() {
    for (cublasLtMatrixLayout_t layout : {first_, second_, c_})
      if (layout) cublasLtMatrixLayoutDestroy(layout);
    if (desc_) cublasLtMatmulDescDestroy(desc_);
  }

  void run(const DeviceContext& ctx, float alpha, float beta, const void* first, const void* second,
           void* c) const {
    CUBLAS_CHECK(cublasLtMatmul(ctx.cublaslt, desc_, &alpha, first, first_, second, second_, &beta, c, c_, c, c_,
                                &algo_, ctx.lt_workspace, ctx.lt_workspace_bytes, ctx.stream));
  }

 private:
  static cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                                            int64_t batch, int64_t batch_stride) {
    cublasLtMatrixLayout_t layout = nullptr;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, uint64_t(rows), uint64_t(cols), ld));
    if (batch > 1) {
      const int32_t count = int32_t(batch);
      CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                    sizeof(count)));
      CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                    &batch_stride, sizeof(batch_stride)));
    }
    return layout;
  }

  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t first_ = nullptr, second_ = nullptr, c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

const LtPlan& lt_plan(const LtKey& key, const DeviceContext& ctx) {
  static std::mutex mutex;
  static std::unordered_map<LtKey, std::unique_ptr<LtPlan>, LtKeyHash> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end())
    it = plans.emplace(key, std::make_unique<LtPlan>(key, ctx.cublaslt, ctx.lt_workspace_bytes)).first;
  return *it->second;
}

// k == 0: the product is empty, so c = beta * c.
void scale_output(Tensor& c, double beta) {
  if (beta == 0.0)
    kernels::cuda::fill(c, 0.0);
  else if (beta != 1.0)
    kernels::cuda::unary(UnaryOp::Affine, c, c, beta, 0.0);
}

}  // namespace

void matmul(Tensor& c, const Tensor& a, const Tensor& b, double alpha, double beta) {
  REHYAT_CHECK(c.is_contiguous(), "matmul: output {} must be contiguous", c.str());
  REHYAT_CHECK(a.dtype() == b.dtype() && (a.dtype() == c.dtype() || (c.dtype() == DType::F32 && a.dtype() != DType::F64)),
               "matmul: dtypes of {} @ {} -> {} do not combine", a.str(), b.str(), c.str());
  if (c.numel() == 0) return;
  const int64_t m = c.size(-2), n = c.size(-1), k = a.size(-1);
  if (k == 0) {
    scale_output(c, beta);
    return;
  }
  const int64_t batch = c.numel() / (m * n);
  REHYAT_CHECK(batch <= INT32_MAX, "matmul: batch {} exceeds cuBLAS's int32 batch count", batch);

  // cuBLAS computes c^T[n, m] = op(first)[n, k] @ op(second)[k, m] with first = b, second = a.
  const BlasOperand first = transposed_operand(b, "b");
  const BlasOperand second = transposed_operand(a, "a");
  int64_t blas_n = m, blas_batch = batch;
  if (batch > 1 && first.batch_stride == 0 && second.op == CUBLAS_OP_N && second.batch_stride == m * second.ld) {
    blas_n = batch * m;  // a's matrices are consecutive row blocks of one [batch * m, k] matrix
    blas_batch = 1;
  }
  const int64_t c_stride = blas_batch > 1 ? m * n : 0;
  const size_t elem = dtype_size(a.dtype()), c_elem = dtype_size(c.dtype());
  DeviceContext& ctx = rehyat::cuda::context(c.device());

  if (c.dtype() == DType::F64) {
    for (int64_t v : {n, blas_n, k, first.ld, second.ld})
      REHYAT_CHECK(v <= INT32_MAX, "matmul: f64 size {} exceeds cuBLAS's int32 limit ({} @ {})", v, a.str(), b.str());
    CUBLAS_CHECK(cublasDgemmStridedBatched(ctx.cublas, first.op, second.op, int(n), int(blas_n), int(k), &alpha,
                                           static_cast<const double*>(b.data_ptr()), int(first.ld),
                                           first.batch_stride, static_cast<const double*>(a.data_ptr()),
                                           int(second.ld), second.batch_stride, &beta,
                                           static_cast<double*>(c.data_ptr()), int(n), c_stride, int(blas_batch)));
    return;
  }

  LtKey key;
  key.device = c.device().index;
  key.dtype = c.dtype();
  key.operand_dtype = a.dtype();
  key.op_first = first.op;
  key.op_second = second.op;
  key.m = n;
  key.n = blas_n;
  key.k = k;
  key.ld_first = first.ld;
  key.ld_second = second.ld;
  key.batch = blas_batch;
  key.stride_first = blas_batch > 1 ? first.batch_stride : 0;
  key.stride_second = blas_batch > 1 ? second.batch_stride : 0;
  key.align_first = alignment_bytes(b.data_ptr(), key.stride_first * int64_t(elem));
  key.align_second = alignment_bytes(a.data_ptr(), key.stride_second * int64_t(elem));
  key.align_c = alignment_bytes(c.data_ptr(), c_stride * int64_t(c_elem));
  lt_plan(key, ctx).run(ctx, float(alpha), float(beta), b.data_ptr(), a.data_ptr(), c.data_ptr());
}

}  // namespace rehyat::kernels::cuda
