"""Renders the performance tables (Markdown) from the benchmark records in ``bench/results/*.json``.

Reads both the suite's merged records (``bench/suite.py``: ``{"suite", "environment", "ops": {...}}``)
and single-op records (``bench/bench_<op>.py --out``: ``{"op", "environment", "results"}``). Where
several records hold the same op on the same device configuration, the newest one is shown.

Output: a targets table (each issue target: met / MISSED / unmeasured, with the measured figure and its
device), then per op and device a table of medians (naive, torch.compile of the naive, each of our
backends), the ratios naive/ours and compile/ours measured side by side in one run, peak extra memory
and achieved throughput (with the share of the device's datasheet peak where known), then the
end-to-end tables and a list of what has not been measured. Nothing is estimated: a figure that is
not in a record is shown as "—" and a target without one is "unmeasured".

    python bench/report.py                       # print the Markdown
    python bench/report.py --write-readme        # between <!-- bench:begin --> / <!-- bench:end -->
                                                 # in README.md and bench/README.md
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
GIB = 2 ** 30

# Row fields that are measurements or per-provider outputs, not part of a case's identity.
RESULT_KEYS = {"provider", "mode", "dtype", "median_ms", "p20_ms", "p80_ms", "peak_extra_bytes", "tflops", "gbps",
               "error", "loss", "host_sync_ops", "cuda_sync_debug_error", "gpairs_per_s", "n_view", "images_per_s",
               "skipped"}
PER_OP_RESULT_KEYS = {"sample_anchors": {"anchors"}}
NAME_KEYS = ("shape", "dataset", "case", "preset")  # shown without their key
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
OP_ORDER = ("class_conv", "dense_conv7x7", "class_stack", "onehot_conv", "class_pool", "class_l1", "sample_anchors",
            "pixel_contrast_loss", "pair_similarity_loss", "e2e_train", "generator_inference")
# Datasheet peaks: (name fragment, HBM GB/s, dense bf16 TFLOP/s); first match wins.
DEVICE_PEAKS = (("H200", 4800, 989), ("H100 NVL", 3900, 835), ("H100 PCIe", 2000, 756), ("H100", 3350, 989),
                ("A100 80GB PCIe", 1935, 312), ("A100-SXM4-80GB", 2039, 312), ("A100", 1555, 312))


@dataclass(frozen=True)
class Roles:
    naive: str | None                 # the paper's naive formulation (the reference)
    compiled: str | None              # torch.compile of the naive formulation
    baselines: tuple[str, ...] = ()   # other baselines shown but not ours
    inexact: tuple[str, ...] = ()     # ours, but not the exact quantity (not used for targets)


ROLES = {
    "class_conv": Roles("naive", "compile", baselines=("grouped",)),
    "class_stack": Roles("naive", "compile", baselines=("grouped",)),
    "onehot_conv": Roles("dense", "dense_compiled"),
    "class_pool": Roles("naive", "naive_compiled"),
    "class_l1": Roles("naive", "naive_compiled"),
    "sample_anchors": Roles("loop", None),   # its "compile" is torch.compile of OUR vectorised sampler
    "pixel_contrast_loss": Roles("naive", "compile"),
    "pair_similarity_loss": Roles("naive", "compile", inexact=("ours-stride2",)),
    "dense_conv7x7": Roles(None, None),
    # bench_export.py: its compile_fused_* rows are torch.compile of OUR fused generator.
    "generator_inference": Roles("eager_naive_fp32", None),
}
NOTES = {("class_conv", "grouped"): "baseline: one grouped conv over K masked copies",
         ("class_stack", "grouped"): "baseline: grouped convs (groups = K) over K masked copies",
         ("pair_similarity_loss", "ours-stride2"): "stride-2 sub-grid estimate, not the exact loss",
         ("pixel_contrast_loss", "torch-chunked"): "our chunked PyTorch algorithm on the GPU",
         ("pair_similarity_loss", "torch-chunked"): "our chunked PyTorch algorithm on the GPU",
         ("sample_anchors", "compile"): "torch.compile of the vectorised sampler",
         ("generator_inference", "onnxruntime_fp32"): "reference ONNX graph on onnxruntime (CPU provider)"}


@dataclass
class Dataset:
    """One op's rows from one record, with the environment to show and the record's origin."""
    op: str
    env: dict
    rows: list[dict]
    source: str
    payload: dict = field(default_factory=dict)
    error: str | None = None
    skipped: tuple[str, ...] = ()     # what the run that made this record left out

    @property
    def device(self) -> str:
        return self.env.get("device") or "unknown device"

    @property
    def device_type(self) -> str:
        return self.env.get("device_type") or ("cuda" if self.env.get("cuda") and "CPU" not in self.device else "cpu")

    @property
    def timestamp(self) -> str:
        return self.env.get("timestamp") or ""


# --------------------------------------------------------------------------------------------- loading
def load(paths) -> list[Dataset]:
    """Datasets from record files (suite or single-op), newest per (op, device configuration)."""
    found: list[tuple[tuple, Dataset]] = []
    for path in paths:
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            print(f"report: skipping {path}: {exc}", file=sys.stderr)
            continue
        rel = os.path.relpath(path, REPO_ROOT)
        if isinstance(record, dict) and "ops" in record:
            suite_env = record.get("environment", {})
            for name, payload in record["ops"].items():
                op_env = payload.get("environment", {})
                # Shown: the suite's environment (CPU model name, driver, threads); the key keeps the op's
                # own device string so that single-op records of the same configuration are superseded.
                env = {**suite_env, **{k: v for k, v in op_env.items() if k != "device"}}
                # The suite's notes on what was skipped cover its cases' own notes.
                ds = Dataset(payload.get("op", name), env, list(payload.get("results", [])), rel, payload,
                             payload.get("error"), tuple(record.get("skipped") or ()))
                found.append(((ds.op, ds.device_type, op_env.get("device", ds.device)), ds))
        elif isinstance(record, dict) and "results" in record:
            env = record.get("environment", {})
            ds = Dataset(record.get("op", os.path.basename(path)), env, list(record["results"]), rel, record,
                         skipped=tuple(record.get("skipped") or ()))
            found.append(((ds.op, ds.device_type, ds.device), ds))
    newest: dict[tuple, Dataset] = {}
    for key, ds in found:
        if key not in newest or ds.timestamp >= newest[key].timestamp:
            newest[key] = ds
    order = {name: i for i, name in enumerate(OP_ORDER)}
    return sorted(newest.values(), key=lambda d: (order.get(d.op, len(order)), d.op, d.device_type != "cuda",
                                                  d.device))


def result_files(results_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(results_dir, "*.json")))


# -------------------------------------------------------------------------------------------- numbers
def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_ms(row: dict | None) -> str:
    if row is None:
        return "—"
    v = row.get("median_ms")
    if not finite(v):
        return _failure(row)
    return _num(v)


def _failure(row: dict) -> str:
    if row.get("skipped"):
        return "not run"
    err = str(row.get("error", ""))
    return "OOM" if "out of memory" in err.lower() or err.startswith("OOM") else "failed"


def _num(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_ratio(v) -> str:
    return "—" if not finite(v) else (f"{v:.1f}x" if v >= 10 else f"{v:.2f}x")


def fmt_bytes(v) -> str:
    if v is None or not finite(v):
        return "—"
    return f"{v / GIB:.2f} GiB" if v >= GIB else f"{v / 2**20:.1f} MiB"


def ratio(a: dict | None, b: dict | None, key: str = "median_ms"):
    if a is None or b is None or not finite(a.get(key)) or not finite(b.get(key)) or not b[key]:
        return None
    return a[key] / b[key]


def dtype_name(v) -> str:
    return DTYPE_NAMES.get(str(v), str(v)) if v is not None else "—"


def peaks(device: str):
    for fragment, gbps, tflops in DEVICE_PEAKS:
        if fragment.lower() in device.lower():
            return gbps, tflops
    return None


def throughput(row: dict, device: str) -> str:
    if not finite(row.get("median_ms")):
        return "—"
    parts, peak = [], peaks(device)
    if finite(row.get("tflops")):
        s = f"{row['tflops']:.3g} TFLOP/s"
        if peak and dtype_name(row.get("dtype")) in ("bf16", "fp16"):
            s += f" ({100 * row['tflops'] / peak[1]:.0f}% of {peak[1]} bf16 peak)"
        parts.append(s)
    if finite(row.get("gbps")):
        s = f"{row['gbps']:.3g} GB/s"
        if peak:
            s += f" ({100 * row['gbps'] / peak[0]:.0f}% of HBM peak)"
        parts.append(s)
    if finite(row.get("gpairs_per_s")):
        parts.append(f"{row['gpairs_per_s']:.3g} Gpairs/s")
    if finite(row.get("images_per_s")):
        parts.append(f"{row['images_per_s']:.3g} images/s")
    return " · ".join(parts) or "—"


# ----------------------------------------------------------------------------------------- grouping
def case_fields(op: str, row: dict) -> dict:
    skip = RESULT_KEYS | PER_OP_RESULT_KEYS.get(op, set())
    return {k: v for k, v in row.items() if k not in skip and not k.startswith(("speedup_", "mem_ratio"))}


def case_label(fields: dict) -> str:
    """Compact case text: the case name bare, HxW, other fields as k=v."""
    f = dict(fields)
    parts = [str(f.pop(k)) for k in NAME_KEYS if k in f]
    for hk, wk in (("H", "W"), ("height", "width")):
        if hk in f and wk in f:
            f[hk] = f"{f[hk]}x{f.pop(wk)}"
    parts += [str(v) if k in ("H", "height") else f"{k}={v}" for k, v in f.items()]
    return " ".join(parts)


def roles(op: str, providers) -> Roles:
    if op in ROLES:
        return ROLES[op]
    compiled = next((p for p in ("compile", "naive_compiled") if p in providers), None)
    return Roles("naive" if "naive" in providers else None, compiled)


@dataclass
class Comparison:
    """One (case, mode, dtype) of one dataset: its rows by provider."""
    fields: dict
    mode: str
    dtype: str
    by_provider: dict
    roles: Roles

    @property
    def naive(self):
        return self.by_provider.get(self.roles.naive) if self.roles.naive else None

    @property
    def compiled(self):
        return self.by_provider.get(self.roles.compiled) if self.roles.compiled else None

    def ours(self, exact_only: bool = False) -> dict:
        skip = {self.roles.naive, self.roles.compiled, *self.roles.baselines}
        if exact_only:
            skip |= set(self.roles.inexact)
        return {p: r for p, r in self.by_provider.items() if p not in skip}

    def shown(self) -> dict:
        """Rows for the table: every provider but the naive and its compiled version."""
        return {p: r for p, r in self.by_provider.items() if p not in (self.roles.naive, self.roles.compiled)}

    def best(self):
        """Our fastest exact provider (finite median), or None."""
        rows = [r for r in self.ours(exact_only=True).values() if finite(r.get("median_ms"))]
        return min(rows, key=lambda r: r["median_ms"]) if rows else None

    @property
    def label(self) -> str:
        return f"{case_label(self.fields)} {self.mode} {self.dtype}"


def comparisons(ds: Dataset) -> list[Comparison]:
    groups: dict[tuple, dict] = {}
    meta: dict[tuple, tuple] = {}
    for row in ds.rows:
        fields = case_fields(ds.op, row)
        key = (json.dumps(fields, sort_keys=True, default=str), row.get("mode"), dtype_name(row.get("dtype")))
        groups.setdefault(key, {})[row.get("provider", "?")] = row
        meta[key] = (fields, row.get("mode") or "—", dtype_name(row.get("dtype")))
    out = []
    for key, by in groups.items():
        fields, mode, dtype = meta[key]
        out.append(Comparison(fields, mode, dtype, by, roles(ds.op, by)))
    return out


# ------------------------------------------------------------------------------------------ tables
def env_line(ds: Dataset) -> str:
    e = ds.env
    dev = ds.device
    if ds.device_type == "cpu" and not dev.startswith("CPU ("):
        dev += f" (CPU, {e.get('threads') or '?'} thread{'s' if e.get('threads') != 1 else ''})"
    bits = [f"torch {e.get('torch')}"]
    if e.get("triton"):
        bits.append(f"triton {e['triton']}")
    if e.get("cuda") and ds.device_type == "cuda":
        bits.append(f"CUDA {e['cuda']}")
    if e.get("driver"):
        bits.append(f"driver {e['driver']}")
    commit = (e.get("git_commit") or "?")[:8] + (" + local changes" if e.get("git_dirty") else "")
    bits += [f"commit {commit}", (e.get("timestamp") or "?")[:10], f"`{ds.source}`"]
    return f"**{dev}** — " + ", ".join(bits)


def _md_table(header: list[str], rows: list[list[str]], drop_empty: tuple[str, ...] = ()) -> str:
    """Markdown table; the columns named in ``drop_empty`` are left out when no row has a value there."""
    for name in drop_empty:
        if name in header:
            i = header.index(name)
            if all(r[i] in ("", "—") for r in rows):
                header = header[:i] + header[i + 1:]
                rows = [r[:i] + r[i + 1:] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def op_note(op: str, provider: str, row: dict) -> str:
    notes = [NOTES[(op, provider)]] if (op, provider) in NOTES else []
    if row.get("host_sync_ops") is not None:
        notes.append(f"host-sync ops/call: {row['host_sync_ops']}")
    if row.get("cuda_sync_debug_error"):
        notes.append("sync-debug: " + ("no sync" if row["cuda_sync_debug_error"] == "none" else "synchronised"))
    if not finite(row.get("median_ms")) and row.get("error") and _failure(row) == "failed":
        notes.append(str(row["error"])[:80])
    if row.get("skipped"):
        notes.append(f"not run: {str(row['skipped'])[:100]}")
    return "; ".join(notes)


def render_op(ds: Dataset) -> str:
    comps = comparisons(ds)
    head = env_line(ds)
    if ds.error and not ds.rows:
        return f"{head}\n\nThis run failed: {ds.error}\n"
    if all(c.roles.naive is None for c in comps):  # a yardstick (dense_conv7x7): one provider
        rows = [[case_label(c.fields), c.mode, c.dtype, p, fmt_ms(r) + _spread(r), fmt_bytes(r.get("peak_extra_bytes")),
                 throughput(r, ds.device)] for c in comps for p, r in c.by_provider.items()]
        return head + "\n\n" + _md_table(["case", "mode", "dtype", "provider", "median ms [p20, p80]",
                                          "peak extra", "throughput"], rows, drop_empty=("peak extra",)) + "\n"
    has_compile = any(c.compiled is not None for c in comps)
    naive_name = next((c.roles.naive for c in comps if c.roles.naive), "naive")
    header = ["case", "mode", "dtype", "provider", f"{naive_name} ms"] + (["compile ms"] if has_compile else []) + \
             ["provider ms [p20, p80]", f"{naive_name}/provider"] + (["compile/provider"] if has_compile else []) + \
             [f"peak extra {naive_name} → provider", "throughput", "note"]
    rows = []
    for c in comps:
        for prov, r in c.shown().items():
            mem = "—"
            if r.get("peak_extra_bytes") is not None or (c.naive or {}).get("peak_extra_bytes") is not None:
                naive_mem = fmt_bytes((c.naive or {}).get("peak_extra_bytes"))
                if c.naive is not None and not finite(c.naive.get("median_ms")):
                    naive_mem = _failure(c.naive)
                mem = f"{naive_mem} → {fmt_bytes(r.get('peak_extra_bytes'))}"
                mr = ratio(c.naive, r, "peak_extra_bytes")
                mem += f" ({fmt_ratio(mr)} less)" if mr else ""
            line = [case_label(c.fields), c.mode, c.dtype, prov, fmt_ms(c.naive)]
            if has_compile:
                line.append(fmt_ms(c.compiled))
            line += [fmt_ms(r) + _spread(r), fmt_ratio(ratio(c.naive, r))]
            if has_compile:
                line.append(fmt_ratio(ratio(c.compiled, r)))
            line += [mem, throughput(r, ds.device), op_note(ds.op, prov, r)]
            rows.append(line)
    if not rows:
        return head + "\n\n(no rows of our implementation in this record)\n"
    return head + "\n\n" + _md_table(header, rows, drop_empty=(header[-3], "note", "mode", "dtype")) + "\n"


def _spread(row: dict) -> str:
    if row is None or not finite(row.get("median_ms")) or not finite(row.get("p20_ms")):
        return ""
    return f" [{_num(row['p20_ms'])}, {_num(row['p80_ms'])}]"


def render_e2e(ds: Dataset) -> str:
    head = env_line(ds)
    if ds.error and not ds.rows:
        return f"{head}\n\nThis run failed: {ds.error}\n"
    rows = []
    for r in ds.rows:
        cfg = f"{r.get('config')} ({r.get('backend', '?')}, {r.get('precision', '?')}" + \
              (", compile" if r.get("compile") else "") + ")"
        batch = str(r.get("batch"))
        if r.get("requested_batch") not in (None, r.get("batch")):
            batch += f" (asked {r['requested_batch']}: OOM)"
        ips = f"{r['images_per_s']:.3g}" if finite(r.get("images_per_s")) else _failure(r)
        size = f"{r.get('height')}x{r.get('width')}, K={r.get('classes')}" if r.get("height") else ""
        rows.append([f"{r.get('preset')} {size}".strip(), cfg, batch, fmt_ms(r) + _spread(r), ips,
                     fmt_ratio(r.get("speedup_vs_naive")), fmt_bytes(r.get("peak_bytes")),
                     fmt_bytes(r.get("peak_bytes_per_image"))])
    out = head + "\n\n" + _md_table(["preset", "configuration", "batch", "step ms [p20, p80]", "images/s",
                                     "vs naive", "peak memory", "per image"], rows,
                                    drop_empty=("peak memory", "per image")) + "\n"
    mb = ds.payload.get("max_batch") or []
    if mb:
        lines = [[str(r.get("preset")), f"{r.get('config')} ({r.get('precision', '?')}, eager)",
                  str(r.get("max_batch")) if r.get("max_batch") is not None else f"failed: {r.get('error', '')[:60]}",
                  fmt_bytes(r.get("memory_cap_bytes")), ", ".join(f"{k}:{'ok' if v else 'OOM'}"
                                                                  for k, v in (r.get("tried") or {}).items())]
                 for r in mb]
        out += "\nLargest per-GPU batch (two training steps fit under the memory cap):\n\n" + \
               _md_table(["preset", "configuration", "max batch", "memory cap", "tried"], lines) + "\n"
    vgg = {r.get("vgg") for r in ds.rows if r.get("vgg")}
    if vgg:
        out += f"\nVGG19 perceptual loss: {', '.join(sorted(vgg))}.\n"
    return out


def render_generic(ds: Dataset) -> str:
    """Records of unknown layout (e.g. a new case): every row as its fields."""
    head = env_line(ds)
    if not ds.rows:
        return f"{head}\n\n{'This run failed: ' + ds.error if ds.error else '(no rows)'}\n"
    keys = list(dict.fromkeys(k for r in ds.rows for k in r))
    rows = [[_cell(r.get(k)) for k in keys] for r in ds.rows]
    return head + "\n\n" + _md_table(keys, rows) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return _num(v) if finite(v) else "NaN"
    return "—" if v is None else str(v)


# ------------------------------------------------------------------------------------------ targets
@dataclass
class Target:
    key: str
    text: str
    device_type: str          # "cuda" or "cpu": records of this kind of device count
    ops: tuple[str, ...]
    evaluate: object          # fn(dict op -> Dataset) -> (status, measured text) or None (no data)


def _speed(op, threshold, case, mode="fwd+bwd", providers=None, label=None):
    """Every matching (case, mode, dtype) must reach naive/ours >= threshold (ours = best exact)."""
    def run(dsets):
        ds = dsets.get(op)
        if ds is None:
            return None
        comps = [c for c in comparisons(ds) if c.mode == mode and case(c.fields)]
        if not comps:
            return None
        measured, naive_failed = [], 0
        for c in comps:
            best = c.best() if providers is None else min(
                (r for p, r in c.ours(exact_only=True).items() if p in providers and finite(r.get("median_ms"))),
                key=lambda r: r["median_ms"], default=None)
            if best is None:
                continue
            if c.naive is not None and not finite(c.naive.get("median_ms")):
                naive_failed += 1
                continue
            q = ratio(c.naive, best)
            if q is not None:
                measured.append((q, c, best))
        return _summarise(measured, threshold, naive_failed, ">=", "x")
    return run


def _summarise(measured, threshold, naive_failed, sense, unit):
    if not measured:
        if naive_failed:
            return "unmeasured", f"the naive baseline failed (OOM) in all {naive_failed} cases"
        return None
    worst = min(measured, key=lambda m: m[0]) if sense == ">=" else max(measured, key=lambda m: m[0])
    met = worst[0] >= threshold if sense == ">=" else worst[0] <= threshold
    _, c, best = worst
    text = f"{'worst ' if len(measured) > 1 else ''}{_fmt_unit(worst[0], unit)} ({c.label}, {best.get('provider')})"
    if len(measured) > 1:
        other = max(measured, key=lambda m: m[0]) if sense == ">=" else min(measured, key=lambda m: m[0])
        text += f"; best {_fmt_unit(other[0], unit)} over {len(measured)} cases"
    if naive_failed:
        text += f"; naive OOM/failed in {naive_failed} more case(s)"
    return ("met" if met else "MISSED"), text


def _fmt_unit(v, unit):
    return fmt_ratio(v) if unit == "x" else f"{v:.2f}{unit}"


def _memory_ratio(op, threshold, case, mode="fwd+bwd"):
    def run(dsets):
        ds = dsets.get(op)
        if ds is None:
            return None
        measured, naive_failed = [], 0
        for c in comparisons(ds):
            if c.mode != mode or not case(c.fields):
                continue
            best = c.best()
            if best is None or best.get("peak_extra_bytes") in (None, 0):
                continue
            if c.naive is not None and not finite(c.naive.get("median_ms")):
                naive_failed += 1
                continue
            q = ratio(c.naive, best, "peak_extra_bytes")
            if q is not None:
                measured.append((q, c, best))
        return _summarise(measured, threshold, naive_failed, ">=", "x")
    return run


def _vs_dense_conv(threshold):
    """class_conv's best exact backend at most ``threshold`` x the time of one dense 7x7 conv."""
    def run(dsets):
        cc, dense = dsets.get("class_conv"), dsets.get("dense_conv7x7")
        if cc is None or dense is None:
            return None
        ref = {}
        for c in comparisons(dense):
            f = c.fields
            ref[(f.get("B"), f.get("H"), f.get("W"), c.dtype, c.mode)] = next(iter(c.by_provider.values()))
        measured = []
        for c in comparisons(cc):
            if c.mode != "fwd+bwd":
                continue
            f, best = c.fields, c.best()
            d = ref.get((f.get("B"), f.get("H"), f.get("W"), c.dtype, c.mode))
            q = ratio(best, d)
            if q is not None:
                measured.append((q, c, best))
        return _summarise(measured, threshold, 0, "<=", "x the dense conv")
    return run


