// Instantiates every class_conv / onehot_conv kernel for storage type __nv_bfloat16 (see kernels_explicit.cuh).
#include "kernels_explicit.cuh"

SEMGAN_INSTANTIATE_KERNELS(__nv_bfloat16)
