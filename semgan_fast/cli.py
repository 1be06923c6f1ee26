"""Command line: ``semgan train``, ``semgan generate``, ``semgan eval``, ``semgan edges``, ``semgan config``.

``semgan train`` with no arguments trains LGGAN on the embedded synthetic dataset (CPU-sized
preset) and writes checkpoints, sample grids and a JSON-lines log under ``runs/synthetic``.
``semgan train --model ecgan`` / ``--model lggan-crossview`` train ECGAN / cross-view LGGAN (synthetic
by default; ``--preset cityscapes`` etc. picks that model's preset). ``semgan edges`` writes the Canny
ground-truth edge maps of a data set as PNGs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch
import torch.nn.functional as F

from .bench_cli import add_bench_parser
from .export.cli import add_export_parsers, label_files
from .config import MODEL_TYPES, PRESETS, ExperimentConfig, preset, preset_for


def _apply_overrides(cfg: ExperimentConfig, args) -> ExperimentConfig:
    m, d, t = cfg.model, cfg.data, cfg.train
    if args.ablation:
        m = m.ablation(args.ablation)
    if args.no_vgg:
        m = dataclasses.replace(m, use_vgg=False)
    if args.vgg_weights:
        m = dataclasses.replace(m, vgg_weights=args.vgg_weights, use_vgg=True)
    if getattr(args, "skip_bad", None):
        d = dataclasses.replace(d, skip_bad=True)
    if getattr(args, "edge_root", None):
        d = dataclasses.replace(d, edge_root=args.edge_root)
    for name in ("data_root", "num_samples"):
        if getattr(args, name) is not None:
            d = dataclasses.replace(d, **{"root" if name == "data_root" else name: getattr(args, name)})
    for name in ("iterations", "batch_size", "seed", "device", "out", "checkpoint_every", "sample_every", "log_every",
                 "precision", "compile", "channels_last", "keep_checkpoints", "eval_every", "eval_metric", "eval_images",
                 "eval_batch_size", "eval_split", "inception_weights"):
        value = getattr(args, name)
        if value is not None:
            t = dataclasses.replace(t, **{"out_dir" if name == "out" else name: value})
    return ExperimentConfig(model=m, data=d, train=t, model_type=cfg.model_type)


def _describe(cfg: ExperimentConfig, device) -> str:
    m, d, t = cfg.model, cfg.data, cfg.train
    common = (f"classes={m.num_classes}  instance_edge={m.use_instance_edge}  {m.height}x{m.width}  ngf={m.ngf}  "
              f"vgg={m.use_vgg}")
    if cfg.model_type == "ecgan":
        model = (f"model     ECGAN  {common}  edge={m.use_edge}  transfer={m.use_transfer}  "
                 f"semantic_preserving={m.use_semantic_preserving}  label_generator={m.use_label_generator}"
                 f"({m.segmenter}, {m.segmenter_mode})  contrastive={m.use_contrastive}  "
                 f"class_specific={m.use_class_specific}  multimodal={m.multimodal}")
    else:
        name = "LGGAN cross-view" if cfg.model_type == "lggan-crossview" else "LGGAN"
        model = (f"model     {name}  {common}  local_generators={m.num_local_generators}  combine={m.local_combine}  "
                 f"class_loss={m.use_class_loss}  weight_map={m.use_weight_map}")
    rows = [
        model,
        f"data      {d.dataset}" + (f" ({d.num_samples} samples, seed {d.seed})" if d.dataset == "synthetic"
                                    else f" root={d.root}"),
        f"train     {t.iterations} iterations  batch {t.batch_size}  lr G {t.lr_g} / D {t.lr_d}  "
        f"betas ({t.beta1}, {t.beta2})  decay from {t.decay_start}  device {device}  precision {t.precision}"
        + ("  compile" if t.compile else "") + ("  channels_last" if t.channels_last else ""),
        f"output    {t.out_dir}  (checkpoints every {t.checkpoint_every}, samples every {t.sample_every})",
    ]
    if t.eval_every:
        rows.append(f"eval      every {t.eval_every} steps: {t.eval_metric} on {t.eval_images or 'all'} images of the "
                    f"{t.eval_split or 'validation'} split; best checkpoint -> {t.out_dir}/checkpoints/best.pt")
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


def _train_config(args) -> ExperimentConfig:
    """--config (checked against --model) or the --model's preset named --preset."""
    if args.config:
        cfg = _load_config(args.config)
        if args.model and cfg.model_type != args.model:
            raise ValueError(f"--model {args.model} does not match the model_type {cfg.model_type!r} of --config "
                             f"{args.config!r}")
        return cfg
    return preset_for(args.model or getattr(args, "model_default", "lggan"), args.preset)