def _onehot(threshold):
    def run(dsets):
        ds = dsets.get("onehot_conv")
        if ds is None:
            return None
        comps = [c for c in comparisons(ds) if (c.fields.get("K") or 0) >= 35]
        if not comps:
            return None
        largest = max((c.fields.get("H", 0) * c.fields.get("W", 0)) for c in comps)
        keep = lambda f: f.get("K", 0) >= 35 and f.get("H", 0) * f.get("W", 0) == largest  # noqa: E731
        results = [_speed("onehot_conv", threshold, keep, mode=m)(dsets) for m in ("fwd", "fwd+bwd")]
        results = [r for r in results if r]
        if not results:
            return None
        status = "MISSED" if any(r[0] == "MISSED" for r in results) else results[0][0]
        return status, " | ".join(f"{m}: {r[1]}" for m, r in zip(("fwd", "fwd+bwd"), results))
    return run


def _peak_below(op, limit_bytes, case, provider="ours", mode="fwd+bwd"):
    def run(dsets):
        ds = dsets.get(op)
        if ds is None:
            return None
        rows = [r for r in ds.rows if r.get("provider") == provider and r.get("mode") == mode
                and case(case_fields(op, r))]
        if not rows:
            return None
        failed = [r for r in rows if not finite(r.get("median_ms"))]
        if failed:
            return "MISSED", f"ours failed: {failed[0].get('error', '')[:80]}"
        if any(r.get("peak_extra_bytes") is None for r in rows):
            return None
        worst = max(rows, key=lambda r: r["peak_extra_bytes"])
        return ("met" if worst["peak_extra_bytes"] < limit_bytes else "MISSED",
                f"{fmt_bytes(worst['peak_extra_bytes'])} extra, {_num(worst['median_ms'])} ms "
                f"({dtype_name(worst.get('dtype'))})")
    return run


