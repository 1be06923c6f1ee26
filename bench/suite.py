"""The benchmark suite: runs the per-op benchmarks (``bench/bench_<op>.py``) and the end-to-end cases
(``bench_e2e.py`` training step, ``bench_export.py`` inference, when present) and merges their JSON
records into one file with the environment block.

Each benchmark script runs in its own process (fresh CUDA context, dynamo state and peak-memory
counters; a crash or timeout costs one op, not the suite) with the common options of
``_harness.parser``: ``--out``, ``--small``, ``--device``, ``--warmup``, ``--rep``, ``--no-compile``,
``--threads``. On a CUDA device the scripts run their issue shapes; without one (or with ``--small``)
their small CPU shapes on the CPU paths, and the record lists what was skipped.
Built-in case ``dense_conv7x7``: one dense 7x7 64->3 conv (reflect pad, tanh) at class_conv's shapes,
the yardstick of the class_conv target "within 2x of one dense conv"; it runs whenever class_conv does.

Output (``--out``, default ``bench/results/<device>.json``; ``cpu.json`` on CPU)::

    {"suite": "semgan bench", "schema": 1, "environment": {...}, "device_type": "cuda"|"cpu",
     "small": bool, "command": "...", "skipped": [...],
     "ops": {"<op>": <that script's JSON: op, environment, results, ...> | {"op", "error", ...}}}

    python bench/suite.py                       # every op (issue shapes on GPU, small on CPU)
    python bench/suite.py --ops class_pool,class_l1 --e2e --out bench/results/h100.json
    python bench/suite.py --builtin dense_conv7x7 --out x.json [--small]   # one built-in case alone
"""
from __future__ import annotations

import argparse
import collections
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
# Order of the known per-op benchmarks; other bench_*.py files found in bench/ run after them.
OP_ORDER = ("class_conv", "dense_conv7x7", "class_stack", "onehot_conv", "class_pool", "class_l1", "sample_anchors",
            "pixel_contrast_loss", "pair_similarity_loss")
E2E_CASES = ("e2e", "export")          # bench_e2e.py (training step), bench_export.py (inference)
BUILTINS = ("dense_conv7x7",)
COMMON_FLAGS = ("--small", "--device", "--warmup", "--rep", "--no-compile", "--threads")
SCHEMA = 1

if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)


# --------------------------------------------------------------------------------------- discovery
def discover(bench_dir: str = BENCH_DIR) -> dict[str, str]:
    """``{case name: script path}`` for every ``bench_<name>.py`` in ``bench_dir``, known ops first,
    then the others, the end-to-end cases last; plus the built-in cases (path = this file)."""
    found = {os.path.basename(p)[len("bench_"):-3]: p for p in glob.glob(os.path.join(bench_dir, "bench_*.py"))}
    order = [n for n in OP_ORDER if n in found or n in BUILTINS]
    order += sorted(n for n in found if n not in OP_ORDER and n not in E2E_CASES)
    order += [n for n in E2E_CASES if n in found]
    return {n: found.get(n, os.path.abspath(__file__)) for n in order}


def select(available: dict[str, str], ops: str | None, e2e: bool) -> list[str]:
    """Case names to run. ``ops``: None/"all" = every op, "none" = no op, else a comma list (unknown
    names raise ValueError). ``e2e`` adds the end-to-end cases. class_conv brings dense_conv7x7."""
    op_names = [n for n in available if n not in E2E_CASES]
    if ops in (None, "", "all"):
        chosen = list(op_names)
    elif ops == "none":
        chosen = []
    else:
        chosen = [s.strip() for s in ops.split(",") if s.strip()]
        unknown = [n for n in chosen if n not in available]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; available: {', '.join(available)}")
        if "class_conv" in chosen and "dense_conv7x7" in available and "dense_conv7x7" not in chosen:
            chosen.append("dense_conv7x7")
    if e2e:
        chosen += [n for n in E2E_CASES if n in available and n not in chosen]
    return [n for n in available if n in chosen]  # discovery order


