// Instantiates every class_conv / onehot_conv kernel for storage type float (see kernels_explicit.cuh).
#include "kernels_explicit.cuh"

SEMGAN_INSTANTIATE_KERNELS(float)