def _contrast_speed(threshold):
    """At A = 65,536 if the plain loss fits there, else at the largest A where it fits."""
    def run(dsets):
        ds = dsets.get("pixel_contrast_loss")
        if ds is None:
            return None
        comps = [c for c in comparisons(ds) if c.fields.get("case") == "self" and c.mode == "fwd+bwd"
                 and c.best() is not None]
        fits = [c for c in comps if c.naive is not None and finite(c.naive.get("median_ms"))]
        if not fits:
            return ("unmeasured", "the plain loss did not fit at any size") if comps else None
        a_max = max(c.fields.get("anchors", 0) for c in fits)
        chosen = [c for c in fits if c.fields.get("anchors") == a_max]
        measured = [(ratio(c.naive, c.best()), c, c.best()) for c in chosen]
        status, text = _summarise(measured, threshold, 0, ">=", "x")
        if a_max != 65536:
            text += f" (plain loss OOM above A = {a_max:,})"
        return status, text
    return run


def _sampler_syncs():
    def run(dsets):
        ds = dsets.get("sample_anchors")
        if ds is None:
            return None
        rows = [r for r in ds.rows if r.get("provider") == "vectorized"]
        if not rows:
            return None
        counts = [r.get("host_sync_ops") for r in rows]
        debug = [r.get("cuda_sync_debug_error") for r in rows if r.get("cuda_sync_debug_error") is not None]
        if any(c is None for c in counts):
            return None
        ok = all(c == 0 for c in counts) and all(d == "none" for d in debug)
        text = f"host-sync ops per call: {max(counts)}" + (
            f"; CUDA sync-debug mode: {'no sync' if all(d == 'none' for d in debug) else 'synchronised'}"
            if debug else "")
        return ("met" if ok else "MISSED"), text
    return run


