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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_equals_single_process_over_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    # Every loss term is global under DDP: the synchronised batch norm, the means over equal per-rank batches,
    # and the class loss, whose normaliser (valid classes) is all-reduced. In float64 (precision "fp64") the
    # rounding noise of gradients that are zero in exact arithmetic (~1e-17) stays far below Adam's epsilon,
    # so even Adam with beta1 = 0 (an update of ~lr * sign(g)) cannot amplify it: the runs agree over N steps.
    steps = 3
    # 8 classes: the synthetic samples then hold 5-7 classes each, so the ranks' valid-class counts differ
    # (13 vs 12 at step 1) and a per-rank class-loss normaliser would break the equivalence.
    model = dataclasses.replace(tiny_config(tmp_path).model, num_classes=8, param_free_norm="syncbatch")
    assert model.use_class_loss and model.lambda_class > 0
    train = dict(iterations=steps, precision="fp64")
    single_cfg = tiny_config(tmp_path / "single", batch_size=4, **train)
    single_cfg.model = model
    torch.set_num_threads(1)
    expected_grads, expected_params = _run_recording(Trainer(single_cfg, device="cpu"), steps)

    ddp_cfg = tiny_config(tmp_path / "ddp", batch_size=2, **train)
    ddp_cfg.model = model
    out_path = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp_cfg.to_dict(), out_path), nprocs=2, join=True)
    got_grads, got_params = torch.load(out_path)

    assert len(expected_grads) == len(got_grads) == steps
    for step, (want, got) in enumerate(zip(expected_grads, got_grads)):
        assert want.keys() == got.keys()
        assert any(name.startswith("generator.classifier.") for name in want)   # the class loss trains
        # Summation order differs (per-rank sums, then the all-reduce): float64 rounding only.
        floor = 1e-12 * max(float(g.abs().max()) for g in want.values())
        for name in want:
            assert want[name].dtype == torch.float64
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9 * float(want[name].abs().max())
                                       + floor, msg=lambda m, step=step, name=name: f"step {step + 1}: {name}: {m}")
    # After N Adam steps of lr ~1e-4 the parameters agree to far below one step.
    assert expected_params.keys() == got_params.keys()
    for name, want in expected_params.items():
        if not want.is_floating_point():
            assert torch.equal(got_params[name], want), name
            continue
        torch.testing.assert_close(got_params[name], want, rtol=0, atol=1e-5 * single_cfg.train.lr_g,
                                   msg=lambda m, name=name: f"{name}: {m}")


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


# ------------------------------------------------------------------------------ in-training evaluation
def _scripted_validate(trainer, values, metric="l1"):
    """Replaces the trainer's validation with a scripted sequence of ``metric`` values (the best-checkpoint
    logic under test does not depend on how the value was measured)."""
    queue = list(values)
    trainer.validate = lambda: {metric: queue.pop(0)}
    return queue


def _best_record(path):
    from semgan_fast.train.checkpoint import load_checkpoint

    state = load_checkpoint(str(path))
    return state["step"], state["best"]


def test_eval_is_off_by_default():
    t = TrainConfig()
    assert t.eval_every == 0 and t.precision == "fp32"