# ------------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device_type: str, threads: int | None = None) -> dict:
    """Environment block: device name (GPU name, or the CPU model from /proc/cpuinfo), driver, CUDA,
    torch and triton versions, git commit (+ whether the tree had local changes), timestamp."""
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = {"device": torch.cuda.get_device_name(0), "device_memory_bytes": props.total_memory,
                  "sm_count": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}
    else:
        device = {"device": cpu_model()}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {**device, "device_type": device_type, "driver": nvidia_driver() if device_type == "cuda" else None,
            "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads or torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def device_slug(env: dict) -> str:
    """File stem for the results of a device: ``cpu`` or the GPU name in lower-case words."""
    if env["device_type"] != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-") or "gpu"


# ----------------------------------------------------------------------------------------- running
def _supports_common_flags(path: str) -> bool:
    """True when the script builds its parser with ``_harness.parser`` (the common options)."""
    with open(path) as f:
        src = f.read()
    return "_harness" in src and ".parser(" in src


def _help_flags(path: str) -> set[str]:
    out = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, timeout=300,
                         cwd=REPO_ROOT)
    return set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))


def command_for(name: str, path: str, out: str, opts: dict, extra: list[str]) -> list[str]:
    """The command line that runs case ``name`` writing its JSON to ``out``."""
    cmd = [sys.executable, path]
    if name in BUILTINS:
        cmd += ["--builtin", name]
    cmd += ["--out", out]
    supported = set(COMMON_FLAGS) if name in BUILTINS or _supports_common_flags(path) else _help_flags(path)
    values = {"--small": opts.get("small"), "--device": opts.get("device"), "--warmup": opts.get("warmup"),
              "--rep": opts.get("rep"), "--no-compile": opts.get("no_compile"), "--threads": opts.get("threads")}
    for flag, value in values.items():
        if value is None or value is False or flag not in supported:  # 0 is a value (e.g. --warmup 0)
            continue
        cmd += [flag] if value is True else [flag, str(value)]
    return cmd + list(extra)


def run_case(name: str, cmd: list[str], timeout: float, out: str, echo: bool = True) -> dict:
    """Runs one benchmark process; returns its JSON payload (plus wall time) or an error record."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if echo:
                print(f"  [{name}] {line}", end="", flush=True)
        rc = proc.wait()
    finally:
        timer.cancel()
    wall = time.perf_counter() - start
    timed_out = wall >= timeout and rc != 0
    shown = [os.path.relpath(c, REPO_ROOT) if os.path.isabs(c) and c.startswith(REPO_ROOT) else c for c in cmd]
    shown[0] = "python"
    shown = ["OUT.json" if c == out else c for c in shown]  # the temporary path means nothing later
    meta = {"command": " ".join(shlex.quote(c) for c in shown), "wall_s": round(wall, 1), "returncode": rc}
    if os.path.isfile(out):
        try:
            with open(out) as f:
                payload = json.load(f)
            payload.update(meta)
            return payload
        except (OSError, json.JSONDecodeError) as exc:
            meta["error"] = f"unreadable JSON: {exc}"
    meta.setdefault("error", f"timed out after {timeout:.0f} s" if timed_out else f"exit code {rc}, no JSON written")
    return {"op": name, **meta, "output_tail": "\n".join(tail)}


def skipped_notes(record: dict, available) -> list[str]:
    """What the record leaves out, derived from the cases it holds (also after --merge)."""
    notes = []
    ops = record["ops"]
    if record["device_type"] == "cpu":
        notes.append("no CUDA device: GPU cases skipped (the issue shapes, bf16, the Triton and CUDA backends); "
                     "the small CPU shapes ran on the CPU paths")
    if "e2e" not in ops:
        notes.append("training-step cases not run (semgan bench --e2e)")
    elif record["device_type"] == "cpu":
        notes.append("end-to-end GPU presets (cityscapes, ade20k), bf16, torch.compile and the max batch search "
                     "need a GPU: the synthetic preset ran instead")
    if "export" not in ops:
        notes.append("bench_export.py not found: inference cases not run" if "export" not in available
                     else "inference cases not run (semgan bench --e2e)")
    return notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="semgan benchmark suite (see module docstring)")
    p.add_argument("--ops", default=None, help="comma list of cases, 'all' (default) or 'none'")
    p.add_argument("--e2e", action="store_true", help="also run the end-to-end cases (training step, inference)")
    p.add_argument("--out", default=None, help="merged JSON (default bench/results/<device>.json)")
    p.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda if available")
    p.add_argument("--small", action="store_true", default=None, help="small shapes (default on CPU)")
    p.add_argument("--issue-shapes", dest="small", action="store_false", help="issue shapes also on CPU")
    p.add_argument("--warmup", type=int, default=None, help="per script (CPU: calls, CUDA: ms; e2e: steps)")
    p.add_argument("--rep", type=int, default=None, help="per script (CPU: calls, CUDA: ms; e2e: steps)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: $OMP_NUM_THREADS if set)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per case (default 3600)")
    p.add_argument("--op-args", action="append", default=[], metavar="OP=ARGS",
                   help="extra arguments for one case, e.g. --op-args 'class_conv=--shapes cityscapes'")
    p.add_argument("--merge", action="store_true",
                   help="keep the other cases of an existing --out record of the same device (re-run some cases)")
    p.add_argument("--list", action="store_true", help="list the cases found and exit")
    p.add_argument("--quiet", action="store_true", help="do not echo the scripts' output")
    p.add_argument("--builtin", default=None, help=argparse.SUPPRESS)
    return p


def parse_op_args(items: list[str], available) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or name not in available:
            raise ValueError(f"--op-args {item!r}: expected OP=ARGS with OP one of {', '.join(available)}")
        out.setdefault(name, []).extend(shlex.split(rest))
    return out


def run_suite(args, argv: list[str] | None = None) -> dict:
    """Runs the selected cases and writes the merged record; returns it."""
    import torch
    available = discover()
    selected = select(available, args.ops, args.e2e)
    extra = parse_op_args(args.op_args, available)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    small = args.small if args.small is not None else device_type == "cpu"
    threads = args.threads or (int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit()
                               else None)
    env = environment(device_type, threads)
    out = args.out or os.path.join(RESULTS_DIR, f"{device_slug(env)}.json")
    print(f"semgan bench: {', '.join(selected) or '(nothing selected)'} on {env['device']} "
          f"({device_type}, {'small' if small else 'issue'} shapes) -> {out}", flush=True)
    opts = {"small": small, "device": device_type, "warmup": args.warmup, "rep": args.rep,
            "no_compile": args.no_compile, "threads": threads}
    command = " ".join(["python bench/suite.py", *map(shlex.quote, argv or [])])
    record = {"suite": "semgan bench", "schema": SCHEMA, "environment": env, "device_type": device_type,
              "small": small, "command": command, "skipped": [], "ops": {}}
    if args.merge:
        merge_previous(record, out)
    with tempfile.TemporaryDirectory(prefix="semgan_bench_") as tmp:
        for name in selected:
            case_out = os.path.join(tmp, f"{name}.json")
            cmd = command_for(name, available[name], case_out, opts, extra.get(name, []))
            print(f"== {name}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
            result = run_case(name, cmd, args.timeout, case_out, echo=not args.quiet)
            record["ops"][name] = result
            record["skipped"] = skipped_notes(record, available)
            status = f"error: {result['error']}" if "error" in result else f"{len(result.get('results', []))} rows"
            print(f"== {name}: {status} ({result['wall_s']} s)", flush=True)
            write_record(out, record)  # after every case: a later crash keeps what was measured
    record["skipped"] = skipped_notes(record, available)
    write_record(out, record)
    for note in record["skipped"]:
        print(f"skipped: {note}")
    print(f"wrote {out}")
    return record


def merge_previous(record: dict, path: str) -> None:
    """Starts ``record`` from the cases of the suite record at ``path`` when it is of the same device
    and shape set (each case keeps its own environment block: timestamp, commit)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        prev = json.load(f)
    same = (prev.get("suite") and prev.get("environment", {}).get("device") == record["environment"]["device"]
            and prev.get("small") == record["small"])
    if not same:
        raise ValueError(f"--merge: {path} is not a suite record of {record['environment']['device']} with the same "
                         f"shape set; choose another --out")
    record["ops"] = dict(prev.get("ops", {}))
    record["earlier_commands"] = [*prev.get("earlier_commands", []), prev.get("command")]