def _train_speed(threshold):
    def run(dsets):
        ds = dsets.get("e2e_train")
        if ds is None:
            return None
        measured = []
        for preset in dict.fromkeys(r.get("preset") for r in ds.rows):
            naive = next((r for r in ds.rows if r.get("preset") == preset and r.get("config") == "naive"), None)
            ours = [r for r in ds.rows if r.get("preset") == preset and r.get("config") != "naive"
                    and finite(r.get("images_per_s"))]
            if naive is None or not ours or not finite(naive.get("images_per_s")):
                continue
            best = max(ours, key=lambda r: r["images_per_s"])
            measured.append((best["images_per_s"] / naive["images_per_s"], preset, best, naive))
        if not measured:
            return None
        worst = min(measured, key=lambda m: m[0])
        text = "; ".join(f"{p}: {fmt_ratio(q)} ({b['config']} {b['images_per_s']:.3g} vs naive "
                         f"{n['images_per_s']:.3g} img/s)" for q, p, b, n in measured)
        return ("met" if worst[0] >= threshold else "MISSED"), text
    return run


def _max_batch(minimum):
    def run(dsets):
        ds = dsets.get("e2e_train")
        rows = [r for r in (ds.payload.get("max_batch") or []) if r.get("max_batch") is not None] if ds else []
        if not rows:
            return None
        worst = min(rows, key=lambda r: r["max_batch"])
        text = "; ".join(f"{r['preset']}: {r['max_batch']}" for r in rows)
        text += f" (memory capped at {fmt_bytes(worst.get('memory_cap_bytes'))})"
        return ("met" if worst["max_batch"] >= minimum else "MISSED"), text
    return run