def test_best_checkpoint_follows_the_metric_and_survives_rotation(tmp_path):
    # keep_checkpoints=1 with a checkpoint every step: every numbered checkpoint but the newest is deleted,
    # best.pt stays. Lower is better for l1: 0.5, 0.3 (better), 0.4 (worse: best.pt untouched), 0.2 (better).
    cfg = tiny_config(tmp_path, iterations=4, eval_every=1, eval_metric="l1", keep_checkpoints=1, checkpoint_every=1)
    trainer = Trainer(cfg, device="cpu")
    _scripted_validate(trainer, [0.5, 0.3, 0.4, 0.2])
    best_path = tmp_path / "checkpoints" / "best.pt"
    expected_best_step = {1: 1, 2: 2, 3: 2, 4: 4}
    for batch in trainer.batches():
        trainer.train_step(batch)
        record = trainer.evaluate_and_keep_best()
        trainer.save()
        assert record["improved"] == (trainer.step != 3)
        assert _best_record(best_path) == (expected_best_step[trainer.step],
                                           {"metric": "l1", "value": [0.5, 0.3, 0.3, 0.2][trainer.step - 1],
                                            "step": expected_best_step[trainer.step]})
        assert sorted(os.listdir(tmp_path / "checkpoints")) == ["best.pt", f"ckpt_{trainer.step:08d}.pt"]
        if trainer.step >= 4:
            break

    # Higher is better for psnr.
    cfg = tiny_config(tmp_path / "psnr", iterations=3, eval_every=1, eval_metric="psnr")
    trainer = Trainer(cfg, device="cpu")
    _scripted_validate(trainer, [10.0, 12.0, 11.0], "psnr")
    trainer.fit(progress=False)
    assert _best_record(tmp_path / "psnr" / "checkpoints" / "best.pt")[1] == {"metric": "psnr", "value": 12.0,
                                                                             "step": 2}


def test_resume_keeps_the_best_value_and_never_overwrites_a_better_best(tmp_path):
    cfg = tiny_config(tmp_path, iterations=4, eval_every=1, eval_metric="l1", checkpoint_every=2)
    best_path = tmp_path / "checkpoints" / "best.pt"
    first = Trainer(cfg, device="cpu")
    _scripted_validate(first, [0.5, 0.4, 0.1])
    for batch in first.batches():       # steps 1-3 as fit does them; the run dies after step 3's evaluation
        first.train_step(batch)
        first.evaluate_and_keep_best()
        if first.step % 2 == 0:
            first.save()
        if first.step == 3:
            break
    assert _best_record(best_path) == (3, {"metric": "l1", "value": 0.1, "step": 3})

    # The newest numbered checkpoint (step 2) knows only 0.4; best.pt's 0.1 must win, so the resumed run's
    # worse values (0.3 at step 3, 0.35 at step 4) leave best.pt alone.
    resumed = Trainer(cfg, device="cpu")
    assert resumed.resume("auto").endswith("ckpt_00000002.pt")
    assert resumed.best == {"metric": "l1", "value": 0.1, "step": 3}
    _scripted_validate(resumed, [0.3, 0.35])
    resumed.fit(progress=False)
    assert _best_record(best_path) == (3, {"metric": "l1", "value": 0.1, "step": 3})
    evals = [r for r in map(json.loads, open(tmp_path / "log.jsonl")) if "eval" in r]
    assert [(r["step"], r["improved"], r["best"]) for r in evals][-2:] == [(3, False, 0.1), (4, False, 0.1)]

    # The checkpoint state itself carries the best record: without best.pt the resumed value is still 0.1.
    os.remove(best_path)
    again = Trainer(cfg, device="cpu")
    assert again.resume("auto").endswith("ckpt_00000004.pt")
    assert again.best == {"metric": "l1", "value": 0.1, "step": 3}


def test_real_evaluation_changes_nothing_in_training_and_best_pt_is_a_normal_checkpoint(tmp_path):
    from semgan_fast.eval import evaluate

    plain = Trainer(tiny_config(tmp_path / "plain", iterations=3), device="cpu")
    plain.fit(progress=False)
    cfg = tiny_config(tmp_path / "eval", iterations=3, eval_every=1, eval_metric="l1", eval_images=4,
                      eval_batch_size=3, keep_checkpoints=1)
    evaluated = Trainer(cfg, device="cpu")
    assert len(evaluated.val_dataset) == 6 and evaluated.eval_split == "val"
    evaluated.fit(progress=False)
    # Evaluation runs on forked RNG states and the bare generator in eval mode: same trajectory bit for bit.
    a, b = params(plain), params(evaluated)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not (tmp_path / "plain" / "checkpoints" / "best.pt").exists()
    assert load_checkpoint_state(tmp_path / "plain" / "checkpoints" / "ckpt_00000003.pt")["best"] is None

    records = [json.loads(line) for line in open(tmp_path / "eval" / "log.jsonl")]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    assert all(set(r["eval"]) == {"l1", "psnr", "ssim"} for r in evals)
    values = [r["eval"]["l1"] for r in evals]
    best_step = 1 + values.index(min(values))
    step, best = _best_record(tmp_path / "eval" / "checkpoints" / "best.pt")
    assert step == best_step and best == {"metric": "l1", "value": min(values), "step": best_step}
    # `semgan eval --checkpoint best.pt --split val` measures the same model on the same images.
    report = evaluate(str(tmp_path / "eval" / "checkpoints" / "best.pt"), split="val", num_images=4, batch_size=2,
                      device="cpu", fid=False)
    assert report["step"] == best_step and report["dataset"]["split"] == "val"
    assert report["metrics"]["l1"] == pytest.approx(min(values), rel=1e-5)