def cmd_train(args) -> int:
    from .train import Trainer
    from .train.trainer import resolve_device

    cfg = _apply_overrides(_train_config(args), args)
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


def _matching_file(directory: str, stem: str, what: str) -> str:
    """The file of ``directory`` whose name without extension is ``stem`` (png, jpg, jpeg)."""
    for ext in (".png", ".jpg", ".jpeg"):
        path = os.path.join(directory, stem + ext)
        if os.path.isfile(path):
            return path
    raise ValueError(f"{what} for {stem!r} not found in {directory!r} (expected {stem}.png/.jpg)")


def _load_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """An RGB image file -> float [1, 3, H, W] in [-1, 1] at ``size`` (bicubic)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32)
    except Exception as exc:
        raise ValueError(f"image {path!r} could not be read: {exc}") from exc
    return (torch.from_numpy(arr.copy()).permute(2, 0, 1) / 127.5 - 1.0).unsqueeze(0)


def cmd_generate(args) -> int:
    from .imageio import load_label_map, save_image
    from .models import build_inference_model
    from .train.checkpoint import load_checkpoint
    from .train.trainer import resolve_device

    state = load_checkpoint(args.checkpoint)
    cfg = ExperimentConfig.from_dict(state["config"])
    device = resolve_device(args.device)
    # Training-only parts (VGG, label generator, memory bank) are not built; the generator loads strictly.
    model = build_inference_model(cfg, state["model"])
    model.to(device).eval()
    files = label_files(args.labels)
    m = cfg.model
    crossview = cfg.model_type == "lggan-crossview"
    if crossview and not args.sources:
        raise ValueError("a cross-view checkpoint needs --sources: a directory of source-view images with the "
                         "label maps' file names")
    os.makedirs(args.out, exist_ok=True)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    print(f"semgan generate: {len(files)} label map(s) -> {args.out} with the step-{state['step']} {cfg.model_type} "
          f"generator ({m.num_classes} classes, {m.height}x{m.width}) on {device}")
    size = (m.height, m.width)
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        labels = load_label_map(path, m.num_classes)
        instance = None
        if m.use_instance_edge:
            instance_path = os.path.join(args.instances, os.path.basename(path)) if args.instances else None
            # Without instance ids the class map itself gives the boundaries (one instance per class region).
            instance = load_label_map(instance_path) if instance_path else labels
        if tuple(labels.shape) != size:
            print(f"  note: resizing {path} from {tuple(labels.shape)} to {size} (nearest)")
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0].long().to(device)
        if instance is not None:
            instance = F.interpolate(instance[None, None].float(), size=size, mode="nearest")[0].long().to(device)
        with torch.no_grad():
            if crossview:
                source = _load_image(_matching_file(args.sources, stem, "source view"), size).to(device)
                out = model.generate(labels, source)
            else:
                out = model.generate(labels, instance)
        target = os.path.join(args.out, stem + "_synth.png")
        save_image(out.final[0], target)
        extra = ""
        if cfg.model_type == "ecgan" and out.edge is not None:
            save_image(out.edge[0], os.path.join(args.out, stem + "_edge.png"))
            extra = f" (+ {stem}_edge.png)"
        print(f"  {path} -> {target}{extra}")
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


def _edge_names(dataset) -> list[str]:
    """Output file stem per dataset index: the image file's name for real data, the index otherwise."""
    if hasattr(dataset, "triples"):
        return [os.path.splitext(os.path.basename(t[0]))[0] for t in dataset.triples]
    if hasattr(dataset, "files"):
        return [os.path.splitext(os.path.basename(f))[0] for f in dataset.files]
    return [f"{i:06d}" for i in range(len(dataset))]