def _inference(kind: str, threshold: float):
    """From bench_export.py's record (op generator_inference), per (batch, resolution): ``kind`` "pytorch":
    naive eager fp32 / best PyTorch path (eager or compiled fused generator, any dtype); "tensorrt": best
    PyTorch path / TensorRT fp16."""
    def run(dsets):
        ds = dsets.get("generator_inference")
        if ds is None:
            return None
        measured, not_run = [], []
        for c in comparisons(ds):
            torch_rows = [r for p, r in c.by_provider.items() if p.startswith(("eager_fused", "compile_fused"))
                          and finite(r.get("median_ms"))]
            if not torch_rows:
                continue
            best = min(torch_rows, key=lambda r: r["median_ms"])
            if kind == "pytorch":
                q = ratio(c.naive, best)
                if q is not None:
                    measured.append((q, c, best))
            else:
                trt = c.by_provider.get("tensorrt_fp16")
                if trt is not None and not finite(trt.get("median_ms")):
                    not_run.append(str(trt.get("skipped") or trt.get("error") or "failed"))
                q = ratio(best, trt)
                if q is not None:
                    measured.append((q, c, trt))
        if not measured:
            return ("unmeasured", f"TensorRT not run: {not_run[0][:120]}") if not_run else None
        return _summarise(measured, threshold, 0, ">=", "x")
    return run


