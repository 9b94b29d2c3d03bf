#include "core/ops/dispatch.h"

namespace rehyat::kernels {

void check_same_device(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others) {
  REHYAT_CHECK(ref.defined(), "{}: undefined tensor", op);
  for (const Tensor* t : others) {
    REHYAT_CHECK(t && t->defined(), "{}: undefined tensor", op);
    REHYAT_CHECK(t->device() == ref.device(), "{}: tensors on different devices ({} and {})", op, ref.str(),
                 t->str());
  }
}

void check_same_dtype(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others) {
  for (const Tensor* t : others)
    REHYAT_CHECK(t->dtype() == ref.dtype(), "{}: dtype mismatch ({} and {})", op, ref.str(), t->str());
}

void check_same_shape(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others) {
  for (const Tensor* t : others)
    REHYAT_CHECK(t->shape() == ref.shape(), "{}: shape mismatch ({} and {})", op, ref.str(), t->str());
}

}  // namespace rehyat::kernels