def _native_image(dataset, index: int):
    """The dataset's original image file (cross-view: the target panel) as a PIL RGB image, or None."""
    from PIL import Image

    if hasattr(dataset, "triples"):
        with Image.open(dataset.triples[index][0]) as img:
            return img.convert("RGB")
    if hasattr(dataset, "files") and hasattr(dataset, "_panels"):
        return dataset._panels(dataset.files[index])[1 if dataset.direction == "a2g" else 0]
    return None


def cmd_edges(args) -> int:
    import numpy as np
    from PIL import Image

    from .data import build_dataset
    from .edges import canny
    from .train.trainer import resolve_device

    cfg = _train_config(args)
    if args.data_root:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=args.data_root))
    m = cfg.model
    low, high = getattr(m, "canny_low", 0.075), getattr(m, "canny_high", 0.175)
    mode = args.hysteresis or getattr(m, "canny_hysteresis", "public")
    device = resolve_device(args.device)
    dataset = build_dataset(cfg.data, m, args.split)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    names = _edge_names(dataset)
    os.makedirs(args.out, exist_ok=True)
    where = "native resolution, then resized bicubically" if args.native_resolution else f"{m.height}x{m.width}"
    print(f"semgan edges: {count} image(s) of {cfg.data.dataset} -> {args.out} (Canny {low}/{high}, "
          f"hysteresis {mode}, {where}) on {device}")
    for start in range(0, count, args.batch_size):
        indices = list(range(start, min(count, start + args.batch_size)))
        if args.native_resolution:
            for i in indices:
                img = _native_image(dataset, i)
                if img is None:
                    raise ValueError("--native-resolution needs a data set of image files (not the synthetic one)")
                rgb = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)[None].to(device)
                edges = canny(rgb, low, high, mode, input_range="[0,255]")[0, 0]
                edge_img = Image.fromarray(edges.to(torch.uint8).mul(255).cpu().numpy())
                edge_img.resize((m.width, m.height), Image.BICUBIC).save(os.path.join(args.out, names[i] + ".png"))
            continue
        images = torch.stack([dataset[i]["image"] for i in indices]).to(device)
        edges = canny(images, low, high, mode)[:, 0].to(torch.uint8).mul(255).cpu().numpy()
        for i, edge in zip(indices, edges):
            Image.fromarray(edge).save(os.path.join(args.out, names[i] + ".png"))
    print(f"done: {count} edge map(s) in {args.out}")
    return 0


def cmd_data_check(args) -> int:
    from .data import build_dataset
    from .data.check import check_dataset

    cfg = _load_config(args.config) if args.config else preset(args.preset)
    data = dataclasses.replace(cfg.data, root=args.path, skip_bad=False)
    dataset = build_dataset(data, cfg.model, args.split)
    print(f"semgan data check: {data.dataset} at {args.path} (split {args.split or 'default'}, "
          f"{len(dataset)} items, {cfg.model.num_classes} classes, resized to {cfg.model.height}x{cfg.model.width})")
    report = check_dataset(dataset, cfg.model.num_classes, args.limit)
    print(report.to_text())
    return 1 if report.problems else 0