def _is_cityscapes(f):
    return f.get("K") == 35 and f.get("H") == 256 and f.get("W") == 512


TARGETS = (
    Target("class_conv_cityscapes", "class_conv fwd+bwd >= 20x faster than naive at the Cityscapes shape "
           "(K = 35, 256x512)", "cuda", ("class_conv",), _speed("class_conv", 20, _is_cityscapes)),
    Target("class_conv_k151", "class_conv fwd+bwd >= 50x faster than naive at K = 151", "cuda", ("class_conv",),
           _speed("class_conv", 50, lambda f: f.get("K") == 151)),
    Target("class_conv_memory", "class_conv fwd+bwd peak extra memory >= 20x lower than naive (Cityscapes and "
           "K = 151)", "cuda", ("class_conv",),
           _memory_ratio("class_conv", 20, lambda f: _is_cityscapes(f) or f.get("K") == 151)),
    Target("class_conv_vs_dense", "class_conv fwd+bwd within 2x of one dense 7x7 64->3 conv at the same resolution",
           "cuda", ("class_conv", "dense_conv7x7"), _vs_dense_conv(2.0)),
    Target("onehot_conv", "onehot_conv >= 10x faster than the dense conv at K >= 35 (largest resolution measured, "
           "fwd and fwd+bwd)", "cuda", ("onehot_conv",), _onehot(10)),
    Target("class_conv_cpu", "CPU: class_conv CPU path fwd+bwd >= 10x faster than naive at K = 35", "cpu",
           ("class_conv",), _speed("class_conv", 10, lambda f: f.get("K") == 35, providers=("cpu",))),
    Target("contrast_memory", "pixel_contrast_loss fwd+bwd at A = 65,536: < 1 GiB extra memory", "cuda",
           ("pixel_contrast_loss",),
           _peak_below("pixel_contrast_loss", GIB, lambda f: f.get("case") == "self" and f.get("anchors") == 65536)),
    Target("contrast_speed", "pixel_contrast_loss fwd+bwd >= 3x faster than the plain loss where that fits", "cuda",
           ("pixel_contrast_loss",), _contrast_speed(3)),
    Target("sampler_speed", "sample_anchors >= 10x faster than the loop version", "cuda", ("sample_anchors",),
           _speed("sample_anchors", 10, lambda f: True, mode="—", providers=("vectorized",))),
    Target("sampler_syncs", "sample_anchors: zero host synchronisations", "cuda", ("sample_anchors",),
           _sampler_syncs()),
    Target("similarity_memory", "pair_similarity_loss at 256x512 fwd+bwd: < 1 GiB extra memory (time reported)",
           "cuda", ("pair_similarity_loss",),
           _peak_below("pair_similarity_loss", GIB, lambda f: f.get("height") == 256 and f.get("width") == 512)),
    Target("train_speed", "training step >= 3x images/s vs the naive reference configuration", "cuda",
           ("e2e_train",), _train_speed(3)),
    Target("train_batch", "per-GPU training batch >= 8 on an 80 GB GPU", "cuda", ("e2e_train",), _max_batch(8)),
    Target("inference_pytorch", "inference: best PyTorch path >= 3x faster than naive eager fp32", "cuda",
           ("generator_inference",), _inference("pytorch", 3)),
    Target("inference_tensorrt", "inference: TensorRT fp16 >= 1.5x faster than the best PyTorch path", "cuda",
           ("generator_inference",), _inference("tensorrt", 1.5)),
)