def load_checkpoint_state(path):
    from semgan_fast.train.checkpoint import load_checkpoint

    return load_checkpoint(str(path))


def test_fid_evaluation_with_a_weights_file(tmp_path):
    from semgan_fast.eval.fid import FIDInceptionV3

    net = FIDInceptionV3()
    for module in net.modules():     # variance-preserving random weights: O(1) pool3 features
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    cfg = tiny_config(tmp_path, iterations=2, eval_every=1, eval_metric="fid", eval_images=2,
                      inception_weights=str(weights))
    trainer = Trainer(cfg, device="cpu")
    trainer.fit(progress=False)
    evals = [r for r in map(json.loads, open(tmp_path / "log.jsonl")) if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2] and all(r["eval"]["fid"] > 0 for r in evals)
    assert trainer._real_stats is not None and trainer._real_stats.count == 2   # real features computed once
    assert _best_record(tmp_path / "checkpoints" / "best.pt")[1]["metric"] == "fid"


def _cityscapes_train_only(root):
    import numpy as np
    from PIL import Image

    stem = "aachen_000000_000001"
    label = np.zeros((32, 64), np.uint8)
    label[:, 32:] = 3
    for path, arr in ((f"{root}/leftImg8bit/train/aachen/{stem}_leftImg8bit.png",
                       np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)),
                      (f"{root}/gtFine/train/aachen/{stem}_gtFine_labelIds.png", label),
                      (f"{root}/gtFine/train/aachen/{stem}_gtFine_instanceIds.png", label)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(arr).save(path)


