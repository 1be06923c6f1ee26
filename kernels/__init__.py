"""Triton kernels (imported as ``semgan_fast.kernels``). One op per file, named as in ``semgan_fast.ops``."""
