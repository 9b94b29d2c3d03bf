// Device-agnostic entry point for matrix products, and the CPU reference (fp32
// accumulation, fp64 for f64, i-k-j loop order over strided operands). With a CBLAS
// (OpenBLAS) present, f32 and f64 products go to cblas_{s,d}gemm instead: the CPU
// quick-start trains a small DiT, and the loop is ~50x slower than a tuned GEMM. The
// loop stays the path for bf16/f16 and the oracle the BLAS path is tested against
// (REHYAT_CPU_GEMM=loop forces it).
#include "core/ops/matmul.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/ops/dispatch.h"

#ifdef REHYAT_BLAS
#include <cblas.h>
#endif

namespace rehyat::kernels {

namespace {
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

bool inner_row_major(const Tensor& t) { return t.stride(-1) == 1 || t.size(-1) == 1; }
bool inner_col_major(const Tensor& t) { return t.stride(-2) == 1 || t.size(-2) == 1; }

// Makes an operand acceptable to the kernels: inner dims row- or column-major and
// batch dims collapsible; copies only when needed.
Tensor prepare_operand(const Tensor& t) {
  if ((inner_row_major(t) || inner_col_major(t)) && collapsed_batch_stride(t)) return t;
  return t.detach().contiguous();
}
}  // namespace

#ifdef REHYAT_BLAS
namespace {
// Leading dimension and transpose flag of a strided matrix for a row-major CBLAS call,
// or nullopt when BLAS cannot describe it (then the loop runs).
struct BlasOperand {
  CBLAS_TRANSPOSE trans;
  int64_t ld;
};
std::optional<BlasOperand> blas_operand(const Tensor& t) {
  const int64_t rows = t.size(-2), cols = t.size(-1);
  if (t.stride(-1) == 1 || cols == 1) {
    const int64_t ld = rows == 1 ? cols : t.stride(-2);
    if (ld >= std::max<int64_t>(cols, 1)) return BlasOperand{CblasNoTrans, ld};
  }
  if (t.stride(-2) == 1 || rows == 1) {
    const int64_t ld = cols == 1 ? rows : t.stride(-1);
    if (ld >= std::max<int64_t>(rows, 1)) return BlasOperand{CblasTrans, ld};
  }
  return std::nullopt;
}

std::atomic<bool>& blas_enabled() {
  static std::atomic<bool> enabled = [] {
    const char* env = std::getenv("REHYAT_CPU_GEMM");
    return !(env != nullptr && std::strcmp(env, "loop") == 0);
  }();
  return enabled;
}

// c[b] = alpha * a[b] @ b[b] + beta * c[b] through cblas_{s,d}gemm; false if not applicable.
bool blas_gemm(Tensor& c, const Tensor& a, const Tensor& b, double alpha, double beta, int64_t batches,
               int64_t sa, int64_t sb) {
  if (!blas_enabled() || (c.dtype() != DType::F32 && c.dtype() != DType::F64)) return false;
  const int64_t m = c.size(-2), n = c.size(-1), k = a.size(-1);
  if (m == 0 || n == 0) return true;
  const auto oa = blas_operand(a), ob = blas_operand(b);
  if (!oa || !ob) return false;
  // One BLAS thread unless OPENBLAS_NUM_THREADS says otherwise: our GEMMs are small, and
  // OpenBLAS's spinning workers cost more (sched_yield) than they bring on 2 cores.
  static std::once_flag threads_set;
  std::call_once(threads_set, [] {
    if (std::getenv("OPENBLAS_NUM_THREADS") == nullptr) openblas_set_num_threads(1);
  });
  for (int64_t bi = 0; bi < batches; ++bi) {
    if (c.dtype() == DType::F32) {
      cblas_sgemm(CblasRowMajor, oa->trans, ob->trans, int(m), int(n), int(k), float(alpha),
                  a.data<float>() + bi * sa, int(oa->ld), b.data<float>() + bi * sb, int(ob->ld), float(beta),
                  c.data<float>() + bi * m * n, int(n));
    } else {
      cblas_dgemm(CblasRowMajor, oa->trans, ob->trans, int(m), int(n), int(k), alpha, a.data<double>() + bi * sa,
                  int(oa->ld), b.data<double>() + bi * sb, int(ob->ld), beta, c.data<double>() + bi * m * n, int(n));
    }
  }
  return true;
}
}  // namespace
#endif

bool cpu_blas_available() {
#ifdef REHYAT_BLAS
  return true;
#else
  return false;
#endif
}

bool set_cpu_blas(bool enabled) {
#ifdef REHYAT_BLAS
  return blas_enabled().exchange(enabled);
#else
  return false;
#endif
}

std::optional<int64_t> collapsed_batch_stride(const Tensor& t) {
  int64_t stride = 0;
  bool found = false;
  int64_t inner_count = 1;  // matrices spanned by the batch dims inside d
  for (int d = t.dim() - 3; d >= 0; --d) {
    if (t.size(d) != 1) {
      if (!found) {
        stride = t.stride(d);
        found = true;
      }
      if (t.stride(d) != stride * inner_count) return std::nullopt;
    }
    inner_count *= t.size(d);
  }
  return stride;
}

void matmul(Tensor& c, const Tensor& a_in, const Tensor& b_in, double alpha, double beta) {
  check_same_device("matmul", c, {&a_in, &b_in});
  check_same_dtype("matmul", a_in, {&b_in});
  const bool widening = c.dtype() == DType::F32 && (a_in.dtype() == DType::BF16 || a_in.dtype() == DType::F16);
  REHYAT_CHECK(a_in.dtype() == c.dtype() || widening,
               "matmul: {} @ {} -> {}: the output dtype must be the operands' (or f32 for bf16 / f16 operands)",
               a_in.str(), b_in.str(), c.str());
  REHYAT_CHECK(is_floating(c.dtype()), "matmul: needs floating tensors, got {}", c.str());
  REHYAT_CHECK(a_in.dim() >= 2 && b_in.dim() >= 2 && c.dim() >= 2, "matmul: operands need 2+ dims ({} @ {} -> {})",
               a_in.str(), b_in.str(), c.str());
  REHYAT_CHECK(c.is_contiguous(), "matmul: output {} must be contiguous", c.str());
  const int64_t m = a_in.size(-2), k = a_in.size(-1), n = b_in.size(-1);
  REHYAT_CHECK(b_in.size(-2) == k && c.size(-2) == m && c.size(-1) == n, "matmul: shapes {} @ {} -> {} disagree",
               a_in.str(), b_in.str(), c.str());
  const Shape batch(c.shape().begin(), c.shape().end() - 2);
  for (const Tensor* t : {&a_in, &b_in}) {
    Shape tb(t->shape().begin(), t->shape().end() - 2);
    REHYAT_CHECK(tb.empty() || tb == batch, "matmul: batch dims of {} must be absent or equal those of {}", t->str(),
                 c.str());
  }
  Tensor a = prepare_operand(a_in), b = prepare_operand(b_in);
  REHYAT_ROUTE_CUDA(c, cuda::matmul(c, a, b, alpha, beta));
  if (widening) {  // CPU: the f32 product of the (exactly widened) operands
    matmul(c, a.detach().to(DType::F32), b.detach().to(DType::F32), alpha, beta);
    return;
  }

  const int64_t batches = shape_numel(batch);
  const int64_t sa = *collapsed_batch_stride(a), sb = *collapsed_batch_stride(b);
  const int64_t a_r = a.stride(-2), a_c = a.stride(-1), b_r = b.stride(-2), b_c = b.stride(-1);
#ifdef REHYAT_BLAS
  if (blas_gemm(c, a, b, alpha, beta, batches, sa, sb)) return;
#endif
  REHYAT_DISPATCH_FLOAT(c.dtype(), "matmul", {
    using A = acc_t<scalar_t>;
    const scalar_t* ap = a.data<scalar_t>();
    const scalar_t* bp = b.data<scalar_t>();
    scalar_t* cp = c.data<scalar_t>();
    std::vector<A> row(static_cast<size_t>(n));
    for (int64_t bi = 0; bi < batches; ++bi) {
      const scalar_t* ab = ap + bi * sa;
      const scalar_t* bb = bp + bi * sb;
      scalar_t* cb = cp + bi * m * n;
      for (int64_t i = 0; i < m; ++i) {
        std::fill(row.begin(), row.end(), A(0));
        for (int64_t p = 0; p < k; ++p) {
          const A av = A(to_double(ab[i * a_r + p * a_c]));
          const scalar_t* brow = bb + p * b_r;
          for (int64_t j = 0; j < n; ++j) row[j] += av * A(to_double(brow[j * b_c]));
        }
        for (int64_t j = 0; j < n; ++j) {
          A v = A(alpha) * row[j];
          if (beta != 0.0) v += A(beta) * A(to_double(cb[i * n + j]));
          cb[i * n + j] = from_double<scalar_t>(v);
        }
      }
    }
  });
}

}  // namespace rehyat::kernels
