"""GAN, feature-matching and perceptual losses over N generated outputs batched together.

Fake tensors hold the N outputs output-major ([N*B, ...], image n*B + b of sample b); real tensors
hold B samples and are computed once. Every function returns the SUM over the N outputs of the
per-output loss the public code computes (SPADE ``GANLoss`` hinge / ``L1Loss`` means), so one call on
the batch equals N separate public calls. Reductions run in float32 for half / bfloat16 / float32
inputs and in float64 for float64 inputs (the trainer's "fp64" precision).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: half / bfloat16 -> float32; float32 and float64 unchanged."""
    return x if x.dtype == torch.float64 else x.float()


def _per_output_mean(x: torch.Tensor, reps: int) -> torch.Tensor:
    """[N*B, ...] -> [N]: mean over each output's B samples and all positions."""
    return at_least_fp32(x).reshape(reps, -1).mean(dim=1)


def hinge_g_loss(pred_fake: list[list[torch.Tensor]], reps: int) -> torch.Tensor:
    """Generator hinge loss: sum_n mean_scales(-mean(D(fake_n))). Scalar float32."""
    total = sum(-_per_output_mean(scale[-1], reps).sum() for scale in pred_fake)
    return total / len(pred_fake)


def hinge_d_loss(pred: list[list[torch.Tensor]], reps: int, real: bool) -> torch.Tensor:
    """Discriminator hinge loss: sum_n mean_scales(mean(relu(1 -/+ D))). Scalar float32."""
    sign = -1.0 if real else 1.0
    total = sum(_per_output_mean(F.relu(1.0 + sign * at_least_fp32(scale[-1])), reps).sum() for scale in pred)
    return total / len(pred)


def feature_matching_loss(pred_fake: list[list[torch.Tensor]], pred_real: list[list[torch.Tensor]],
                          reps: int) -> torch.Tensor:
    """sum_n sum_scales sum_{intermediate j} mean|D_j(fake_n) - D_j(real)| / num_scales (real detached).

    The public code's GAN_Feat_loss without lambda_feat: per scale, every output except the prediction."""
    total = 0.0
    for fake_scale, real_scale in zip(pred_fake, pred_real):
        for fake_feat, real_feat in zip(fake_scale[:-1], real_scale[:-1]):
            diff = fake_feat.reshape(reps, *real_feat.shape) - real_feat.detach().unsqueeze(0)
            total = total + at_least_fp32(diff.abs()).mean() * reps
    return total / len(pred_fake)


def weighted_feature_l1(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor], weights, reps: int):
    """sum_n sum_i w_i mean|f_i(fake_n) - f_i(real)| (VGG perceptual loss without lambda_vgg)."""
    total = 0.0
    for w, fake_feat, real_feat in zip(weights, fake_feats, real_feats):
        diff = fake_feat.reshape(reps, *real_feat.shape) - real_feat.detach().unsqueeze(0)
        total = total + w * at_least_fp32(diff.abs()).mean() * reps
    return total


def image_l1(fakes: torch.Tensor, image: torch.Tensor, reps: int) -> torch.Tensor:
    """sum_n mean|fake_n - image| (the public code's optional global L1, off in its scripts)."""
    diff = fakes.reshape(reps, *image.shape) - image.unsqueeze(0)
    return at_least_fp32(diff.abs()).mean() * reps
