// pybind11 module semgan_fast._C: the CUDA kernels of class_conv and onehot_conv.
// Python wrappers with the documented signatures: semgan_fast/ops/_cuda.py.
#include <torch/extension.h>

#include "semgan_kernels.h"
#include "torch_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "semgan_fast CUDA kernels: exact gather class_conv and onehot_conv (forward and backward)";
  m.def("class_conv_forward", &semgan_ext::class_conv_forward, "class_conv forward -> out [B,K,O,H,W]",
        py::arg("x"), py::arg("labels"), py::arg("weight"), py::arg("bias"), py::arg("padding_mode"),
        py::arg("activation"));
  m.def("class_conv_backward", &semgan_ext::class_conv_backward,
        "class_conv backward -> (dx, dweight, dbias or None)", py::arg("grad_out"), py::arg("x"), py::arg("labels"),
        py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("padding_mode"), py::arg("activation"));
  m.def("onehot_conv_forward", &semgan_ext::onehot_conv_forward, "onehot_conv forward -> out [B,O,Ho,Wo]",
        py::arg("labels"), py::arg("extra"), py::arg("weight"), py::arg("bias"), py::arg("stride"),
        py::arg("padding"), py::arg("padding_mode"));
  m.def("onehot_conv_backward", &semgan_ext::onehot_conv_backward,
        "onehot_conv backward -> (dweight, dbias, dextra or None)", py::arg("grad_out"), py::arg("labels"),
        py::arg("extra"), py::arg("weight"), py::arg("stride"), py::arg("padding"), py::arg("padding_mode"),
        py::arg("need_extra_grad"));
  m.def("class_conv_supported_kernel_size", [](int64_t k) { return semgan_class_conv_supported(k) != 0; },
        "True when the class_conv kernels support this kernel size", py::arg("kernel_size"));
}
