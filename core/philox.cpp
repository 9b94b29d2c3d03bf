#include "core/philox.h"

#include <cmath>

namespace rehyat::philox {
float fma_rn(float a, float b, float c) { return std::fma(a, b, c); }
}  // namespace rehyat::philox
