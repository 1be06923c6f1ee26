"""The benchmark suite's plumbing: report rendering (targets met / missed / unmeasured, devices, no
invented figures), the environment block, the `semgan bench` parser, and one tiny case end to end."""
from __future__ import annotations

import argparse
import json
import math
import os
import re

import pytest

from semgan_fast import bench_cli

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _module(name):
    return bench_cli.load_bench_module(name, BENCH)


suite = _module("suite")
report = _module("report")

GPU = "NVIDIA H100 80GB HBM3"


def _env(device, device_type, ts="2026-11-20T00:00:00+00:00"):
    return {"device": device, "device_type": device_type, "torch": "2.11.0", "triton": "3.6.0",
            "cuda": "13.0" if device_type == "cuda" else None, "driver": "580.1" if device_type == "cuda" else None,
            "git_commit": "0123456789abcdef", "timestamp": ts, "threads": 1}


def _cc_row(provider, mode, median, K=35, H=256, W=512, peak=None, error=None):
    row = {"shape": "cityscapes" if K == 35 else "ade20k-151", "B": 1, "C": 64, "O": 3, "K": K, "H": H, "W": W,
           "k": 7, "dtype": "bfloat16", "mode": mode, "provider": provider, "median_ms": median,
           "p20_ms": median * 0.9, "p80_ms": median * 1.1, "peak_extra_bytes": peak}  # NaN stays NaN
    if error:
        row["error"] = error
    return row


def _gpu_record():
    """Synthetic GPU suite record: Cityscapes 25x (met), K = 151 25x (missed), memory 32x (met)."""
    rows = [_cc_row("naive", "fwd+bwd", 1234.5, peak=32 * 2**30),
            _cc_row("compile", "fwd+bwd", 617.25, peak=16 * 2**30), _cc_row("triton", "fwd+bwd", 49.38, peak=2**30),
            _cc_row("naive", "fwd+bwd", 987.6, K=151, H=256, W=256, peak=40 * 2**30),
            _cc_row("triton", "fwd+bwd", 39.504, K=151, H=256, W=256, peak=2**30),
            _cc_row("naive", "fwd", math.nan, K=151, H=256, W=256, error="OutOfMemoryError: CUDA out of memory"),
            _cc_row("triton", "fwd", 7.77, K=151, H=256, W=256, peak=2**29)]
    return {"suite": "semgan bench", "schema": 1, "environment": _env(GPU, "cuda"), "device_type": "cuda",
            "ops": {"class_conv": {"op": "class_conv", "environment": _env(GPU, "cuda"), "results": rows}}}


def test_report_targets_met_missed_unmeasured(tmp_path):
    (tmp_path / "h100.json").write_text(json.dumps(_gpu_record()))
    datasets = report.load(report.result_files(str(tmp_path)))
    by_key = {}
    for r in report.evaluate_targets(datasets):
        by_key.setdefault(r["target"], []).append(r)
    assert by_key["class_conv_cityscapes"][0]["status"] == "met"
    assert by_key["class_conv_cityscapes"][0]["device"] == GPU
    assert "25.0x" in by_key["class_conv_cityscapes"][0]["measured"]
    assert by_key["class_conv_k151"][0]["status"] == "MISSED"
    assert "25.0x" in by_key["class_conv_k151"][0]["measured"]
    assert by_key["class_conv_memory"][0]["status"] == "met"   # 32 GiB / 1 GiB and 40 GiB / 1 GiB
    assert "32.0x" in by_key["class_conv_memory"][0]["measured"]
    # No dense conv record, no CPU record, no e2e record: unmeasured, not guessed.
    for key in ("class_conv_vs_dense", "class_conv_cpu", "train_speed", "train_batch", "inference_tensorrt",
                "onehot_conv", "contrast_memory"):
        assert [r["status"] for r in by_key[key]] == ["unmeasured"], key

    md = report.render(datasets)
    assert GPU in md
    assert "**MISSED**" in md and "Targets missed:" in md
    assert "| unmeasured |" in md
    # The class_conv table: the recorded medians, the ratios of recorded medians, OOM where the baseline
    # failed, and no other figure.
    table = md[md.index("### class_conv"):]
    table = table[:table.index("\n### ")] if "\n### " in table else table
    assert "OOM" in table
    body = "\n".join([line for line in table.splitlines() if line.startswith("| ")][1:])  # rows, no header
    numbers = set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?", body))
    allowed = {"1234", "617", "49.4", "44.4", "54.3", "25.0", "12.5", "987.6", "988", "39.5", "35.6", "43.5",
               "7.77", "6.99", "8.55", "32.0", "32.00", "40.00", "16.00", "1.00", "40.0", "512.0", "1", "64", "3",
               "35", "151", "7", "256", "512", "256x512", "256x256", "16", "2"}
    assert numbers <= allowed | {"0"}, numbers - allowed
    assert "compile/provider" in table


