// What this build of the extension contains; surfaced as lomar_ops.build_info().
#include "lomar_ops.h"

#ifndef LOMAR_TORCH_VERSION
#define LOMAR_TORCH_VERSION "unknown"
#endif

namespace lomar_ops {

BuildInfo build_info() {
  BuildInfo info;
#ifdef LOMAR_WITH_CUDA
  info.cuda = true;
  info.cuda_archs = cuda_arch_list();
  info.cuda_version = cuda_runtime_version_at_build();
#endif
#if defined(__clang__)
  info.compiler = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info.compiler = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info.compiler = "msvc " + std::to_string(_MSC_VER);
#endif
  info.torch_version = LOMAR_TORCH_VERSION;
#ifdef _OPENMP
  info.openmp = true;
#endif
  return info;
}

}  // namespace lomar_ops
