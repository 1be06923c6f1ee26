"""Ahead-of-time compilation of the Triton forward kernels to PTX, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` lowers a ``@triton.jit``
kernel for a given compute capability on any machine (Triton bundles ptxas). The PTX and the launch
metadata (kernel name, num_warps, shared memory) are what a TensorRT AOT plugin (QDP ``aot_impl``)
or a C++ launcher needs. Specializations are fixed here: fp16 storage, fp32 accumulation,
the LGGAN layer geometries (onehot_conv 3x3 zero-padded with bias; class_conv 7x7 reflect + tanh).

Must run with ``TRITON_INTERPRET`` unset: under the interpreter ``@triton.jit`` returns interpreted
functions, which the compiler cannot lower. ``python -m semgan_fast.export.aot --out DIR`` writes
``<kernel>_sm<arch>.ptx`` and ``.json`` (metadata) per kernel and architecture.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


def _specs():
    """name -> (module, kernel attribute, signature {arg: type}, constexprs {arg: value}, num_warps)."""
    import triton.language as tl

    onehot_sig = {"lab_ptr": "*i32", "extra_ptr": "*fp16", "wt_ptr": "*fp16", "we_ptr": "*fp16",
                  "bias_ptr": "*fp16", "out_ptr": "*fp16"}
    onehot_sig.update({n: "i32" for n in ("H", "W", "Ho", "Wo", "K", "E", "O", "stride", "pad")})
    onehot_const = {"KS": 3, "REFLECT": False, "HAS_BIAS": True, "BLOCK_P": 64, "BLOCK_O": 128, "ACC": tl.float32}
    cc_sig = {"x_ptr": "*fp16", "lab_ptr": "*i32", "w_ptr": "*fp16", "b_ptr": "*fp16", "pres_ptr": "*i8",
              "out_ptr": "*fp16"}
    cc_sig.update({n: "i32" for n in ("C", "H", "W", "K", "O", "n_tw", "n_tiles_img")})
    cc_const = {"KS": 7, "REFLECT": 1, "TANH": 1, "HAS_BIAS": 1, "TH": 8, "TW": 16, "TPC": 1, "BLOCK_C": 64,
                "BLOCK_O": 16, "ACC": tl.float32, "DOT": tl.float16}
    return {
        "onehot_conv_fwd": ("semgan_fast.kernels.onehot_conv", "_onehot_conv_fwd_kernel", onehot_sig, onehot_const, 4),
        "class_conv_fwd": ("semgan_fast.kernels.class_conv", "_cc_fwd_kernel", cc_sig, cc_const, 4),
    }


KERNELS = ("onehot_conv_fwd", "class_conv_fwd")


def compile_kernel(name: str, arch: int = 90) -> dict:
    """Compiles one kernel for sm_<arch>. Returns {"ptx": str, "name", "num_warps", "shared", "arch",
    "target"}. Raises ValueError when the kernel's arguments no longer match the specification."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET unset (the interpreter replaces @triton.jit)")
    import triton
    from triton.backends.compiler import GPUTarget

    specs = _specs()
    if name not in specs:
        raise ValueError(f"kernel must be one of {sorted(specs)}, got {name!r}")
    module, attr, signature, constexprs, num_warps = specs[name]
    kernel = getattr(importlib.import_module(module), attr)
    expected = list(signature) + list(constexprs)
    if list(kernel.arg_names) != expected:
        raise ValueError(f"{module}.{attr} arguments changed: kernel has {list(kernel.arg_names)}, "
                         f"the AOT specification expects {expected}")
    full_sig = dict(signature)
    full_sig.update({k: "constexpr" for k in constexprs})
    src = triton.compiler.ASTSource(fn=kernel, signature=full_sig, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    meta = compiled.metadata
    return {"ptx": compiled.asm["ptx"], "name": meta.name, "num_warps": meta.num_warps, "shared": meta.shared,
            "arch": arch, "kernel": name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (80 90)")
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in args.kernels:
        for arch in args.arch:
            result = compile_kernel(name, arch)
            stem = os.path.join(args.out, f"{name}_sm{arch}")
            with open(stem + ".ptx", "w") as f:
                f.write(result.pop("ptx"))
            with open(stem + ".json", "w") as f:
                json.dump(result, f, indent=1)
            print(f"{stem}.ptx: entry {result['name']}, {result['num_warps']} warps, {result['shared']} B shared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
