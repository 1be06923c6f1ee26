"""Command line: ``semgan train``, ``semgan generate``, ``semgan config``.

``semgan train`` with no arguments trains LGGAN on the embedded synthetic dataset (CPU-sized
preset) and writes checkpoints, sample grids and a JSON-lines log under ``runs/synthetic``.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys

import torch
import torch.nn.functional as F

from .config import PRESETS, ExperimentConfig, preset


def _apply_overrides(cfg: ExperimentConfig, args) -> ExperimentConfig:
    m, d, t = cfg.model, cfg.data, cfg.train
    if args.ablation:
        m = m.ablation(args.ablation)
    if args.no_vgg:
        m = dataclasses.replace(m, use_vgg=False)
    if args.vgg_weights:
        m = dataclasses.replace(m, vgg_weights=args.vgg_weights, use_vgg=True)
    for name in ("data_root", "num_samples"):
        if getattr(args, name) is not None:
            d = dataclasses.replace(d, **{"root" if name == "data_root" else name: getattr(args, name)})
    for name in ("iterations", "batch_size", "seed", "device", "out", "checkpoint_every", "sample_every", "log_every",
                 "precision", "compile", "channels_last"):
        value = getattr(args, name)
        if value is not None:
            t = dataclasses.replace(t, **{"out_dir" if name == "out" else name: value})
    return ExperimentConfig(model=m, data=d, train=t)


def _describe(cfg: ExperimentConfig, device) -> str:
    m, d, t = cfg.model, cfg.data, cfg.train
    rows = [
        f"model     LGGAN  classes={m.num_classes}  instance_edge={m.use_instance_edge}  {m.height}x{m.width}  "
        f"ngf={m.ngf}  local_generators={m.num_local_generators}  combine={m.local_combine}  "
        f"class_loss={m.use_class_loss}  weight_map={m.use_weight_map}  vgg={m.use_vgg}",
        f"data      {d.dataset}" + (f" ({d.num_samples} samples, seed {d.seed})" if d.dataset == "synthetic"
                                    else f" root={d.root}"),
        f"train     {t.iterations} iterations  batch {t.batch_size}  lr G {t.lr_g} / D {t.lr_d}  "
        f"betas ({t.beta1}, {t.beta2})  decay from {t.decay_start}  device {device}  precision {t.precision}"
        + ("  compile" if t.compile else "") + ("  channels_last" if t.channels_last else ""),
        f"output    {t.out_dir}  (checkpoints every {t.checkpoint_every}, samples every {t.sample_every})",
    ]
    return "\n".join(rows)


def _load_config(path: str) -> ExperimentConfig:
    """An ExperimentConfig from a JSON file as written by ``semgan config``."""
    if not os.path.isfile(path):
        raise ValueError(f"--config {path!r} does not exist")
    try:
        with open(path) as f:
            return ExperimentConfig.from_dict(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"--config {path!r} is not a valid configuration: {exc}") from exc


def cmd_train(args) -> int:
    from .train import Trainer
    from .train.trainer import resolve_device

    cfg = _apply_overrides(_load_config(args.config) if args.config else preset(args.preset), args)
    device = resolve_device(cfg.train.device)
    print("semgan train: will run\n" + _describe(cfg, device), flush=True)
    trainer = Trainer(cfg, device)
    resumed = trainer.resume(args.resume)
    if resumed:
        print(f"resumed from {resumed} at step {trainer.step}", flush=True)
    if trainer.step >= cfg.train.iterations:
        print(f"already at step {trainer.step} >= {cfg.train.iterations}; nothing to do")
        return 0
    last = trainer.fit(progress=not args.no_progress)
    latest = trainer.checkpoints.checkpoints()[-1]
    print(f"done: step {trainer.step}; checkpoint {latest}; samples in {os.path.join(cfg.train.out_dir, 'samples')}")
    print("last losses: " + json.dumps({k: round(v, 4) for k, v in last.items()}))
    return 0


def _label_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.png")))
        if not files:
            raise ValueError(f"--labels directory {path!r} holds no .png label maps")
        return files
    if not os.path.isfile(path):
        raise ValueError(f"--labels {path!r} does not exist")
    return [path]


def cmd_generate(args) -> int:
    from .imageio import load_label_map, save_image
    from .models import LGGANModel
    from .train.checkpoint import load_checkpoint
    from .train.trainer import resolve_device

    state = load_checkpoint(args.checkpoint)
    cfg = ExperimentConfig.from_dict(state["config"])
    device = resolve_device(args.device)
    model = LGGANModel(dataclasses.replace(cfg.model, use_vgg=False))
    # VGG weights are a training-only dependency: drop them from the state before loading.
    model.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith("vgg.")})
    model.to(device).eval()
    files = _label_files(args.labels)
    os.makedirs(args.out, exist_ok=True)
    m = cfg.model
    print(f"semgan generate: {len(files)} label map(s) -> {args.out} with the step-{state['step']} generator "
          f"({m.num_classes} classes, {m.height}x{m.width}) on {device}")
    for path in files:
        labels = load_label_map(path, m.num_classes)
        instance = None
        if m.use_instance_edge:
            instance_path = os.path.join(args.instances, os.path.basename(path)) if args.instances else None
            # Without instance ids the class map itself gives the boundaries (one instance per class region).
            instance = load_label_map(instance_path) if instance_path else labels
        size = (m.height, m.width)
        if tuple(labels.shape) != size:
            print(f"  note: resizing {path} from {tuple(labels.shape)} to {size} (nearest)")
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0].long().to(device)
        if instance is not None:
            instance = F.interpolate(instance[None, None].float(), size=size, mode="nearest")[0].long().to(device)
        with torch.no_grad():
            out = model.generate(labels, instance)
        target = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + "_synth.png")
        save_image(out.final[0], target)
        print(f"  {path} -> {target}")
    return 0


def cmd_eval(args) -> int:
    from .eval.evaluate import evaluate

    fid = {"auto": None, "on": True, "off": False}[args.fid]
    print(f"semgan eval: {args.checkpoint} on {args.data_root or 'the checkpoint dataset'} "
          f"(split {args.split or 'validation'}) -> {args.out}")
    report = evaluate(args.checkpoint, data_root=args.data_root, split=args.split, num_images=args.num_images,
                      batch_size=args.batch_size, device=args.device, inception_weights=args.inception_weights,
                      segmenter=args.segmenter, segmenter_checkpoint=args.segmenter_checkpoint, fid=fid,
                      out_json=args.out)
    print(json.dumps(report["metrics"], indent=2))
    for note in report.get("notes", []):
        print(f"note: {note}")
    return 0


def cmd_config(args) -> int:
    cfg = preset(args.preset)
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semgan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train LGGAN (default: synthetic dataset, CPU-sized)")
    train.add_argument("--preset", default="synthetic", choices=sorted(PRESETS))
    train.add_argument("--config", help="JSON configuration (as printed by `semgan config`); replaces --preset")
    train.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    train.add_argument("--compile", action="store_true", default=None, help="torch.compile G and D")
    train.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    train.add_argument("--data-root", dest="data_root", help="dataset root (real datasets)")
    train.add_argument("--num-samples", dest="num_samples", type=int, help="synthetic dataset size")
    train.add_argument("--iterations", type=int)
    train.add_argument("--batch-size", dest="batch_size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    train.add_argument("--out", help="output directory (checkpoints, samples, log.jsonl)")
    train.add_argument("--resume", default="auto",
                       help="auto (newest checkpoint in --out, if any), none, or a checkpoint path")
    train.add_argument("--ablation", choices=["S1", "S2", "S3", "S4", "S5"], help="LGGAN Table 3 row")
    train.add_argument("--no-vgg", dest="no_vgg", action="store_true", help="disable the VGG19 perceptual loss")
    train.add_argument("--vgg-weights", dest="vgg_weights", help="torchvision VGG19 weights file")
    train.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    train.add_argument("--sample-every", dest="sample_every", type=int)
    train.add_argument("--log-every", dest="log_every", type=int)
    train.add_argument("--no-progress", dest="no_progress", action="store_true")
    train.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="synthesise images for label maps with a trained checkpoint")
    gen.add_argument("--checkpoint", required=True)
    gen.add_argument("--labels", required=True, help="a PNG of class ids, or a directory of them")
    gen.add_argument("--instances", help="directory of instance-id PNGs with the same file names")
    gen.add_argument("--out", default="generated")
    gen.add_argument("--device", default="auto")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="FID, SSIM/PSNR/SD and (with a segmenter) mIoU of a checkpoint")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data-root", dest="data_root")
    ev.add_argument("--split")
    ev.add_argument("--num-images", dest="num_images", type=int)
    ev.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--inception-weights", dest="inception_weights",
                    help="pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache)")
    ev.add_argument("--fid", choices=["auto", "on", "off"], default="auto")
    ev.add_argument("--segmenter", help="module:factory or file.py:factory returning a segmentation network")
    ev.add_argument("--segmenter-checkpoint", dest="segmenter_checkpoint")
    ev.add_argument("--out", default="eval_report.json", help="JSON report path")
    ev.set_defaults(func=cmd_eval)

    cfg = sub.add_parser("config", help="print a preset's full configuration as JSON")
    cfg.add_argument("--preset", default="synthetic", choices=sorted(PRESETS))
    cfg.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input or missing files: a message, exit code 2
        print(f"semgan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
