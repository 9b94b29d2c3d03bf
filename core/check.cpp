#include "core/check.h"

namespace rehyat {

void throw_device_error(const char* library, const char* statement, const char* file, int line,
                        const std::string& what) {
  throw DeviceError(fmt::format("{} error '{}' in `{}` at {}:{}", library, what, statement, file, line));
}

}  // namespace rehyat
