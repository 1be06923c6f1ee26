"""Every CLI command, through main() and as a console script, and its error messages."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from semgan_fast.cli import main
from semgan_fast.imageio import save_label_map
from test_trainer import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.json"
    config.write_text(json.dumps(tiny_config(root / "run", iterations=2).to_dict()))
    assert main(["train", "--config", str(config), "--no-progress", "--sample-every", "2"]) == 0
    return root


def test_train_writes_checkpoint_samples_and_log(trained, capsys):
    run = trained / "run"
    assert sorted(os.listdir(run / "checkpoints")) == ["ckpt_00000002.pt"]
    grid = Image.open(run / "samples" / "step_00000002.png")
    # rows: 2 samples of 32 px (+2 px pad); columns: labels, real, global, local, final, 2 weight maps
    assert grid.size == (7 * 64 + 6 * 2, 2 * 32 + 2)
    assert [json.loads(line)["step"] for line in open(run / "log.jsonl")] == [1, 2]


def test_train_resumes_and_reports_nothing_to_do(trained, capsys):
    assert main(["train", "--config", str(trained / "tiny.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "will run" in out and "resumed from" in out and "nothing to do" in out


def test_generate_from_directory(trained, tmp_path, capsys):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    save_label_map(torch.randint(0, 4, (32, 64)), str(labels_dir / "a.png"))
    save_label_map(torch.randint(0, 4, (16, 40)), str(labels_dir / "b.png"))  # resized with a note
    ckpt = trained / "run" / "checkpoints" / "ckpt_00000002.pt"
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(labels_dir), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["a_synth.png", "b_synth.png"]
    assert Image.open(tmp_path / "o" / "a_synth.png").size == (64, 32)
    assert "resizing" in capsys.readouterr().out


def test_config_prints_presets(capsys):
    assert main(["config", "--preset", "cityscapes"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"]["num_classes"] == 35 and cfg["model"]["width"] == 512


@pytest.mark.parametrize("argv, message", [
    (["generate", "--checkpoint", "/nonexistent.pt", "--labels", "x"], "checkpoint '/nonexistent.pt' does not exist"),
    (["train", "--preset", "ade20k", "--no-progress"], "needs a root directory (--data-root)"),
    (["train", "--config", "/nonexistent.json"], "--config '/nonexistent.json' does not exist"),
])
def test_errors_are_clear(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_generate_rejects_out_of_range_labels(trained, tmp_path, capsys):
    save_label_map(torch.full((32, 64), 9), str(tmp_path / "bad.png"))
    ckpt = trained / "run" / "checkpoints" / "ckpt_00000002.pt"
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "bad.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "outside [0, 4)" in capsys.readouterr().err


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "semgan")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "train" in result.stdout and "generate" in result.stdout


def test_eval_writes_a_report(trained, tmp_path, capsys):
    ckpt = trained / "run" / "checkpoints" / "ckpt_00000002.pt"
    out = tmp_path / "report.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--fid", "off", "--num-images", "2", "--batch-size", "2",
                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["ssim"] is not None and -1 <= report["metrics"]["ssim"] <= 1
    assert "ssim" in capsys.readouterr().out