def test_evaluation_setup_errors_come_at_start(tmp_path, monkeypatch):
    from semgan_fast.eval.fid import FID_WEIGHTS_FILENAME

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    with pytest.raises(ValueError, match=f"eval_metric='fid'.*{FID_WEIGHTS_FILENAME}"):
        Trainer(tiny_config(tmp_path, eval_every=10), device="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        Trainer(tiny_config(tmp_path, eval_every=10, inception_weights=str(tmp_path / "nope.pth")), device="cpu")
    with pytest.raises(ValueError, match="eval_metric must be one of"):
        Trainer(tiny_config(tmp_path, eval_every=10, eval_metric="miou"), device="cpu")
    # A real data set whose validation split is missing: the error names the split's directory.
    root = str(tmp_path / "cityscapes")
    _cityscapes_train_only(root)
    cfg = tiny_config(tmp_path, eval_every=10, eval_metric="l1")
    cfg.data = DataConfig(dataset="cityscapes", root=root)
    with pytest.raises(ValueError, match=f"validation split 'val'.*{root}/leftImg8bit/val"):
        Trainer(cfg, device="cpu")
    cfg.train.eval_every = 0
    Trainer(cfg, device="cpu")         # evaluation off: the validation split is not needed


# ---------------------------------------------------------------------------------------- ECGAN under DDP
def _ecgan_config(out_dir, batch_size, iterations=2):
    from semgan_fast.config import ECGANConfig

    model = ECGANConfig(num_classes=5, height=32, width=64, ngf=8, spade_hidden=8, num_upsampling_layers="normal",
                        ndf=4, n_layers_d=2, use_vgg=False, param_free_norm="syncbatch", class_hidden=4, proj_dim=8,
                        contrast_stride=4, max_samples=64, max_views=4, segmenter_width=4, sim_stride=2,
                        memory_bank=True, memory_size=64, memory_pixels_per_image=3)
    return ExperimentConfig(model=model, data=DataConfig(dataset="synthetic", num_samples=8, seed=1),
                            train=TrainConfig(batch_size=batch_size, iterations=iterations, out_dir=str(out_dir),
                                              beta2=0.999, checkpoint_every=1000, sample_every=1, log_every=1,
                                              tensorboard=False, eval_every=1, eval_metric="l1", eval_images=2))


def _ecgan_ddp_worker(rank, world_size, port, cfg_dict, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(ExperimentConfig.from_dict(cfg_dict), device="cpu")
    # Sample grids and evaluations run on rank 0 only (every step here): they must neither deadlock nor
    # desynchronise the ranks' random streams (the memory bank's pixel draws).
    trainer.fit(progress=False)
    with unwrapped(trainer.model) as bare:
        segmenter = {n: (p.detach().clone(), p.grad.detach().clone())
                     for n, p in bare.label_generator.named_parameters()}
        bank = {k: v.clone() for k, v in bare.memory_bank.state_dict().items()}
    torch.save({"segmenter": segmenter, "bank": bank, "best": trainer.best}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ecgan_two_process_segmenter_and_memory_bank_are_synchronised(tmp_path):
    import torch.multiprocessing as mp

    from semgan_fast.data import build_dataset
    from semgan_fast.data.sampler import ResumableSampler
    from semgan_fast.ops.class_memory_bank import ClassMemoryBank

    steps = 2
    cfg = _ecgan_config(tmp_path / "ddp", batch_size=2, iterations=steps)
    initial = Trainer(cfg, device="cpu")
    with unwrapped(initial.model) as bare:
        initial_segmenter = {n: p.detach().clone() for n, p in bare.label_generator.named_parameters()}
    mp.spawn(_ecgan_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))

    # The segmenter trains (its own data differ per rank) yet stays identical: its gradients are averaged.
    for name, (param, grad) in r0["segmenter"].items():
        assert torch.equal(param, r1["segmenter"][name][0]) and torch.equal(grad, r1["segmenter"][name][1]), name
        assert not torch.equal(param, initial_segmenter[name]), name
    # Rank 0 evaluated, every rank learned the result; best.pt comes from rank 0.
    assert r0["best"] == r1["best"] and r0["best"]["metric"] == "l1" and r0["best"]["step"] in (1, 2)
    assert _best_record(tmp_path / "ddp" / "checkpoints" / "best.pt")[1] == r0["best"]
    # Both banks hold every rank's anchors, bit for bit the same.
    for key, value in r0["bank"].items():
        assert torch.equal(value, r1["bank"][key]), key
    # ... exactly the global batch's: the fill counts and pointers of a bank fed the global batches in one
    # process (they depend on the labels only, not on the embeddings or the pixels drawn).
    model = cfg.model
    reference = ClassMemoryBank(model.num_classes, model.proj_dim, model.memory_size, model.memory_pixels_per_image)
    dataset = build_dataset(cfg.data, model)
    order = ResumableSampler(len(dataset), seed=cfg.data.seed + cfg.train.seed, flip=cfg.data.flip)
    items = iter(order)
    h, w = model.height // model.contrast_stride, model.width // model.contrast_stride
    for _ in range(steps):
        labels = torch.stack([dataset[next(items)]["label"] for _ in range(2 * cfg.train.batch_size)])
        reference.push(torch.randn(labels.shape[0], model.proj_dim, h, w), labels)
    for key in ("pixel_filled", "pixel_ptr", "segment_filled", "segment_ptr"):
        assert torch.equal(r0["bank"][key], getattr(reference, key)), key
