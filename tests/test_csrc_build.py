"""Build and CPU-emulation tests of the torch-free CUDA kernels in ``csrc/``.

1. Plain nvcc (no torch): the per-dtype kernel translation units compile for sm_90 (PTX, fp32) and
   compute_80 (host object with embedded PTX, bf16), and contain every expected kernel; the C ABI
   unit compiles and exports the ``semgan_*`` entry points. Skipped without nvcc. (SASS for all
   dtypes, through ptxas: scripts/check_cuda_build.sh, not run in CI.)
2. CPU emulation: the same kernel source compiled by the host C++ compiler with
   ``-DSEMGAN_EMULATE`` (csrc/sg_emulate.h: one OS thread per CUDA thread, std::barrier for
   __syncthreads, shared memory poisoned with NaN before every block) and called through the C ABI
   with ctypes on CPU tensors. Compared with ``class_conv_reference`` and a literal
   one_hot + cat + pad + conv2d reference, forward and backward (autograd of the reference), in
   fp64 (tight tolerance), fp32, fp16 and bf16. This runs the real kernel code, including tiling, halos,
   reflect preimages, chunk tails and the deterministic reductions, on machines without a GPU.
   Skipped without g++ or the CUDA headers. SEMGAN_EMU_LIB=<path> uses a prebuilt emulation
   library instead, e.g. one built with -fsanitize=address (run pytest with
   LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0) to catch
   out-of-bounds global or shared-memory accesses, or with -fsanitize=thread (libtsan.so) to catch
   shared-memory races between emulated threads (ASan: all emulated cases clean; TSan: the fp64
   cases clean, and an injected missing barrier is reported).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semgan_fast.ops.class_conv import class_conv_reference
from semgan_fast.ops.onehot_conv import onehot_conv_reference

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def _cuda_root() -> Path | None:
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and (Path(cand) / "bin" / "nvcc").is_file():
            return Path(cand)
    nvcc = shutil.which("nvcc")
    return Path(os.path.realpath(nvcc)).parents[1] if nvcc else None


def _cuda_include(root: Path | None) -> Path | None:
    for inc in ([root / "include"] if root else []) + [Path("/usr/local/cuda/include")]:
        if (inc / "cuda_fp16.h").is_file():
            return inc
    return None


CUDA_ROOT = _cuda_root()
NVCC = None if CUDA_ROOT is None else str(CUDA_ROOT / "bin" / "nvcc")
CUDA_INCLUDE = _cuda_include(CUDA_ROOT)
CXX = shutil.which("g++")

# Compiling is the slow part of this file (~10-20 s CPU per unit); still run by default.
pytestmark = pytest.mark.slow

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME)")
needs_emu = pytest.mark.skipif(CXX is None or CUDA_INCLUDE is None or sys.platform != "linux",
                               reason="CPU emulation needs Linux, g++ (C++20) and the CUDA headers (cuda_fp16.h)")

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

# Kernel families every per-dtype unit must contain (mangled names contain these identifiers).
CLASS_CONV_KS = (1, 3, 5, 7)


def _expected_kernels(dtype_token: str) -> list[str]:
    """Substrings of the mangled kernel names for one dtype (Itanium mangling of the template args)."""
    names = []
    for ks in CLASS_CONV_KS:
        for ob in (1, 2, 3, 4):
            names.append(f"class_conv_fwd_kernelI{dtype_token}Li{ks}ELi{ob}E")
            names.append(f"class_conv_dw_kernelI{dtype_token}Li{ks}ELi{ob}E")
        names.append(f"class_conv_dx_kernelI{dtype_token}Li{ks}EE")
    names += [f"class_conv_dw_reduce_kernelI{dtype_token}E", f"onehot_fwd_kernelI{dtype_token}E",
              f"onehot_dw_kernelI{dtype_token}E", f"onehot_dw_reduce_kernelI{dtype_token}E",
              f"onehot_weight_table_kernelI{dtype_token}E", f"plane_sum_partial_kernelI{dtype_token}E",
              f"plane_sum_final_kernelI{dtype_token}E", "class_conv_tile_mask_kernelIvE"]
    names += [f"onehot_dextra_kernelI{dtype_token}Li{et}E" for et in (1, 2, 4)]
    return names


def _run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"command failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


# ---------------------------------------------------------------------------------------------
# 1. nvcc builds (two compiles run concurrently: they are the slow part of this file)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nvcc_outputs(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found")
    out = tmp_path_factory.mktemp("nvcc")
    jobs = {
        "ptx90_f32": [NVCC, "-std=c++17", "-arch=sm_90", "-ptx", str(CSRC / "kernels_f32.cu"),
                      "-o", str(out / "f32_sm90.ptx")],
        # PTX for compute_80 embedded in a host object (no ptxas: halves the time; the full
        # sm_80/sm_90 SASS build is scripts/check_cuda_build.sh).
        "obj80_bf16": [NVCC, "-std=c++17", "-gencode", "arch=compute_80,code=compute_80", "-c",
                       str(CSRC / "kernels_bf16.cu"), "-o", str(out / "bf16_sm80.o")],
    }
    procs = {k: subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k, v in jobs.items()}
    results = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[key] = (proc.returncode, stdout + stderr)
    return out, results


@needs_nvcc
def test_nvcc_ptx_sm90_has_all_fp32_kernels(nvcc_outputs):
    out, results = nvcc_outputs
    rc, log = results["ptx90_f32"]
    assert rc == 0, log
    ptx = (out / "f32_sm90.ptx").read_text()
    assert ".target sm_90" in ptx
    entries = re.findall(r"\.entry\s+(\S+?)\(", ptx)
    for name in _expected_kernels("f"):
        assert any(name in e for e in entries), f"kernel {name} missing from the sm_90 PTX"
    assert len(entries) == len(set(entries)), "a kernel is defined twice"
    # Only float instantiations in this unit (the other dtypes live in their own units).
    assert not any(re.search(r"kernelI(d|6__half|13__nv_bfloat16)[LE]", e) for e in entries)


@needs_nvcc
def test_nvcc_object_compute80_has_all_bf16_kernels(nvcc_outputs):
    out, results = nvcc_outputs
    rc, log = results["obj80_bf16"]
    assert rc == 0, log
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    symbols = _run([nm, "-C", "--defined-only", str(out / "bf16_sm80.o")]).stdout
    raw = _run([nm, "--defined-only", str(out / "bf16_sm80.o")]).stdout
    assert "semgan::kern::classconv::forward<__nv_bfloat16>" in symbols
    assert "semgan::kern::onehot::backward<__nv_bfloat16>" in symbols
    for name in _expected_kernels("13__nv_bfloat16"):
        assert name in raw, f"kernel stub {name} missing from the compute_80 object"


@needs_nvcc
def test_nvcc_c_abi_unit_exports_entry_points(tmp_path):
    obj = tmp_path / "abi.o"
    _run([NVCC, "-std=c++17", "-arch=sm_80", "-c", str(CSRC / "kernels_instantiate.cu"), "-o", str(obj)])
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    syms = _run([nm, str(obj)]).stdout
    for fn in ("semgan_class_conv_forward", "semgan_class_conv_backward", "semgan_class_conv_backward_workspace_size",
               "semgan_onehot_conv_forward", "semgan_onehot_conv_backward",
               "semgan_onehot_conv_forward_workspace_size", "semgan_onehot_conv_backward_workspace_size"):
        assert re.search(rf"\bT {fn}\b", syms), f"{fn} not defined by the C ABI unit"
    # The ABI unit instantiates no kernels itself (extern templates): it refers to the dtype units.
    assert re.search(r"\bU \S*classconv7forwardIfE", syms)


# ---------------------------------------------------------------------------------------------
# 2. CPU emulation of the real kernel source
# ---------------------------------------------------------------------------------------------

EMU_UNITS = ("kernels_instantiate.cu", "kernels_f32.cu", "kernels_f16.cu", "kernels_bf16.cu", "kernels_f64.cu")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    if CXX is None or CUDA_INCLUDE is None or sys.platform != "linux":
        pytest.skip("emulation needs Linux, g++ and the CUDA headers")
    prebuilt = os.environ.get("SEMGAN_EMU_LIB")  # e.g. an -fsanitize=address build (see module docstring)
    if prebuilt:
        return _bind_emu(ctypes.CDLL(prebuilt))
    out = tmp_path_factory.mktemp("emu")
    flags = ["-std=c++20", "-O0", "-pthread", "-fPIC", "-DSEMGAN_EMULATE", "-x", "c++", f"-I{CUDA_INCLUDE}",
             f"-I{CSRC}", "-Wall", "-Wno-unknown-pragmas"]
    procs = []
    for unit in EMU_UNITS:
        obj = out / (unit + ".o")
        procs.append((unit, obj, subprocess.Popen([CXX, *flags, "-c", str(CSRC / unit), "-o", str(obj)],
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for unit, _, proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"emulation build of {unit} failed:\n{stdout}\n{stderr}"
        ours = [ln for ln in stderr.splitlines() if "warning" in ln and str(CSRC) in ln]
        assert not ours, f"warnings in csrc/ building {unit}:\n{stderr}"
    lib_path = out / "libsemgan_emu.so"
    _run([CXX, "-shared", "-pthread", *[str(o) for _, o, _ in procs], "-o", str(lib_path)])
    return _bind_emu(ctypes.CDLL(str(lib_path)))


def _bind_emu(lib):
    i64, vp, ci, sz = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    lib.semgan_class_conv_forward.argtypes = [ci, vp, vp, vp, vp, vp] + [i64] * 7 + [ci, ci, vp]
    lib.semgan_class_conv_backward_workspace_size.argtypes = [ci] + [i64] * 7
    lib.semgan_class_conv_backward_workspace_size.restype = sz
    lib.semgan_class_conv_backward.argtypes = [ci, vp, vp, vp, vp, vp, vp, vp, vp] + [i64] * 7 + [ci, ci, vp, sz, vp]
    lib.semgan_onehot_conv_forward_workspace_size.argtypes = [ci] + [i64] * 9 + [ci]
    lib.semgan_onehot_conv_forward_workspace_size.restype = sz
    lib.semgan_onehot_conv_forward.argtypes = [ci, vp, vp, vp, vp, vp] + [i64] * 9 + [ci, vp, sz, vp]
    lib.semgan_onehot_conv_backward_workspace_size.argtypes = [ci] + [i64] * 9 + [ci]
    lib.semgan_onehot_conv_backward_workspace_size.restype = sz
    lib.semgan_onehot_conv_backward.argtypes = [ci, vp, vp, vp, vp, vp, vp, vp] + [i64] * 9 + [ci, vp, sz, vp]
    lib.semgan_class_conv_supported.argtypes = [i64]
    return lib


def _p(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def emu_class_conv_forward(lib, x, labels, weight, bias, padding_mode, activation):
    B, C, H, W = x.shape
    K, O, _, ks, _ = weight.shape
    out = torch.full((B, K, O, H, W), float("nan"), dtype=x.dtype)
    rc = lib.semgan_class_conv_forward(DTYPE_CODE[x.dtype], _p(x), _p(labels), _p(weight), _p(bias), _p(out),
                                       B, C, H, W, K, O, ks, int(padding_mode == "reflect"),
                                       int(activation == "tanh"), None)
    assert rc == 0, f"semgan_class_conv_forward returned {rc}"
    return out


def emu_class_conv_backward(lib, grad_out, x, labels, weight, bias, out, padding_mode, activation):
    B, C, H, W = x.shape
    K, O, _, ks, _ = weight.shape
    code = DTYPE_CODE[x.dtype]
    nbytes = lib.semgan_class_conv_backward_workspace_size(code, B, C, H, W, K, O, ks)
    assert nbytes > 0
    ws = torch.full((nbytes,), 0xA5, dtype=torch.uint8)  # garbage: the kernels must not rely on zeroed memory
    dx = torch.full_like(x, float("nan"))
    dw = torch.full_like(weight, float("nan"))
    db = None if bias is None else torch.full_like(bias, float("nan"))
    rc = lib.semgan_class_conv_backward(code, _p(grad_out), _p(x), _p(labels), _p(weight), _p(out), _p(dx), _p(dw),
                                        _p(db), B, C, H, W, K, O, ks, int(padding_mode == "reflect"),
                                        int(activation == "tanh"), _p(ws), nbytes, None)
    assert rc == 0, f"semgan_class_conv_backward returned {rc}"
    return dx, dw, db


def _onehot_dims(labels, extra, weight):
    B, H, W = labels.shape
    E = 0 if extra is None else extra.shape[1]
    O, KE, ks, _ = weight.shape
    return B, H, W, KE - E, E, O, ks


def emu_onehot_forward(lib, labels, extra, weight, bias, stride, padding, padding_mode):
    B, H, W, K, E, O, ks = _onehot_dims(labels, extra, weight)
    reflect = int(padding_mode == "reflect")
    code = DTYPE_CODE[weight.dtype]
    nbytes = lib.semgan_onehot_conv_forward_workspace_size(code, B, H, W, K, E, O, ks, stride, padding, reflect)
    assert nbytes > 0
    ws = torch.full((nbytes,), 0xA5, dtype=torch.uint8)
    ho, wo = (H + 2 * padding - ks) // stride + 1, (W + 2 * padding - ks) // stride + 1
    out = torch.full((B, O, ho, wo), float("nan"), dtype=weight.dtype)
    rc = lib.semgan_onehot_conv_forward(code, _p(labels), _p(extra), _p(weight), _p(bias), _p(out), B, H, W, K, E, O,
                                        ks, stride, padding, reflect, _p(ws), nbytes, None)
    assert rc == 0, f"semgan_onehot_conv_forward returned {rc}"
    return out


def emu_onehot_backward(lib, grad_out, labels, extra, weight, stride, padding, padding_mode, need_extra):
    B, H, W, K, E, O, ks = _onehot_dims(labels, extra, weight)
    reflect = int(padding_mode == "reflect")
    code = DTYPE_CODE[weight.dtype]
    nbytes = lib.semgan_onehot_conv_backward_workspace_size(code, B, H, W, K, E, O, ks, stride, padding, reflect)
    assert nbytes > 0
    ws = torch.full((nbytes,), 0xA5, dtype=torch.uint8)
    dw = torch.full_like(weight, float("nan"))
    db = torch.full((O,), float("nan"), dtype=weight.dtype)
    dextra = torch.full_like(extra, float("nan")) if (need_extra and extra is not None) else None
    rc = lib.semgan_onehot_conv_backward(code, _p(grad_out), _p(labels), _p(extra), _p(weight), _p(dw), _p(db),
                                         _p(dextra), B, H, W, K, E, O, ks, stride, padding, reflect, _p(ws), nbytes,
                                         None)
    assert rc == 0, f"semgan_onehot_conv_backward returned {rc}"
    return dw, db, dextra


# ---- references -------------------------------------------------------------------------------

def onehot_reference(labels, extra, weight, bias, stride, padding, padding_mode):
    """``onehot_conv_reference`` in these tests' argument order."""
    return onehot_conv_reference(labels, extra, weight, bias, padding, padding_mode, stride)


