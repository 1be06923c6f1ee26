#!/usr/bin/env bash
# Optional, manual check that the CUDA extension and the CMake build compile on a machine WITHOUT a
# GPU (not run in CI: it installs torch 2.14.1+cu130, ~5.5 GB, and compiles for minutes).
#
#   scripts/check_cuda_build.sh [--venv DIR] [--keep] [--skip-cmake] [--arch "9.0"]
#
# Steps:
#  1. a venv with the CUDA build of torch (reused when --venv points to an existing one);
#  2. a copy of the repository in a temporary directory (the working tree's build/ and .so files
#     are left alone), `setup.py build_ext --inplace` (semgan_fast._C), import check of the module;
#  3. the CMake build (pip cmake 4.x; system cmake 3.25 rejects C++20 CUDA) of the torch-free
#     `semgan_kernels` library and the extension module.
# Prints the wall time of each step. Needs nvcc (CUDA 13.0) at $CUDA_HOME (default /usr/local/cuda).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=""
KEEP=0
SKIP_CMAKE=0
ARCH="${TORCH_CUDA_ARCH_LIST:-9.0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --skip-cmake) SKIP_CMAKE=1; shift ;;
    --arch) ARCH="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
  echo "nvcc not found at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi
WORK="$(mktemp -d /tmp/semgan_cuda_build.XXXXXX)"
cleanup() { if [[ $KEEP -eq 0 ]]; then rm -rf "$WORK"; else echo "kept $WORK"; fi; }
trap cleanup EXIT
if [[ -z "$VENV" ]]; then VENV="$WORK/venv"; fi

step() { echo; echo "=== $*"; }
timed() { local t0=$SECONDS; "$@"; echo "--- $(( SECONDS - t0 )) s: $*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  step "venv with torch 2.14.1 (CUDA 13.0 build) at $VENV"
  timed python3 -m venv "$VENV"
  timed "$VENV/bin/pip" install -q torch==2.14.1 numpy pybind11 ninja setuptools cmake
fi
PY="$VENV/bin/python"
"$PY" -c "import torch; assert torch.version.cuda, 'need a CUDA build of torch'; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
SP="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"

step "copy of the repository"
SRC="$WORK/src"
mkdir -p "$SRC"
tar -C "$REPO" --exclude=.venv --exclude=.git --exclude=build --exclude='*.so' -cf - . | tar -C "$SRC" -xf -

step "setup.py build_ext --inplace (TORCH_CUDA_ARCH_LIST=$ARCH)"
(cd "$SRC" && TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-2}" timed "$PY" setup.py build_ext --inplace)
(cd "$SRC" && "$PY" - <<'PYEOF'
import glob, importlib.util, sys
import torch  # loads libc10 / libtorch, which the extension links against
so = glob.glob("semgan_fast/_C*.so")
assert so, "semgan_fast/_C*.so was not produced"
spec = importlib.util.spec_from_file_location("semgan_fast._C", so[0])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
names = ["class_conv_forward", "class_conv_backward", "onehot_conv_forward", "onehot_conv_backward"]
missing = [n for n in names if not hasattr(mod, n)]
assert not missing, f"missing functions: {missing}"
try:  # CPU tensors must be refused by the argument checks (no GPU needed)
    mod.class_conv_forward(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int32),
                           torch.zeros(1, 1, 1, 3, 3), None, "zeros", "none")
except RuntimeError as exc:
    assert "x must be a CUDA tensor" in str(exc), exc
else:
    sys.exit("expected a RuntimeError for CPU tensors")
print("extension OK:", so[0])
PYEOF
)

if [[ $SKIP_CMAKE -eq 0 ]]; then
  step "CMake build (semgan_kernels + semgan_fast_C)"
  CMAKE="$VENV/bin/cmake"
  (cd "$SRC" && TORCH_CUDA_ARCH_LIST="$ARCH" timed "$CMAKE" -S . -B build-cmake -G Ninja \
      -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" \
      -DCMAKE_PREFIX_PATH="$SP/torch/share/cmake" \
      -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCUDAToolkit_ROOT="$CUDA_HOME" \
      -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCMAKE_CUDA_ARCHITECTURES="${ARCH//./}" \
      -DPython3_EXECUTABLE="$PY" -DNV_PIP_INCLUDE="$SP/nvidia/cu13/include" \
      -DCUDA_nvrtc_LIBRARY="$SP/nvidia/cu13/lib/libnvrtc.so.13")
  (cd "$SRC" && timed "$CMAKE" --build build-cmake -j "${MAX_JOBS:-2}")
  ls -la "$SRC"/build-cmake/libsemgan_kernels.a "$SRC"/build-cmake/semgan_fast/_C*.so
  (cd "$SRC/build-cmake" && "$PY" -c "
import glob, importlib.util, torch
so = glob.glob('semgan_fast/_C*.so')[0]
spec = importlib.util.spec_from_file_location('semgan_fast._C', so)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
assert all(hasattr(mod, n) for n in ('class_conv_forward', 'class_conv_backward', 'onehot_conv_forward', 'onehot_conv_backward'))
print('CMake extension OK:', so)
")
fi
echo; echo "CUDA build check passed"
