// Error handling for rehyat: one exception type for user errors (bad config, file,
// shape, dtype) and one family of device check macros that name the statement, file
// and line. Everything throws rather than aborts so tools can report and clean up.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace rehyat {

// A user-facing error: the message names the file, key or tensor at fault.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failed CUDA / cuBLAS / NCCL call: the message names statement, file and line.
class DeviceError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] void throw_device_error(const char* library, const char* statement, const char* file,
                                     int line, const std::string& what);

}  // namespace rehyat

// REHYAT_CHECK(cond, "fmt {}", args...): throws rehyat::Error with the formatted message.
#define REHYAT_CHECK(cond, ...)                                         \
  do {                                                                  \
    if (!(cond)) throw ::rehyat::Error(::fmt::format(__VA_ARGS__));     \
  } while (0)

#define REHYAT_FAIL(...) throw ::rehyat::Error(::fmt::format(__VA_ARGS__))

#ifdef REHYAT_CUDA
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define CUDA_CHECK(stmt)                                                                     \
  do {                                                                                       \
    cudaError_t rehyat_err_ = (stmt);                                                        \
    if (rehyat_err_ != cudaSuccess)                                                          \
      ::rehyat::throw_device_error("CUDA", #stmt, __FILE__, __LINE__,                        \
                                   cudaGetErrorString(rehyat_err_));                         \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(stmt)                                                                   \
  do {                                                                                       \
    cublasStatus_t rehyat_st_ = (stmt);                                                      \
    if (rehyat_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::rehyat::throw_device_error("cuBLAS", #stmt, __FILE__, __LINE__,                      \
                                   cublasGetStatusString(rehyat_st_));                       \
  } while (0)
#endif

#ifdef REHYAT_NCCL
#include <nccl.h>
#define NCCL_CHECK(stmt)                                                                     \
  do {                                                                                       \
    ncclResult_t rehyat_nr_ = (stmt);                                                        \
    if (rehyat_nr_ != ncclSuccess)                                                           \
      ::rehyat::throw_device_error("NCCL", #stmt, __FILE__, __LINE__,                        \
                                   ncclGetErrorString(rehyat_nr_));                          \
  } while (0)
#endif