def _grads(fn, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_(t is not None and t.is_floating_point()) if t is not None else None
              for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out)
    return out.detach(), [None if t is None else t.grad for t in leaves]


def _labels(B, H, W, K, gen, extra_values=()):
    """Blocky label map (a few regions, so tiles hold 1-3 classes) with sprinkled single pixels."""
    coarse = torch.randint(0, K, (B, (H + 4) // 5, (W + 6) // 7), generator=gen)
    lab = coarse.repeat_interleave(5, 1).repeat_interleave(7, 2)[:, :H, :W].contiguous()
    flat = lab.view(-1)
    idx = torch.randint(0, flat.numel(), (max(1, flat.numel() // 25),), generator=gen)
    flat[idx] = torch.randint(0, K, idx.shape, generator=gen)
    for v in extra_values:  # out-of-range labels
        flat[torch.randint(0, flat.numel(), (3,), generator=gen)] = v
    return lab.to(torch.int32)


def _close(actual, expected, atol, rtol, what):
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten output?)"
    err = (actual.double() - expected.double()).abs().max().item()
    bound = atol + rtol * expected.double().abs().max().item()
    assert err <= bound, f"{what}: max abs error {err:.3e} > {bound:.3e}"


# ---- class_conv --------------------------------------------------------------------------------

CLASS_CONV_CASES = [
    # B, C, H, W, K, O, ks, padding_mode, activation, bias, out-of-range labels
    pytest.param(2, 5, 19, 37, 4, 3, 7, "reflect", "tanh", True, (4, -1), id="k7-reflect-tanh-2x2tiles-oor"),
    pytest.param(1, 17, 9, 11, 3, 5, 3, "zeros", None, False, (), id="k3-zeros-O5-C17-chunktails"),
    pytest.param(1, 3, 4, 5, 2, 2, 7, "reflect", None, True, (), id="k7-reflect-tiny-double-reflection"),
    pytest.param(1, 2, 6, 33, 1, 1, 5, "reflect", "tanh", True, (), id="k5-single-class-everywhere"),
    pytest.param(2, 4, 7, 6, 6, 4, 1, "zeros", "tanh", True, (), id="k1-absent-classes"),
]


@needs_emu
@pytest.mark.parametrize("B,C,H,W,K,O,ks,mode,act,has_bias,oor", CLASS_CONV_CASES)
def test_emulated_class_conv_fp64_matches_reference(emu, B, C, H, W, K, O, ks, mode, act, has_bias, oor):
    gen = torch.Generator().manual_seed(1234 + ks + C)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    labels = _labels(B, H, W, K, gen, oor)
    if K == 1:
        labels.zero_()
    weight = torch.randn(K, O, C, ks, ks, generator=gen, dtype=torch.float64) * 0.3
    bias = torch.randn(K, O, generator=gen, dtype=torch.float64) if has_bias else None
    grad_out = torch.randn(B, K, O, H, W, generator=gen, dtype=torch.float64)

    ref, (dx_ref, _, dw_ref, db_ref) = _grads(
        lambda xx, ll, ww, bb: class_conv_reference(xx, ll, ww, bb, mode, act), [x, labels, weight, bias], grad_out)
    out = emu_class_conv_forward(emu, x, labels, weight, bias, mode, act)
    _close(out, ref, 1e-12, 1e-12, "forward")
    dx, dw, db = emu_class_conv_backward(emu, grad_out, x, labels, weight, bias, out, mode, act)
    _close(dx, dx_ref, 1e-11, 1e-11, "dx")
    _close(dw, dw_ref, 1e-11, 1e-11, "dweight")
    if has_bias:
        _close(db, db_ref, 1e-11, 1e-11, "dbias")
    else:
        assert db is None


@needs_emu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_emulated_class_conv_low_precision(emu, dtype):
    """fp32 accumulation: error vs the fp64 reference within 2x the reference's own low-precision error."""
    B, C, H, W, K, O, ks = 1, 8, 12, 34, 3, 3, 7
    gen = torch.Generator().manual_seed(7)
    x64 = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    labels = _labels(B, H, W, K, gen)
    w64 = torch.randn(K, O, C, ks, ks, generator=gen, dtype=torch.float64) * 0.1
    b64 = torch.randn(K, O, generator=gen, dtype=torch.float64) * 0.1
    g64 = torch.randn(B, K, O, H, W, generator=gen, dtype=torch.float64)
    x, w, b, g = (t.to(dtype) for t in (x64, w64, b64, g64))
    ref64, (dx64, _, dw64, db64) = _grads(
        lambda xx, ll, ww, bb: class_conv_reference(xx, ll, ww, bb, "reflect", "tanh"),
        [x.double(), labels, w.double(), b.double()], g.double())
    # The reference itself run in fp32 (CPU conv has no fp16/bf16 kernels worth trusting for the bound).
    ref_lp = class_conv_reference(x.float(), labels, w.float(), b.float(), "reflect", "tanh").to(dtype)
    out = emu_class_conv_forward(emu, x, labels, w, b, "reflect", "tanh")
    ref_err = (ref_lp.double() - ref64).abs().max().item()
    assert (out.double() - ref64).abs().max().item() <= 2 * ref_err + 1e-5
    dx, dw, db = emu_class_conv_backward(emu, g, x, labels, w, b, out, "reflect", "tanh")
    # Gradients go through the low-precision forward output (tanh derivative 1 - out^2): tolerance
    # from the storage precision of out and of the results.
    eps = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    _close(dx, dx64, 0, 8 * eps, f"dx {dtype}")
    _close(dw, dw64, 0, 8 * eps, f"dweight {dtype}")
    _close(db, db64, 0, 8 * eps, f"dbias {dtype}")


@needs_emu
def test_emulated_class_conv_rejects_unsupported(emu):
    assert emu.semgan_class_conv_supported(7) == 1
    assert emu.semgan_class_conv_supported(9) == 0
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float32)
    out = torch.zeros(1, 1, 1, 4, 4)
    lab = torch.zeros(1, 4, 4, dtype=torch.int32)
    w = torch.zeros(1, 1, 1, 9, 9)
    rc = emu.semgan_class_conv_forward(0, _p(x), _p(lab), _p(w), None, _p(out), 1, 1, 4, 4, 1, 1, 9, 0, 0, None)
    assert rc == 1  # cudaErrorInvalidValue
    rc = emu.semgan_class_conv_forward(0, _p(x), _p(lab), _p(w), None, _p(out), 1, 1, 3, 4, 1, 1, 7, 1, 0, None)
    assert rc == 1  # reflect needs k//2 < H, W (here k//2 = 3 = H)
    rc = emu.semgan_class_conv_forward(9, _p(x), _p(lab), _p(w), None, _p(out), 1, 1, 4, 4, 1, 1, 3, 0, 0, None)
    assert rc == 1  # unknown dtype


# ---- onehot_conv -------------------------------------------------------------------------------

ONEHOT_CASES = [
    # B, H, W, K, E, O, ks, stride, padding, mode, bias, need_extra, out-of-range labels
    pytest.param(2, 13, 37, 5, 2, 20, 3, 1, 1, "zeros", True, True, (), id="k3-s1-zeros-E2-O20"),
    pytest.param(1, 11, 12, 4, 1, 5, 7, 1, 3, "reflect", True, True, (7,), id="k7-reflect-lggan-conv1-oor"),
    pytest.param(2, 10, 9, 3, 0, 17, 4, 2, 2, "zeros", False, False, (), id="k4-s2-p2-discriminator-noextra"),
    pytest.param(1, 9, 8, 6, 3, 4, 3, 2, 1, "reflect", True, True, (), id="k3-s2-reflect-E3"),
    pytest.param(1, 3, 4, 2, 1, 3, 5, 1, 2, "reflect", True, True, (), id="k5-reflect-tiny-double-reflection"),
]


@needs_emu
@pytest.mark.parametrize("B,H,W,K,E,O,ks,stride,padding,mode,has_bias,need_extra,oor", ONEHOT_CASES)
def test_emulated_onehot_conv_fp64_matches_reference(emu, B, H, W, K, E, O, ks, stride, padding, mode, has_bias,
                                                     need_extra, oor):
    gen = torch.Generator().manual_seed(99 + ks + O)
    labels = _labels(B, H, W, K, gen, oor)
    extra = torch.randn(B, E, H, W, generator=gen, dtype=torch.float64) if E else None
    weight = torch.randn(O, K + E, ks, ks, generator=gen, dtype=torch.float64)
    bias = torch.randn(O, generator=gen, dtype=torch.float64) if has_bias else None
    ref = onehot_reference(labels, extra, weight, bias, stride, padding, mode)
    grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref, (_, dextra_ref, dw_ref, db_ref) = _grads(
        lambda ll, ee, ww, bb: onehot_reference(ll, ee, ww, bb, stride, padding, mode),
        [labels, extra, weight, bias], grad_out)
    out = emu_onehot_forward(emu, labels, extra, weight, bias, stride, padding, mode)
    _close(out, ref, 1e-12, 1e-12, "forward")
    dw, db, dextra = emu_onehot_backward(emu, grad_out, labels, extra, weight, stride, padding, mode, need_extra)
    _close(dw, dw_ref, 1e-11, 1e-11, "dweight")
    _close(db, grad_out.sum(dim=(0, 2, 3)), 1e-11, 1e-11, "dbias")
    if need_extra:
        _close(dextra, dextra_ref, 1e-11, 1e-11, "dextra")


@needs_emu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_emulated_onehot_conv_low_precision(emu, dtype):
    B, H, W, K, E, O, ks = 1, 10, 20, 6, 1, 16, 3
    gen = torch.Generator().manual_seed(5)
    labels = _labels(B, H, W, K, gen)
    extra64 = torch.randn(B, E, H, W, generator=gen, dtype=torch.float64)
    w64 = torch.randn(O, K + E, ks, ks, generator=gen, dtype=torch.float64) * 0.2
    b64 = torch.randn(O, generator=gen, dtype=torch.float64)
    extra, w, b = extra64.to(dtype), w64.to(dtype), b64.to(dtype)
    ref64 = onehot_reference(labels, extra.double(), w.double(), b.double(), 1, 1, "zeros")
    ref_lp = onehot_reference(labels, extra.float(), w.float(), b.float(), 1, 1, "zeros").to(dtype)
    out = emu_onehot_forward(emu, labels, extra, w, b, 1, 1, "zeros")
    ref_err = (ref_lp.double() - ref64).abs().max().item()
    assert (out.double() - ref64).abs().max().item() <= 2 * ref_err + 1e-6
    g = torch.randn(ref64.shape, generator=gen, dtype=torch.float64).to(dtype)
    _, (_, dextra64, dw64, db64) = _grads(
        lambda ll, ee, ww, bb: onehot_reference(ll, ee, ww, bb, 1, 1, "zeros"),
        [labels, extra.double(), w.double(), b.double()], g.double())
    dw, db, dextra = emu_onehot_backward(emu, g, labels, extra, w, 1, 1, "zeros", True)
    eps = {torch.float32: 1e-5, torch.float16: 1e-3}[dtype]
    _close(dw, dw64, 0, 4 * eps, f"dweight {dtype}")
    _close(db, db64, 0, 4 * eps, f"dbias {dtype}")
    _close(dextra, dextra64, 0, 4 * eps, f"dextra {dtype}")
