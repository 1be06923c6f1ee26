"""Build script for semgan_fast.

The pure-Python package always installs. The CUDA extension ``semgan_fast._C`` (sources in
``csrc/``) is built with ninja when a CUDA build of torch and an nvcc toolchain are present;
set ``SEMGAN_NO_CUDA_EXT=1`` to skip it. Install with ``pip install --no-build-isolation -e .``
so the build sees the torch already installed in the environment.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    """The CUDA toolkit root, or None. /usr/local/bin/nvcc may be a wrapper, so prefer real roots."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def _cuda_extension():
    """Returns (ext_modules, cmdclass) for the CUDA extension, or ([], {}) with a message why not."""
    if os.environ.get("SEMGAN_NO_CUDA_EXT", "0") not in ("", "0"):
        print("semgan_fast: SEMGAN_NO_CUDA_EXT set; installing the pure-Python package", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("semgan_fast: torch not importable at build time; skipping the CUDA extension "
              "(install torch first and use --no-build-isolation)", file=sys.stderr)
        return [], {}
    if torch.version.cuda is None:
        print("semgan_fast: CPU build of torch; skipping the CUDA extension", file=sys.stderr)
        return [], {}
    cuda_home = _cuda_home()
    if cuda_home is None:
        print("semgan_fast: no nvcc found; skipping the CUDA extension", file=sys.stderr)
        return [], {}
    # torch resolves CUDA_HOME once at import; point it at the real toolkit root.
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home
    include_dirs = [os.path.join(ROOT, "csrc")]
    # pip's CUDA 13 wheels ship cuBLAS/cuSPARSE headers that a bare toolkit may lack.
    nv_inc = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include")
    if os.path.isdir(nv_inc):
        include_dirs.append(nv_inc)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    if not sources:
        return [], {}
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # No GPU to detect: build Ampere and Hopper (A100, H100/H200) instead of torch's full list.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        print("semgan_fast: no GPU visible; TORCH_CUDA_ARCH_LIST=8.0;9.0 (set it to override)", file=sys.stderr)
    ext = cpp_extension.CUDAExtension(
        name="semgan_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        # No --use_fast_math: the kernels are exact up to summation order (tanhf, not tanh.approx).
        # -lineinfo maps ncu / compute-sanitizer reports to source lines at no runtime cost.
        extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extension()

setup(
    name="semgan_fast",
    version="0.1.0",
    description="Fast, exact engine for semantic-guided scene generation (LGGAN, ECGAN)",
    python_requires=">=3.10",
    packages=find_packages(include=["semgan_fast", "semgan_fast.*"])
    + ["semgan_fast.kernels", "semgan_fast.export"],
    package_dir={"semgan_fast.kernels": "kernels", "semgan_fast.export": "export"},
    install_requires=["torch>=2.4", "numpy", "pillow", "tqdm"],
    extras_require={"test": ["pytest", "pytest-benchmark", "triton", "onnx", "onnxruntime", "onnxscript"]},
    entry_points={"console_scripts": ["semgan=semgan_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
