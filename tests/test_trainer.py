"""Trainer: finite losses that go down, exact resume, SIGKILL + resume, distributed equivalence."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from semgan_fast.config import DataConfig, ExperimentConfig, LGGANConfig, TrainConfig
from semgan_fast.train import Trainer
from semgan_fast.train.trainer import unwrapped


def tiny_config(out_dir, iterations=4, **train) -> ExperimentConfig:
    model = LGGANConfig(num_classes=4, use_instance_edge=True, height=32, width=64, ngf=4, spade_hidden=8,
                        num_upsampling_layers="normal", num_resblocks=1, ndf=4, use_vgg=False,
                        param_free_norm="batch")
    data = DataConfig(dataset="synthetic", num_samples=6, seed=1)
    options = dict(batch_size=2, iterations=iterations, out_dir=str(out_dir), checkpoint_every=2, sample_every=1000,
                   log_every=1, tensorboard=False)
    options.update(train)
    return ExperimentConfig(model=model, data=data, train=TrainConfig(**options))


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer._model_state().items()}


def test_losses_finite_and_decreasing(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, iterations=12, lr_g=1e-3, lr_d=4e-3))
    history = []
    for batch in trainer.batches():
        result = trainer.train_step(batch)
        history.append({k: float(v) for k, v in result.losses.items()})
        if trainer.step >= 12:
            break
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert set(history[0]) >= {"g_total", "g_gan", "g_feat", "g_local_l1", "g_class", "d_total"}

    def mean(key, rows):
        return sum(h[key] for h in rows) / len(rows)
    # The adversarial terms oscillate by design; the discriminator's hinge loss and the generator's
    # class-discrimination loss must fall as D and the classifier learn.
    assert mean("d_total", history[-4:]) < mean("d_total", history[:4])
    assert mean("g_class", history[-4:]) < mean("g_class", history[:4])


def test_resume_gives_the_same_next_steps(tmp_path):
    straight = Trainer(tiny_config(tmp_path / "a", iterations=4))
    straight.fit(progress=False)
    first = Trainer(tiny_config(tmp_path / "b", iterations=4))
    first.fit(iterations=2, progress=False)
    resumed = Trainer(tiny_config(tmp_path / "b", iterations=4))
    path = resumed.resume("auto")
    assert path.endswith("ckpt_00000002.pt") and resumed.step == 2
    resumed.fit(progress=False)
    a, b = params(straight), params(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert os.path.isfile(tmp_path / "b" / "log.jsonl")


def _losses_by_step(log_path):
    by_step = {}
    with open(log_path) as f:
        for line in f:
            record = json.loads(line)
            by_step[record["step"]] = record["g_total"]  # a replayed step overwrites: keep the last run's value
    return by_step


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_trajectory(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(tmp_path, iterations=8).to_dict()))
    common = ["--config", str(config), "--checkpoint-every", "2", "--no-progress"]
    env = dict(os.environ)
    cli = [sys.executable, "-m", "semgan_fast.cli", "train"]
    subprocess.run(cli + common + ["--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    reference = _losses_by_step(tmp_path / "straight" / "log.jsonl")

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(cli + common + ["--out", str(killed_dir)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt_dir = killed_dir / "checkpoints"
    while time.time() < deadline:  # kill once the step-4 checkpoint exists, mid-run
        if (ckpt_dir / "ckpt_00000004.pt").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    subprocess.run(cli + common + ["--out", str(killed_dir)], check=True, env=env, capture_output=True)
    resumed = _losses_by_step(killed_dir / "log.jsonl")
    assert sorted(resumed) == sorted(reference) == list(range(1, 9))
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=0, abs=0), step


def _run_recording(trainer, steps):
    """Runs ``steps`` training steps; returns the gradients after each step and the final parameters."""
    grads = []
    for batch in trainer.batches():
        trainer.train_step(batch)
        with unwrapped(trainer.model) as bare:
            grads.append({n: p.grad.detach().clone() for n, p in bare.named_parameters() if p.grad is not None})
        if trainer.step >= steps:
            break
    return grads, params(trainer)


def _ddp_worker(rank, world_size, port, cfg_dict, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(ExperimentConfig.from_dict(cfg_dict), device="cpu")
    result = _run_recording(trainer, cfg_dict["train"]["iterations"])
    if rank == 0:
        torch.save(result, out_path)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_single_process_over_the_global_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    # Without the class loss: it averages over the classes present on each rank, so its DDP value is a
    # mean of per-rank means, not the global-batch mean. Every other term and the synchronised batch
    # norm are global.
    model = dataclasses.replace(tiny_config(tmp_path).model, param_free_norm="syncbatch", use_class_loss=False)
    # With beta1 = 0, Adam moves a parameter by ~lr * sign(g) whatever |g| is, so gradients that are zero up to
    # rounding (biases a later norm cancels, the hinge's final bias) move by noise; a larger epsilon damps that,
    # and over several steps the runs would still drift apart by amplified fp32 noise: compare one step.
    train = dict(iterations=1, adam_eps=1e-4)
    single_cfg = tiny_config(tmp_path / "single", batch_size=4, **train)
    single_cfg.model = model
    torch.set_num_threads(1)
    expected_grads, expected_params = _run_recording(Trainer(single_cfg, device="cpu"), train["iterations"])

    ddp_cfg = tiny_config(tmp_path / "ddp", batch_size=2, **train)
    ddp_cfg.model = model
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_path = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, ddp_cfg.to_dict(), out_path), nprocs=2, join=True)
    got_grads, got_params = torch.load(out_path)

    for step, (want, got) in enumerate(zip(expected_grads, got_grads)):
        assert want.keys() == got.keys()
        # fp32 summation order differs (per-rank sums, then the all-reduce): tolerances scale with each
        # tensor and, for gradients that are zero up to rounding, with the step's largest gradient.
        floor = 1e-4 * max(float(g.abs().max()) for g in want.values())
        for name in want:
            scale = float(want[name].abs().max())
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-2 * scale + floor,
                                       msg=lambda m, step=step, name=name: f"step {step + 1}: {name}: {m}")
            rel = float((got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-12))
            assert rel < 1e-3 or scale < 100 * floor, f"step {step + 1}: {name}: relative error {rel:.2e}"
    # The parameters after the step agree within a small fraction of one Adam step.
    for name, want in expected_params.items():
        lr = single_cfg.train.lr_g if name.startswith("generator.") else single_cfg.train.lr_d
        torch.testing.assert_close(got_params[name], want, rtol=0, atol=0.1 * lr, msg=lambda m, name=name: f"{name}: {m}")


def test_tensorboard_and_jsonl_logging(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard not installed")
    cfg = tiny_config(tmp_path, iterations=2, tensorboard=True, sample_every=2)
    Trainer(cfg).fit(progress=False)
    events = [f for f in os.listdir(tmp_path / "tensorboard") if f.startswith("events.out.tfevents")]
    assert events and os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in records] == [1, 2] and all(r["images_per_s"] > 0 for r in records)
    assert os.path.isfile(tmp_path / "samples" / "step_00000002.png")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(tmp_path, precision):
    if precision == "fp16" and not torch.cuda.is_available():
        pytest.skip("fp16 autocast with GradScaler is a CUDA path (V100); CPU autocast is bf16")
    trainer = Trainer(tiny_config(tmp_path, iterations=1, precision=precision))
    batch = next(trainer.batches())
    result = trainer.train_step(batch)
    assert all(torch.isfinite(v) for v in result.losses.values())
    assert trainer.state_dict()["scaler"] is not None