def cmd_config(args) -> int:
    cfg = preset_for(args.model, args.preset) if args.model else preset(args.preset)
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .eval.evaluate import METRIC_DIRECTIONS

    parser = argparse.ArgumentParser(prog="semgan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train LGGAN, ECGAN or cross-view LGGAN (default: LGGAN, synthetic, CPU-sized)")
    train.add_argument("--model", choices=list(MODEL_TYPES),
                       help="model type (default: lggan, or the type of --config); selects that model's --preset")
    train.add_argument("--preset", default="synthetic",
                       help=f"preset name; with --model, a short name (synthetic, cityscapes, dayton, ...). "
                            f"All: {', '.join(sorted(PRESETS))}")
    train.add_argument("--config", help="JSON configuration (as printed by `semgan config`); replaces --preset")
    train.add_argument("--precision", choices=["fp32", "bf16", "fp16", "fp64"],
                       help="fp32; bf16 autocast (A100/H100); fp16 autocast + GradScaler (V100); fp64 (checks only)")
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
    train.add_argument("--ablation", help="LGGAN Table 3 row S1..S5, or ECGAN Table 3 row (E+G_i ... "
                                          "E+G_i+G_e+G_t+G_s+G_l+G_c, or short Gi, Ge, Gt, Gs, Gl, Gc)")
    train.add_argument("--no-vgg", dest="no_vgg", action="store_true", help="disable the VGG19 perceptual loss")
    train.add_argument("--vgg-weights", dest="vgg_weights", help="torchvision VGG19 weights file")
    train.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    train.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int,
                       help="numbered checkpoints kept (newest N; best.pt is kept besides them)")
    train.add_argument("--sample-every", dest="sample_every", type=int)
    train.add_argument("--log-every", dest="log_every", type=int)
    train.add_argument("--no-progress", dest="no_progress", action="store_true")
    train.add_argument("--edge-root", dest="edge_root", help="precomputed edge maps (`semgan edges` output)")
    train.add_argument("--skip-bad", dest="skip_bad", action="store_true", default=None,
                       help="skip unreadable samples with a warning instead of stopping")
    train.add_argument("--eval-every", dest="eval_every", type=int,
                       help="evaluate on the validation split every N steps (and at the end), keeping the best "
                            "checkpoint as checkpoints/best.pt; 0: off (default)")
    train.add_argument("--eval-metric", dest="eval_metric", choices=sorted(METRIC_DIRECTIONS),
                       help="metric that selects best.pt (default fid, needs the Inception weights; fid and l1: "
                            "lower is better, the others: higher)")
    train.add_argument("--eval-images", dest="eval_images", type=int,
                       help="validation images per evaluation (default 0: the whole split)")
    train.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, help="default: --batch-size")
    train.add_argument("--eval-split", dest="eval_split",
                       help="default: the data set's validation split (synthetic: val, held-out scenes)")
    train.add_argument("--inception-weights", dest="inception_weights",
                       help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth; default: torch hub cache)")
    train.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="synthesise images for label maps with a trained checkpoint")
    gen.add_argument("--checkpoint", required=True)
    gen.add_argument("--labels", required=True, help="a PNG of class ids, or a directory of them")
    gen.add_argument("--instances", help="directory of instance-id PNGs with the same file names")
    gen.add_argument("--sources", help="cross-view: directory of source-view images with the label maps' file names")
    gen.add_argument("--seed", type=int, help="random seed (multi-modal ECGAN samples its style code)")
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

    edges = sub.add_parser("edges", help="write the Canny ground-truth edge maps of a data set as PNGs")
    edges.add_argument("--model", choices=list(MODEL_TYPES), help="model type of --preset (default: ecgan)")
    edges.add_argument("--preset", default="synthetic", help="preset (as for train) giving the data set and size")
    edges.add_argument("--config", help="JSON configuration; replaces --preset")
    edges.add_argument("--data-root", dest="data_root")
    edges.add_argument("--split", help="data set split (default: the training split)")
    edges.add_argument("--out", required=True, help="output directory (one <name>.png per image, 0/255)")
    edges.add_argument("--hysteresis", choices=["public", "connected"],
                       help="public: canny.m's one-step rule (default); connected: full 8-connected propagation")
    edges.add_argument("--native-resolution", dest="native_resolution", action="store_true",
                       help="run Canny on the original image file, then resize the 0/255 map bicubically to the "
                            "model size (the canny.m pipeline)")
    edges.add_argument("--limit", type=int, help="only the first N images")
    edges.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    edges.add_argument("--device", default="auto")
    edges.set_defaults(func=cmd_edges, model_default="ecgan")

    cfg = sub.add_parser("config", help="print a preset's full configuration as JSON")
    cfg.add_argument("--model", choices=list(MODEL_TYPES), help="model type; --preset is then a short name")
    cfg.add_argument("--preset", default="synthetic")
    cfg.set_defaults(func=cmd_config)
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="counts, class histogram and problems of a dataset (exit 1 on problems)")
    check.add_argument("path", help="dataset root")
    check.add_argument("--preset", default="cityscapes", choices=sorted(PRESETS), help="dataset layout and classes")
    check.add_argument("--config", help="JSON configuration instead of --preset")
    check.add_argument("--split")
    check.add_argument("--limit", type=int, help="check only the first N items")
    check.set_defaults(func=cmd_data_check)

    add_bench_parser(sub)
    add_export_parsers(sub)
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