def test_report_cpu_record_leaves_gpu_targets_unmeasured(tmp_path):
    rows = [_cc_row("naive", "fwd+bwd", 800.0) | {"dtype": "float32"},
            _cc_row("cpu", "fwd+bwd", 100.0) | {"dtype": "float32"}]
    rec = {"suite": "semgan bench", "environment": _env("AMD EPYC", "cpu"), "device_type": "cpu",
           "skipped": ["no CUDA device: GPU cases skipped"],
           "ops": {"class_conv": {"op": "class_conv", "environment": _env("CPU (x86_64)", "cpu"), "results": rows}}}
    (tmp_path / "cpu.json").write_text(json.dumps(rec))
    datasets = report.load(report.result_files(str(tmp_path)))
    results = {r["target"]: r for r in report.evaluate_targets(datasets)}
    assert results["class_conv_cpu"]["status"] == "MISSED"          # 8x < 10x
    assert results["class_conv_cpu"]["device"] == "AMD EPYC"
    assert "8.00x" in results["class_conv_cpu"]["measured"]
    assert results["class_conv_cityscapes"]["status"] == "unmeasured"  # CPU figures never count for GPU targets
    md = report.render(datasets)
    assert "AMD EPYC (CPU, 1 thread)" in md and "No GPU record yet" in md and "GPU cases skipped" in md


def test_report_newest_record_wins_and_markers(tmp_path):
    old = _gpu_record()
    new = _gpu_record()
    new["environment"]["timestamp"] = new["ops"]["class_conv"]["environment"]["timestamp"] = "2026-11-21T00:00:00+00:00"
    for row in new["ops"]["class_conv"]["results"]:
        if row["provider"] == "triton" and row["K"] == 151 and row["mode"] == "fwd+bwd":
            row["median_ms"] = 9.876
    (tmp_path / "a.json").write_text(json.dumps(new))
    (tmp_path / "b.json").write_text(json.dumps(old))
    datasets = report.load(report.result_files(str(tmp_path)))
    assert len(datasets) == 1
    md = report.render(datasets)
    assert "9.88" in md and "100.0x" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.BEGIN}\nold\n{report.END}\ntail\n")
    assert report.write_between_markers(str(readme), md)
    text = readme.read_text()
    assert "old" not in text and "9.88" in text and text.endswith(f"{report.END}\ntail\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.write_between_markers(str(plain), md)
    assert plain.read_text() == "no markers\n"


def test_environment_block():
    env = suite.environment("cpu", threads=1)
    for key in ("device", "device_type", "driver", "cuda", "torch", "triton", "git_commit", "timestamp", "threads"):
        assert key in env
    assert env["device"] == suite.cpu_model() and env["device_type"] == "cpu"
    assert suite.device_slug(env) == "cpu"
    assert suite.device_slug({"device_type": "cuda", "device": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"


def test_selection():
    available = suite.discover(BENCH)
    assert {"class_conv", "class_pool", "e2e"} <= set(available)
    assert suite.select(available, "class_conv", False) == ["class_conv", "dense_conv7x7"]
    assert "e2e" not in suite.select(available, None, False)
    assert suite.select(available, "none", True)[0] == "e2e"
    with pytest.raises(ValueError, match="unknown benchmark"):
        suite.select(available, "class_cnov", False)


def test_cli_parser_forwards_to_suite_and_report():
    parser = argparse.ArgumentParser(prog="semgan")
    bench_cli.add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "--ops", "class_pool,class_l1", "--e2e", "--out", "x.json", "--threads", "1",
                              "--op-args", "class_pool=--modes fwd"])
    assert args.func is bench_cli.cmd_bench and args.bench_command is None
    argv = bench_cli.suite_argv(args)
    parsed = suite.build_parser().parse_args(argv)
    assert (parsed.ops, parsed.e2e, parsed.out, parsed.threads, parsed.op_args) == \
        ("class_pool,class_l1", True, "x.json", 1, ["class_pool=--modes fwd"])
    assert parsed.small is None
    assert suite.build_parser().parse_args(bench_cli.suite_argv(parser.parse_args(["bench", "--small"]))).small is True
    rep = parser.parse_args(["bench", "report", "--write-readme"])
    assert rep.bench_command == "report"
    assert report.build_parser().parse_args(bench_cli.report_argv(rep)).write_readme


def test_bench_dir_not_found(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_cli, "__file__", str(tmp_path / "site" / "semgan_fast" / "bench_cli.py"))
    monkeypatch.delenv(bench_cli.BENCH_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(bench_cli.BenchDirNotFound, match="source checkout"):
        bench_cli.find_bench_dir()
    monkeypatch.setenv(bench_cli.BENCH_DIR_ENV, BENCH)
    assert bench_cli.find_bench_dir() == os.path.abspath(BENCH)


def test_one_case_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "results" / "cpu.json"
    rc = suite.main(["--ops", "class_pool", "--device", "cpu", "--small", "--warmup", "0", "--rep", "1",
                     "--no-compile", "--threads", "1", "--quiet", "--out", str(out),
                     "--op-args", "class_pool=--modes fwd"])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["environment"]["device"] == suite.cpu_model()
    assert record["device_type"] == "cpu" and record["small"] is True
    assert any("GPU cases skipped" in s for s in record["skipped"])
    rows = record["ops"]["class_pool"]["results"]
    assert {r["provider"] for r in rows} == {"naive", "cpu"}
    assert all(r["mode"] == "fwd" and r["median_ms"] > 0 for r in rows)
    md_path = tmp_path / "report.md"
    assert report.main(["--results", str(out.parent), "--out", str(md_path)]) == 0
    md = md_path.read_text()
    assert "### class_pool" in md and suite.cpu_model() in md
    naive = next(r for r in rows if r["provider"] == "naive" and r["B"] == 1 and r["H"] == 64)
    assert report.fmt_ms(naive) in md


def test_report_e2e_and_inference_targets(tmp_path):
    base = dict(batch=1, height=256, width=512, classes=35, ngf=64)
    inf = [dict(base, provider="eager_naive_fp32", median_ms=100.0, p20_ms=99.0, p80_ms=101.0),
           dict(base, provider="eager_fused_bf16", median_ms=20.0, p20_ms=19.0, p80_ms=21.0),
           dict(base, provider="compile_fused_fp16", median_ms=25.0, p20_ms=24.0, p80_ms=26.0),
           dict(base, provider="tensorrt_fp16", median_ms=math.nan, skipped="TensorRT is not installed")]
    train = [{"preset": "cityscapes", "config": "naive", "batch": 2, "requested_batch": 4, "images_per_s": 2.0,
              "median_ms": 1000.0, "p20_ms": 990.0, "p80_ms": 1010.0, "peak_bytes": 60 * 2**30},
             {"preset": "cityscapes", "config": "ours", "batch": 4, "requested_batch": 4, "images_per_s": 5.0,
              "median_ms": 800.0, "p20_ms": 790.0, "p80_ms": 810.0, "peak_bytes": 20 * 2**30, "speedup_vs_naive": 2.5}]
    rec = {"suite": "semgan bench", "environment": _env(GPU, "cuda"), "device_type": "cuda", "ops": {
        "export": {"op": "generator_inference", "environment": _env(GPU, "cuda"), "results": inf},
        "e2e": {"op": "e2e_train", "environment": _env(GPU, "cuda"), "results": train,
                "max_batch": [{"preset": "cityscapes", "config": "ours", "max_batch": 12,
                               "memory_cap_bytes": 79 * 2**30, "tried": {"8": True, "16": False}}]}}}
    (tmp_path / "gpu.json").write_text(json.dumps(rec))
    results = {r["target"]: r for r in report.evaluate_targets(report.load(report.result_files(str(tmp_path))))}
    assert results["inference_pytorch"]["status"] == "met" and "5.00x" in results["inference_pytorch"]["measured"]
    assert results["inference_tensorrt"]["status"] == "unmeasured"
    assert "TensorRT is not installed" in results["inference_tensorrt"]["measured"]
    assert results["train_speed"]["status"] == "MISSED" and "2.50x" in results["train_speed"]["measured"]
    assert results["train_batch"]["status"] == "met" and "cityscapes: 12" in results["train_batch"]["measured"]
    md = report.render(report.load(report.result_files(str(tmp_path))))
    assert "2 (asked 4: OOM)" in md and "not run" in md


def test_merge_keeps_other_cases(tmp_path):
    out = tmp_path / "cpu.json"
    env = suite.environment("cpu", 1)
    prev = {"suite": "semgan bench", "environment": env, "small": True, "command": "python bench/suite.py --ops a",
            "skipped": ["x"], "ops": {"class_l1": {"op": "class_l1", "results": []}}}
    out.write_text(json.dumps(prev))
    record = {"environment": env, "small": True, "skipped": [], "ops": {}, "device_type": "cpu"}
    suite.merge_previous(record, str(out))
    assert list(record["ops"]) == ["class_l1"] and record["earlier_commands"] == ["python bench/suite.py --ops a"]
    notes = suite.skipped_notes(record, suite.discover(BENCH))
    assert any("GPU cases skipped" in n for n in notes) and any("training-step cases not run" in n for n in notes)
    record["small"] = False
    with pytest.raises(ValueError, match="--merge"):
        suite.merge_previous(record, str(out))