def evaluate_targets(datasets: list[Dataset]) -> list[dict]:
    """One entry per (target, device with data): status met / MISSED / unmeasured, measured text."""
    out = []
    for t in TARGETS:
        devices: dict[str, dict] = {}
        for ds in datasets:
            if ds.device_type == t.device_type and ds.op in t.ops:
                devices.setdefault(ds.device, {})[ds.op] = ds
        rows = []
        for device, dsets in devices.items():
            result = t.evaluate(dsets)
            if result is not None:
                rows.append({"target": t.key, "text": t.text, "device": device, "status": result[0],
                             "measured": result[1]})
        if not rows:
            where = "GPU" if t.device_type == "cuda" else "CPU"
            rows.append({"target": t.key, "text": t.text, "device": "—", "status": "unmeasured",
                         "measured": f"no {where} record with this case in bench/results"})
        out.extend(rows)
    return out


def render_targets(results: list[dict]) -> str:
    rows = [[r["text"], r["device"], {"met": "met", "MISSED": "**MISSED**"}.get(r["status"], r["status"]),
             r["measured"]] for r in results]
    missed = [r for r in results if r["status"] == "MISSED"]
    lines = [_md_table(["target", "device", "status", "measured"], rows)]
    if missed:
        lines.append("\nTargets missed: " + "; ".join(f"{r['text']} on {r['device']} ({r['measured']})"
                                                    for r in missed) + ".")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ document
