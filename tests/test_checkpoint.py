"""Atomic checkpoints, validation and fallback to the previous file."""
import os

import pytest
import torch

from semgan_fast.train.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint


def _state(step):
    return {"step": step, "config": {}, "model": {"w": torch.full((2,), float(step))}}


def test_round_trip_and_no_temp_files(tmp_path):
    path = str(tmp_path / "c.pt")
    save_checkpoint(_state(3), path)
    assert load_checkpoint(path)["step"] == 3
    assert os.listdir(tmp_path) == ["c.pt"]


def test_manager_keeps_newest_and_skips_corrupt(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        mgr.save(_state(step), step)
    assert [os.path.basename(p) for p in mgr.checkpoints()] == ["ckpt_00000002.pt", "ckpt_00000003.pt"]
    newest = mgr.checkpoints()[-1]
    with open(newest, "r+b") as f:  # truncate: simulates a crash mid-copy or a bad disk
        f.truncate(100)
    with pytest.warns(UserWarning, match="corrupt"):
        state, path = mgr.load_latest()
    assert state["step"] == 2 and path.endswith("ckpt_00000002.pt")


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    foreign = str(tmp_path / "foreign.pt")
    torch.save({"step": 1}, foreign)
    with pytest.raises(ValueError, match="not a semgan_fast checkpoint"):
        load_checkpoint(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="garbage.pt.*corrupt"):
        load_checkpoint(str(garbage))


def test_best_checkpoint_is_outside_the_rotation(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep=1)
    assert mgr.read_best_record() is None
    mgr.save_best({**_state(1), "best": {"metric": "l1", "value": 0.5, "step": 1}})
    for step in (2, 3):
        mgr.save(_state(step), step)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "ckpt_00000003.pt"]
    state, path = mgr.load_latest()               # resuming takes the newest state, never best.pt
    assert state["step"] == 3 and path.endswith("ckpt_00000003.pt")
    assert mgr.read_best_record() == {"metric": "l1", "value": 0.5, "step": 1}
    assert load_checkpoint(mgr.best_path)["step"] == 1
    with open(mgr.best_path, "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="unusable best checkpoint"):
        assert mgr.read_best_record() is None
    mgr.save_best(_state(4))                       # a checkpoint without a best record is not a best.pt
    with pytest.warns(UserWarning, match="no best-metric record"):
        assert mgr.read_best_record() is None
