#!/usr/bin/env bash
# GPU validation in stages, each sized to fit one 10-minute command on a lent GPU machine (run from the
# repository root with the machine's own python3, which holds a CUDA build of torch and Triton):
#
#   scripts/gpu_validate.sh build              # editable install building the CUDA extension + import check
#   scripts/gpu_validate.sh test [PYTEST ARGS] # the suites with GPU paths (CUDA ext, Triton, models, export)
#   scripts/gpu_validate.sh sanitize           # compute-sanitizer memcheck + racecheck on the CUDA/Triton tests
#   scripts/gpu_validate.sh bench [OPS]        # semgan bench suite (issue shapes) for a comma list of ops
#   scripts/gpu_validate.sh e2e                # end-to-end training step and inference benchmarks
#   scripts/gpu_validate.sh profile OP         # ncu summary of one op's benchmark (small repetition count)
#
# Everything written goes under $OUT (default bench/results/gpu_run): logs, pytest JUnit XML, benchmark
# JSON (then `semgan bench report --write-readme` on the committed JSON renders the README tables).
# The stages are independent but `build` must run first on a fresh machine (the others import the
# extension when it exists and test the Triton paths either way).
set -uo pipefail

STAGE="${1:-}"
shift || true
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/bench/results/gpu_run}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$REPO"
export PYTHONPATH="$REPO:${PYTHONPATH:-}"
unset TRITON_INTERPRET

device_name() {
  "$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))" 2>/dev/null || echo unknown
}

# The package maps kernels/ and export/ into semgan_fast (setup.py package_dir); an editable install
# without dependencies keeps the machine's own torch and Triton.
ensure_installed() {
  "$PY" -c "import semgan_fast.kernels, semgan_fast.export" 2>/dev/null && return 0
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || {
    echo "pip install failed (see $OUT/install.log)"; tail -20 "$OUT/install.log"; return 1; }
}

GPU_TESTS=(tests/test_cuda_ext.py tests/test_class_conv.py tests/test_class_stack.py tests/test_onehot_conv.py
           tests/test_class_pool.py tests/test_class_l1.py tests/test_pixel_contrast_loss.py
           tests/test_pair_similarity_loss.py tests/test_sample_anchors.py tests/test_models.py
           tests/test_ecgan.py tests/test_trainer.py tests/test_export_onnx.py tests/test_trt_plugin.py)

case "$STAGE" in
  build)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
    start=$SECONDS
    ensure_installed || exit 1
    "$PY" -c "
import torch, triton, semgan_fast
from semgan_fast.ops import _cuda
print('torch', torch.__version__, 'triton', triton.__version__, 'device', torch.cuda.get_device_name())
print('cuda extension available:', _cuda.cuda_ext_available())
" | tee "$OUT/build.txt"
    echo "build stage: $((SECONDS - start)) s"
    ;;
  test)
    ensure_installed || exit 1
    "$PY" -m pytest -q -p no:cacheprovider --benchmark-disable --junitxml="$OUT/tests.xml" \
      -o junit_family=xunit2 "${@:-${GPU_TESTS[@]}}" 2>&1 | tee "$OUT/tests.log" | tail -40
    ;;
  sanitize)
    ensure_installed || exit 1
    # memcheck over the GPU tests of the kernels (CUDA extension + Triton); racecheck over the CUDA ext.
    for tool in memcheck racecheck; do
      tests=(tests/test_cuda_ext.py)
      [[ $tool == memcheck ]] && tests+=(tests/test_class_conv.py tests/test_class_stack.py tests/test_onehot_conv.py)
      compute-sanitizer --tool "$tool" --error-exitcode 99 --log-file "$OUT/sanitizer_$tool.log" \
        "$PY" -m pytest -q -p no:cacheprovider --benchmark-disable -k "gpu or cuda" "${tests[@]}" \
        >"$OUT/sanitizer_${tool}_pytest.log" 2>&1
      echo "compute-sanitizer $tool: exit $? (log $OUT/sanitizer_$tool.log)"
      grep -E "ERROR SUMMARY|========= (Invalid|Race)" "$OUT/sanitizer_$tool.log" | head -5
    done
    ;;
  bench)
    ensure_installed || exit 1
    ops="${1:-class_conv,dense_conv7x7,class_stack,onehot_conv}"
    name="$(device_name)"
    "$PY" bench/suite.py --ops "$ops" --out "$OUT/${name}_${ops//,/_}.json" 2>&1 | tee "$OUT/bench_${ops//,/_}.log" | tail -40
    ;;
  e2e)
    ensure_installed || exit 1
    name="$(device_name)"
    "$PY" bench/suite.py --ops none --e2e --out "$OUT/${name}_e2e.json" 2>&1 | tee "$OUT/bench_e2e.log" | tail -40
    ;;
  profile)
    ensure_installed || exit 1
    op="${1:?profile needs an op name, e.g. class_conv}"
    ncu --target-processes all --print-summary per-kernel --launch-count 50 \
      "$PY" "bench/bench_$op.py" --rep 5 --warmup 1 --no-compile --out "$OUT/ncu_$op.json" \
      >"$OUT/ncu_$op.txt" 2>&1
    echo "ncu exit $? -> $OUT/ncu_$op.txt"; tail -30 "$OUT/ncu_$op.txt"
    ;;
  *)
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac
