"""``semgan bench`` and ``semgan bench report``: the command-line front of the benchmark suite.

The benchmark code lives in the repository's top-level ``bench/`` directory (it is not installed
with the package), so these commands work from a source checkout with an editable install: the
directory is found next to the package source (``<checkout>/semgan_fast/../bench``), or where
``$SEMGAN_BENCH_DIR`` points, or as ``./bench`` in the current directory.

    semgan bench [--ops class_conv,class_pool] [--e2e] [--out bench/results/<device>.json]
    semgan bench report [--write-readme]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

BENCH_DIR_ENV = "SEMGAN_BENCH_DIR"


class BenchDirNotFound(FileNotFoundError):
    """The repository's bench/ directory (with suite.py and report.py) is not reachable."""


def find_bench_dir() -> str:
    """Path of the checkout's bench/ directory, holding suite.py and report.py."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get(BENCH_DIR_ENV), os.path.join(os.path.dirname(package_dir), "bench"),
                  os.path.join(os.getcwd(), "bench")]
    for path in candidates:
        if path and all(os.path.isfile(os.path.join(path, f)) for f in ("suite.py", "report.py")):
            return os.path.abspath(path)
    raise BenchDirNotFound(
        "semgan bench needs the benchmark directory bench/ of a source checkout (it is not installed with the "
        f"package); looked in: {', '.join(p for p in candidates if p)}. Install the checkout in editable mode "
        f"(pip install -e .), run from the checkout's root, or set {BENCH_DIR_ENV}=/path/to/checkout/bench")


def load_bench_module(name: str, bench_dir: str | None = None):
    """Imports ``bench/<name>.py`` by path (bench/ is not a package)."""
    bench_dir = bench_dir or find_bench_dir()
    path = os.path.join(bench_dir, f"{name}.py")
    module_name = f"semgan_bench_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)  # the scripts import their shared _harness module
    sys.modules[module_name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``bench`` (run the suite) with its sub-command ``report`` to the ``semgan`` sub-parsers."""
    bench = subparsers.add_parser(
        "bench", help="run the benchmark suite (or `semgan bench report`: render the README tables)",
        description="Runs the per-op benchmarks (issue shapes on a GPU, small shapes on the CPU paths otherwise) "
                    "and merges them into one JSON record. `semgan bench report` renders the Markdown tables.")
    bench.add_argument("--ops", default=None, help="comma list of cases, 'all' (default) or 'none'")
    bench.add_argument("--e2e", action="store_true", help="also run the end-to-end training and inference cases")
    bench.add_argument("--out", default=None, help="merged JSON (default: bench/results/<device>.json)")
    bench.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda if available")
    bench.add_argument("--small", action="store_true", default=None, help="small shapes (the default on CPU)")
    bench.add_argument("--issue-shapes", dest="small", action="store_false", help="issue shapes also on CPU")
    bench.add_argument("--warmup", type=int, default=None, help="CPU: calls; CUDA: ms; e2e: steps")
    bench.add_argument("--rep", type=int, default=None, help="CPU: calls; CUDA: ms; e2e: steps")
    bench.add_argument("--no-compile", dest="no_compile", action="store_true",
                       help="skip the torch.compile baselines")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads (default: $OMP_NUM_THREADS)")
    bench.add_argument("--timeout", type=float, default=None, help="seconds per case (default 3600)")
    bench.add_argument("--op-args", dest="op_args", action="append", default=[], metavar="OP=ARGS",
                       help="extra arguments for one case, e.g. 'class_conv=--shapes cityscapes'")
    bench.add_argument("--merge", action="store_true",
                       help="keep the other cases of an existing --out record of the same device")
    bench.add_argument("--list", action="store_true", help="list the benchmark cases and exit")
    bench.add_argument("--quiet", action="store_true", help="do not echo the scripts' output")
    bench.set_defaults(func=cmd_bench, bench_command=None)
    sub = bench.add_subparsers(dest="bench_command")
    report = sub.add_parser("report", help="render the performance tables from bench/results/*.json")
    report.add_argument("--results", default=None, help="directory of JSON records (default bench/results)")
    report.add_argument("--write-readme", dest="write_readme", action="store_true",
                        help="write the tables between <!-- bench:begin --> and <!-- bench:end --> in README.md "
                             "and bench/README.md (prints them where the markers are missing)")
    report.add_argument("--readme", action="append", default=None, help="file(s) to write with --write-readme")
    report.add_argument("--out", default=None, help="also write the Markdown to this file")
    report.set_defaults(func=cmd_bench, bench_command="report")
    return bench


def suite_argv(args) -> list[str]:
    """The ``bench/suite.py`` command line equivalent to parsed ``semgan bench`` arguments."""
    argv: list[str] = []
    for name in ("ops", "out", "device", "warmup", "rep", "threads", "timeout"):
        value = getattr(args, name, None)
        if value is not None:
            argv += [f"--{name}", str(value)]
    for name in ("e2e", "no_compile", "merge", "list", "quiet"):
        if getattr(args, name, False):
            argv.append("--" + name.replace("_", "-"))
    if args.small is True:
        argv.append("--small")
    elif args.small is False:
        argv.append("--issue-shapes")
    for item in args.op_args or []:
        argv += ["--op-args", item]
    return argv


def report_argv(args) -> list[str]:
    argv: list[str] = []
    if args.results:
        argv += ["--results", args.results]
    if args.write_readme:
        argv.append("--write-readme")
    for path in args.readme or []:
        argv += ["--readme", path]
    if args.out:
        argv += ["--out", args.out]
    return argv


def cmd_bench(args) -> int:
    bench_dir = find_bench_dir()
    if args.bench_command == "report":
        return load_bench_module("report", bench_dir).main(report_argv(args))
    return load_bench_module("suite", bench_dir).main(suite_argv(args))
