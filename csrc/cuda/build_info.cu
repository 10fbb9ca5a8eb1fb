// Reports, from inside a CUDA translation unit, what nvcc compiled for.
#include <cuda_runtime_api.h>

#include <string>

#include "../lomar_ops.h"

#define LOMAR_STR2(...) #__VA_ARGS__
#define LOMAR_STR(...) LOMAR_STR2(__VA_ARGS__)

namespace lomar_ops {

std::string cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return LOMAR_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown (nvcc older than 11.5)";
#endif
}

std::string cuda_runtime_version_at_build() {
  return std::to_string(CUDART_VERSION / 1000) + "." +
         std::to_string((CUDART_VERSION % 1000) / 10);
}

}  // namespace lomar_ops