def write_record(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------- built-in: dense conv
def _load_bench_module(name: str):
    path = os.path.join(BENCH_DIR, f"bench_{name}.py")
    spec = importlib.util.spec_from_file_location(f"semgan_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dense_conv7x7_main(argv: list[str]) -> int:
    """One dense conv C->O (7x7 at class_conv's shapes, reflect pad, tanh): fwd and fwd+bwd."""
    import torch
    import torch.nn.functional as F
    import _harness

    p = _harness.parser("dense 7x7 conv yardstick for class_conv")
    p.add_argument("--builtin", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtypes", default=None, help="comma list (default: float32 on CPU, float32,bfloat16 on GPU)")
    args = p.parse_args(argv)
    device = _harness.pick_device(args)
    cc = _load_bench_module("class_conv")
    shapes = cc.SMALL_SHAPES if args.small else cc.GPU_SHAPES
    dtypes = (args.dtypes or ("float32" if device.type == "cpu" else "float32,bfloat16")).split(",")
    seen, rows = set(), []
    for dt_name in dtypes:
        dtype = getattr(torch, dt_name)
        for name, batch, channels, out_ch, _, height, width, kernel in shapes:
            if (batch, channels, out_ch, height, width, kernel, dt_name) in seen:
                continue
            seen.add((batch, channels, out_ch, height, width, kernel, dt_name))
            torch.manual_seed(0)
            x = torch.randn(batch, channels, height, width, device=device, dtype=dtype)
            w = (torch.randn(out_ch, channels, kernel, kernel, device=device) / (channels * kernel)).to(dtype)
            b = (0.1 * torch.randn(out_ch, device=device)).to(dtype)
            grad = torch.randn(batch, out_ch, height, width, device=device, dtype=dtype)
            leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
            pad = kernel // 2

            def conv(x_, w_, b_):
                return torch.tanh(F.conv2d(F.pad(x_, (pad,) * 4, mode="reflect"), w_, b_))

            pixels = batch * height * width
            flops = 2.0 * kernel * kernel * channels * out_ch * pixels
            elt = x.element_size()
            nbytes = pixels * (channels + out_ch) * elt + w.numel() * elt
            for mode in ("fwd", "fwd+bwd"):
                if mode == "fwd":
                    def call():
                        with torch.no_grad():
                            return conv(x, w, b)
                    grads, fl, nb = None, flops, nbytes
                else:
                    def call():
                        conv(*leaves).backward(grad)
                    grads, fl, nb = leaves, 3 * flops, 3 * nbytes
                rows.append(_harness.measure(call, device, args, grad_to_none=grads, flops=fl, nbytes=nb,
                                             shape=name, B=batch, C=channels, O=out_ch, H=height, W=width,
                                             k=kernel, dtype=dt_name, mode=mode, provider="dense_conv"))
    _harness.write_json(args.out, "dense_conv7x7", device, rows, padding_mode="reflect", activation="tanh",
                        note="yardstick for class_conv: one dense conv over x, no per-class work")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--builtin" in argv:
        name = argv[argv.index("--builtin") + 1]
        if name != "dense_conv7x7":
            raise SystemExit(f"unknown built-in case {name!r}")
        return dense_conv7x7_main(argv)
    args = build_parser().parse_args(argv)
    if args.list:
        for name, path in discover().items():
            print(f"{name:24s} {os.path.relpath(path, REPO_ROOT)}" + ("  (built-in)" if name in BUILTINS else ""))
        return 0
    record = run_suite(args, argv)
    failed = [n for n, r in record["ops"].items() if "error" in r]
    if failed:
        print(f"cases that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
