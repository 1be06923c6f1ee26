"""Frechet Inception Distance: an in-project FID Inception-v3 and the Frechet distance maths.

Network. ``FIDInceptionV3`` reproduces the architecture of the Inception-v3 that the widely used
FID implementations evaluate (the TensorFlow 2015-12-05 graph as ported by pytorch-fid:
torchvision's ``Inception3`` layout with 1008 output classes, no auxiliary classifier, and the
three "FID" block variants: average pools that exclude the zero padding from the mean in the A, C
and first E blocks, and a 3x3 *max* pool in the pool branch of the last E block). Module and
parameter names equal torchvision's, so the state dict in ``pt_inception-2015-12-05-6726825d.pth``
(keys ``Conv2d_1a_3x3.conv.weight``, ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight`` ...)
loads unchanged. torchvision is not needed (it is not importable on the CPU build of torch).

Features are the 2048-d "pool3" activations (global average pool after ``Mixed_7c``). Input images
are [B,3,H,W] in [-1,1]; they are resized to 299x299 (bilinear, align_corners=False, no
antialiasing, as pytorch-fid does) and fed as they are: pytorch-fid takes [0,1] images, resizes and
maps them to [-1,1], which is the same affine map in the other order.

Weights are never downloaded. ``resolve_inception_weights`` looks for a file given by the caller,
else for ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (torch hub's cache,
where pytorch-fid itself stores it; TORCH_HOME defaults to ``~/.cache/torch``), and raises a
``ValueError`` saying where to put the file when it is absent.

Maths. For features X1 [N1,D], X2 [N2,D] with means mu_i and (unbiased, N-1) covariances S_i:

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).

pytorch-fid evaluates tr sqrt(S1 S2) with ``scipy.linalg.sqrtm`` of the non-symmetric product.
scipy is not available here, and the product is not needed: S1 S2 is similar to the symmetric PSD
matrix M = sqrt(S1) S2 sqrt(S1) (conjugate by sqrt(S1) when S1 is invertible; by continuity
otherwise), so both have the same non-negative eigenvalues l_k and tr sqrt(S1 S2) = sum_k sqrt(l_k).
We compute sqrt(S1) and the eigenvalues of M with ``torch.linalg.eigh`` in float64; eigenvalues
at rounding-noise level (|l| <= D * eps * max|l|, which rank-deficient covariances with N < D
produce) count as 0, since their square roots would add a visible bias. This needs no iteration
(unlike Newton-Schulz) and no complex arithmetic (unlike a general sqrtm).

With few samples (N1, N2 <= D, e.g. Cityscapes' 500 validation images) the same quantity comes
exactly and much faster from the centred feature rows A [N1,D], B [N2,D]: the non-zero eigenvalues
of S1 S2 are the squared singular values of A B^T / sqrt((N1-1)(N2-1)), so tr sqrt(S1 S2) is that
matrix's nuclear norm (``frechet_distance_from_rows``). ``FeatureStats`` keeps the rows while
N <= D and ``fid_from_stats`` picks the route. Means and scatter matrices are accumulated in float64
with Chan et al.'s pairwise update (no E[x^2]-E[x]^2 cancellation).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
INPUT_SIZE = 299


# ------------------------------------------------------------------------------------------ layers
class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, as the TF graph) -> ReLU. Keys: ``conv.*``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 'SAME' average pool divides by the number of real (non-padding) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 64 + 64 + 96 + pool_features channels out."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): 384 + 96 + in_channels channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (Mixed_6b..e): 4 x 192 = 768 channels out."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a): 320 + 192 + in_channels channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded 3x3 branches (Mixed_7b/c): 320 + 768 + 768 + 192 = 2048 channels out.

    ``pool="avg"`` (Mixed_7b): padding-excluding 3x3 average pool; ``pool="max"`` (Mixed_7c): the
    FID graph's 3x3 max pool (stride 1, padding 1)."""

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "avg":
            pooled = _avg_pool_no_pad(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


# ----------------------------------------------------------------------------------------- network
class FIDInceptionV3(nn.Module):
    """FID Inception-v3. ``forward(images [B,3,H,W] float in [-1,1]) -> pool3 features [B,2048] float32``.

    Built with PyTorch's default (random) initialisation; load real weights with
    ``load_inception`` / ``load_fid_state_dict``. Always in eval mode (BatchNorm uses the stored
    running statistics) and frozen. ``fc`` (2048 -> 1008) exists only so the published state dict
    loads strictly; the features do not use it (``logits`` does)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, 1008)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FIDInceptionV3":
        # Feature extractor only: BatchNorm must never switch to batch statistics.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
        x = images.float()
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))                       # adaptive average pool to 1x1 -> [B,2048]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> [B,1008] class logits of the 2015 graph (no dropout: eval)."""
        return self.fc(self(images))

    def load_fid_state_dict(self, state_dict: dict) -> None:
        """Load pytorch-fid's ``pt_inception-2015-12-05`` state dict (or one saved from this module).

        BatchNorm ``num_batches_tracked`` entries, which the published file predates, are filled in;
        any other missing, unexpected or mis-shaped key raises ``ValueError``."""
        if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
            state_dict = state_dict["state_dict"]
        if not isinstance(state_dict, dict):
            raise ValueError(f"Inception weights must be a state dict, got {type(state_dict).__name__}")
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
        own = self.state_dict()
        for key, value in own.items():
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = value.clone()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise ValueError(f"Inception state dict does not match the FID Inception-v3: missing {missing[:4]}"
                             f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                             f"{'...' if len(unexpected) > 4 else ''}")
        for key, value in own.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(f"Inception state dict entry {key} has shape {tuple(state[key].shape)}, "
                                 f"expected {tuple(value.shape)}")
        self.load_state_dict(state, strict=True)


def default_inception_path() -> str:
    """torch hub's cache location of the FID weights:
    ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (TORCH_HOME defaults to
    ``$XDG_CACHE_HOME/torch``, i.e. ``~/.cache/torch``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILENAME)


def resolve_inception_weights(path: str | None = None) -> str:
    """The FID weight file to use: ``path`` when given (it must exist), else the torch hub cache file.
    Raises ``ValueError`` saying where to put the file when it is absent."""
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"inception_weights={path!r} does not exist: pass the path of pytorch-fid's "
                             f"{FID_WEIGHTS_FILENAME} (the FID Inception-v3 state dict)")
        return path
    default = default_inception_path()
    if not os.path.isfile(default):
        raise ValueError(
            f"FID Inception weights not found: place pytorch-fid's {FID_WEIGHTS_FILENAME} (released with "
            f"mseitzer/pytorch-fid, tag fid_weights) at {default} (torch hub cache; set TORCH_HOME to move it) "
            f"or pass its path explicitly (inception_weights= / --inception-weights)")
    return default


def load_inception(path: str | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """FIDInceptionV3 with the weights from ``resolve_inception_weights(path)``, in eval mode on ``device``."""
    path = resolve_inception_weights(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"Inception weights {path!r} could not be read: {type(exc).__name__}: {exc}") from exc
    net = FIDInceptionV3()
    try:
        net.load_fid_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"Inception weights {path!r}: {exc}") from exc
    return net.to(device)


# -------------------------------------------------------------------------------------------- maths
class FeatureStats:
    """Streaming mean and covariance of feature rows, in float64 on the features' device.

    ``update(features [N,D])`` merges a batch with Chan et al.'s pairwise formulas:
    n = na + nb, mean = mean_a + d*nb/n, M2 = M2_a + M2_b + d d^T na nb / n with d = mean_b - mean_a,
    where M2 is the scatter matrix sum (x - mean)(x - mean)^T. ``cov()`` = M2 / (n - 1) (unbiased, as
    numpy.cov and pytorch-fid).

    The rows themselves are also kept while there are at most ``keep_rows`` of them (default D =
    2048, 16 MiB in float64): with few samples (e.g. Cityscapes' 500 validation images) the
    Frechet distance is then computed exactly from the rows (``fid_from_stats``), which is far
    cheaper than two D x D eigendecompositions."""

    def __init__(self, keep_rows: int = FEATURE_DIM):
        self.count = 0
        self.keep_rows = keep_rows
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self._rows: list[torch.Tensor] | None = []

    def update(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"features must be [N,D], got {tuple(features.shape)}")
        nb = features.shape[0]
        if nb == 0:
            return
        x = features.detach().double()
        if self.mean is not None and x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"feature width changed from {self.mean.shape[0]} to {x.shape[1]}")
        mean_b = x.mean(dim=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self.mean is None:
            self.count, self.mean, self.m2 = nb, mean_b, m2_b
        else:
            na = self.count
            n = na + nb
            delta = mean_b.to(self.mean.device) - self.mean
            self.mean = self.mean + delta * (nb / n)
            self.m2 = self.m2 + m2_b.to(self.m2.device) + torch.outer(delta, delta) * (na * nb / n)
            self.count = n
        if self._rows is not None:
            self._rows.append(x)
            if self.count > self.keep_rows:
                self._rows = None               # too many to keep: the covariance route is used

    def rows(self) -> torch.Tensor | None:
        """All rows seen [N,D] float64 while N <= keep_rows, else None."""
        if self._rows is None or not self._rows:
            return None
        return torch.cat(self._rows)

    def cov(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.count}")
        return self.m2 / (self.count - 1)


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root of a symmetric [D,D] matrix via eigh (float64); negative rounding
    eigenvalues are clamped to 0."""
    m = matrix.double()
    m = 0.5 * (m + m.T)
    evals, evecs = torch.linalg.eigh(m)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2 [D,D] = sum_k sqrt(eig_k(sqrt(S1) S2 sqrt(S1))) (float64 scalar)."""
    root1 = sqrtm_psd(sigma1)
    inner = root1 @ sigma2.double().to(root1.device) @ root1
    inner = 0.5 * (inner + inner.T)
    evals = torch.linalg.eigvalsh(inner)
    # Rank-deficient covariances (N < D) leave eigenvalues that are pure rounding noise (|l| ~ eps*max);
    # their square roots (~sqrt(eps)) would add up to a visible bias, so they count as 0.
    noise = evals.abs().max() * evals.shape[0] * torch.finfo(evals.dtype).eps
    return torch.where(evals > noise, evals, torch.zeros_like(evals)).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2) for Gaussians N(mu_i [D], S_i [D,D]), in float64."""
    mu1, mu2 = mu1.double(), mu2.double().to(mu1.device)
    sigma1, sigma2 = sigma1.double().to(mu1.device), sigma2.double().to(mu1.device)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shape mismatch: mu1 {tuple(mu1.shape)}, mu2 {tuple(mu2.shape)}, "
                         f"sigma1 {tuple(sigma1.shape)}, sigma2 {tuple(sigma2.shape)}")
    diff = mu1 - mu2
    value = diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # Identical statistics give 0 up to rounding; a distance is never negative.
    return max(float(value), 0.0)


def frechet_distance_from_rows(x1: torch.Tensor, x2: torch.Tensor) -> float:
    """The same Frechet distance as ``frechet_distance`` of the rows' means and covariances, from the
    rows x1 [N1,D], x2 [N2,D] (N_i >= 2) without any D x D matrix function.

    With centred rows A = x1 - mu1, B = x2 - mu2: S1 = A^T A / (N1-1), S2 = B^T B / (N2-1), and the
    non-zero eigenvalues of S1 S2 = A^T (A B^T B) / c equal those of (A B^T B) A^T / c = C C^T / c with
    C = A B^T [N1,N2], c = (N1-1)(N2-1). Hence tr sqrt(S1 S2) = ||C||_* / sqrt(c) (sum of C's singular
    values): exact, and cheap while N1, N2 are small next to D."""
    if x1.dim() != 2 or x2.dim() != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"rows must be [N1,D] and [N2,D], got {tuple(x1.shape)} and {tuple(x2.shape)}")
    n1, n2 = x1.shape[0], x2.shape[0]
    if n1 < 2 or n2 < 2:
        raise ValueError(f"each feature set needs at least 2 rows, got {n1} and {n2}")
    x1 = x1.double()
    x2 = x2.double().to(x1.device)
    mu1, mu2 = x1.mean(0), x2.mean(0)
    a, b = x1 - mu1, x2 - mu2
    diff = mu1 - mu2
    tr1 = a.pow(2).sum() / (n1 - 1)
    tr2 = b.pow(2).sum() / (n2 - 1)
    nuclear = torch.linalg.svdvals(a @ b.T).sum()
    value = diff.dot(diff) + tr1 + tr2 - 2.0 * nuclear / ((n1 - 1) * (n2 - 1)) ** 0.5
    return max(float(value), 0.0)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between two accumulated feature sets (each needs >= 2 rows): from the kept
    rows when both sets still hold them, else from the means and covariances."""
    if a.count < 2 or b.count < 2:
        raise ValueError(f"each feature set needs at least 2 rows, got {a.count} and {b.count}")
    rows_a, rows_b = a.rows(), b.rows()
    if rows_a is not None and rows_b is not None:
        return frechet_distance_from_rows(rows_a, rows_b)
    return frechet_distance(a.mean, a.cov(), b.mean, b.cov())


def fid_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between feature matrices [N1,D] and [N2,D] (N1, N2 >= 2)."""
    a, b = FeatureStats(), FeatureStats()
    a.update(features1)
    b.update(features2)
    return fid_from_stats(a, b)
