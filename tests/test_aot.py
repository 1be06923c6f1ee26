"""Triton kernels compiled ahead of time to PTX without a GPU (semgan_fast.export.aot).

onehot_conv's forward for sm_80 and sm_90 and class_conv's forward for sm_90 (fp16 storage, fp32
accumulation): the PTX declares the kernel entry and the target, and the launch metadata (name,
warps, shared memory) is what a TensorRT AOT plugin needs. Runs in a subprocess with
TRITON_INTERPRET unset (under the interpreter @triton.jit kernels cannot be lowered).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json, sys
from semgan_fast.export.aot import compile_kernel
out = [compile_kernel(name, arch) for name, arch in (("onehot_conv_fwd", 80), ("onehot_conv_fwd", 90),
                                                     ("class_conv_fwd", 90))]
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(r["kernel"], r["arch"]): r for r in json.loads(proc.stdout)}


@pytest.mark.parametrize("kernel,arch,entry", [("onehot_conv_fwd", 80, "_onehot_conv_fwd_kernel"),
                                               ("onehot_conv_fwd", 90, "_onehot_conv_fwd_kernel"),
                                               ("class_conv_fwd", 90, "_cc_fwd_kernel")])
def test_ptx_entry_target_and_metadata(compiled, kernel, arch, entry):
    result = compiled[(kernel, arch)]
    ptx = result["ptx"]
    assert re.search(rf"\.visible\s+\.entry\s+{entry}\(", ptx), "kernel entry missing from the PTX"
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    assert target.startswith(f"sm_{arch}")
    assert re.search(r"^\.version\s+\d+\.\d+", ptx, re.M)
    assert result["name"] == entry and result["num_warps"] == 4
    assert isinstance(result["shared"], int) and result["shared"] >= 0


def test_class_conv_forward_uses_tensor_cores(compiled):
    """The fp16 class_conv tile product lowers to MMA instructions on sm_90 (not scalar FMAs)."""
    assert "mma" in compiled[("class_conv_fwd", 90)]["ptx"]


def test_aot_refuses_interpreter_mode(monkeypatch):
    from semgan_fast.export.aot import compile_kernel

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        compile_kernel("onehot_conv_fwd", 90)