KNOWN_GPU_CASES = ("class_conv", "dense_conv7x7", "onehot_conv", "class_pool", "class_l1", "sample_anchors",
                   "pixel_contrast_loss", "pair_similarity_loss", "e2e_train", "generator_inference")


def render(datasets: list[Dataset]) -> str:
    """The whole Markdown section."""
    parts = ["### Targets", "", render_targets(evaluate_targets(datasets))]
    by_op: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_op.setdefault(ds.op, []).append(ds)
    for op, group in by_op.items():
        parts += [f"### {op}", ""]
        for ds in group:
            if op == "e2e_train":
                parts.append(render_e2e(ds))
            elif op in ROLES or any("provider" in r and "median_ms" in r for r in ds.rows):
                parts.append(render_op(ds))
            else:
                parts.append(render_generic(ds))
        notes = {ds.payload.get("note") for ds in group if ds.payload.get("note")}
        parts += [f"_{n}_\n" for n in sorted(notes)]
    missing = [op for op in KNOWN_GPU_CASES if not any(d.op == op and d.device_type == "cuda" for d in datasets)]
    if missing:
        parts += ["### Not measured", "",
                  "No GPU record yet for: " + ", ".join(missing) + ". Their GPU figures (issue shapes, bf16, the "
                  "Triton and CUDA backends) are unmeasured; run `semgan bench --e2e` on a GPU.", ""]
    skipped = list(dict.fromkeys(s for ds in datasets for s in ds.skipped))
    if skipped:
        parts += ["Skipped in the runs shown: " + "; ".join(skipped) + ".", ""]
    header = ("_Generated by `semgan bench report` from `bench/results/*.json`. Every figure was measured on "
              "the device named above its table; ratios compare providers measured side by side in one run. "
              "Medians with [p20, p80]; peak extra = `max_memory_allocated` beyond the inputs (CUDA only); "
              "`—` = not measured._\n")
    return header + "\n" + "\n".join(parts).rstrip() + "\n"


def write_between_markers(path: str, markdown: str) -> bool:
    """Replaces the text between the markers in ``path``; False when the file or a marker is missing."""
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        text = f.read()
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < b:
        return False
    new = text[:b + len(BEGIN)] + "\n" + markdown.rstrip() + "\n" + text[e:]
    with open(path, "w") as f:
        f.write(new)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="render the performance tables from bench/results/*.json")
    p.add_argument("--results", default=os.path.join(BENCH_DIR, "results"), help="directory of JSON records")
    p.add_argument("--write-readme", action="store_true",
                   help=f"write the tables between {BEGIN} and {END} (README.md and bench/README.md)")
    p.add_argument("--readme", action="append", default=None, help="file(s) to write with --write-readme")
    p.add_argument("--out", default=None, help="also write the Markdown to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files = result_files(args.results)
    if not files:
        print(f"report: no JSON records in {args.results}", file=sys.stderr)
        return 1
    markdown = render(load(files))
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown)
    if not args.write_readme:
        if args.out:
            print(f"report: wrote {args.out}")
        else:
            print(markdown)
        return 0
    targets = args.readme or [os.path.join(REPO_ROOT, "README.md"), os.path.join(BENCH_DIR, "README.md")]
    unmarked = []
    for path in targets:
        if write_between_markers(path, markdown):
            print(f"report: wrote the tables into {os.path.relpath(path, REPO_ROOT)}")
        else:
            unmarked.append(path)
            print(f"report: {os.path.relpath(path, REPO_ROOT)} has no {BEGIN} ... {END} markers; not changed",
                  file=sys.stderr)
    if unmarked:
        print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
