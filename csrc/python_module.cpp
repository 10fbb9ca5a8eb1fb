// Makes the build importable as lomar_ops._C. Importing it runs the static
// TORCH_LIBRARY registrations (the ops then live in torch.ops.lomar_ops); the
// module itself only exposes what was compiled.
#include <pybind11/pybind11.h>

#include "lomar_ops.h"

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lomar_ops C++/CUDA kernels (ops are registered in torch.ops.lomar_ops)";
  m.def("build_info", [] {
    const auto info = lomar_ops::build_info();
    py::dict d;
    d["cuda"] = info.cuda;
    d["cuda_archs"] = info.cuda_archs;
    d["cuda_version"] = info.cuda_version;
    d["compiler"] = info.compiler;
    d["torch_version"] = info.torch_version;
    d["openmp"] = info.openmp;
    return d;
  }, "What this build of the extension contains.");
}
