"""Reconstruction metrics: LPIPS (lpips 0.1.4, AlexNet v0.1), PSNR and SSIM, as per-frame means.

All take frames ``(N, 3, H, W)`` in [-1, 1] (fold videos with ``video_to_frames``) and average the
per-frame values, so a distributed compute equals the single-process mean over all frames. PSNR and
SSIM run on [0, 1] with ``data_range=1`` set explicitly (torchmetrics would infer it from the data).

SSIM comes in two variants that differ only at the image border (metrics.md §7.2), named by the eval
protocol's ``ssim.variant``:

* ``wang_valid`` (default): Wang et al.'s SSIM map only where the 11x11 window fits inside the image,
  averaged over it and over RGB; equal to ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)`` and to JunyaoHu's
  OpenCV 'valid' SSIM.
* ``torchmetrics_padded``: torchmetrics' ``structural_similarity_index_measure``, whose map covers the
  whole image with reflect-padded borders (up to ~5e-3 off the first on 32x32 frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import lpips
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from rest_lightning.metrics.nets.base import freeze
from rest_lightning.metrics.preprocess import check_images
from rest_lightning.metrics.result import MetricResult, keep_network_in_eval, make_results
from rest_lightning.metrics.weights import (
    LPIPS_ALEX_FILE,
    build_random,
    read_state_dict,
    resolve_weights_path,
)

PSNR_CAP_DB = 100.0  # JunyaoHu common_metrics_on_video_quality caps identical frames (MSE < 1e-10) at 100 dB
SSIM_KERNEL_SIZE = 11  # Wang et al. SSIM: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIMVariant = Literal["wang_valid", "torchmetrics_padded"]
SSIM_VARIANTS: tuple[str, ...] = get_args(SSIMVariant)


def _check_pair(preds: Tensor, target: Tensor, name: str) -> None:
    check_images(preds, f"{name} preds")
    check_images(target, f"{name} target")
    if preds.shape != target.shape:
        raise ValueError(
            f"{name}: preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same shape"
        )


class _PerFrameMean(Metric):
    """Sum and count of per-frame values (both ``sum``-reduced across ranks)."""

    is_differentiable = False
    full_state_update = False
    metric_name = ""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("value_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_frames", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def per_frame(self, preds: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``, ``target``: ``(N, 3, H, W)`` in [-1, 1]."""
        _check_pair(preds, target, type(self).__name__)
        values = self.per_frame(preds, target).to(torch.float64)
        self.value_sum += values.sum()
        self.num_frames += values.numel()

    def compute(self) -> Tensor:
        if float(self.num_frames) < 1:
            raise ValueError(f"{type(self).__name__}.compute: no frames were scored; call update first")
        return self.value_sum / self.num_frames

    @property
    def uncalibrated(self) -> bool:
        return False

    def results(self) -> dict[str, MetricResult]:
        return make_results(
            {self.metric_name: self.compute()},
            {self.metric_name: bool(self.higher_is_better)},
            self.uncalibrated,
        )


class PSNR(_PerFrameMean):
    """Mean per-frame PSNR in dB on [0, 1] images (higher is better), capped at :data:`PSNR_CAP_DB`."""

    higher_is_better = True
    metric_name = "psnr"

    def per_frame(self, preds: Tensor, target: Tensor) -> Tensor:
        psnr = peak_signal_noise_ratio(
            (preds + 1) / 2, (target + 1) / 2, data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        return psnr.clamp(max=PSNR_CAP_DB)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 1-D SSIM window ``(K,)``: Gaussian, sigma 1.5, K = 11, normalised to sum 1 (skimage's
    ``gaussian_filter`` with truncate 3.5 has the same radius 5)."""
    offsets = torch.arange(SSIM_KERNEL_SIZE, dtype=dtype, device=device) - (SSIM_KERNEL_SIZE - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return window / window.sum()


def ssim_wang_valid(preds: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM of Wang et al. (2004) over the valid region, as skimage computes it.

    Args:
        preds, target: ``(N, C, H, W)`` in [0, 1] (data range 1), H and W >= 11.

    Returns:
        ``(N,)`` float64: the mean over channels and over the ``(H - 10) x (W - 10)`` positions where
        the 11x11 window fits, of ``((2 mu_x mu_y + C1)(2 cov_xy + C2)) / ((mu_x² + mu_y² + C1)(var_x
        + var_y + C2))`` with population (ddof 0) moments and ``C = (K * 1)²``. Computed in float64.
    """
    if min(preds.shape[-2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"SSIM (wang_valid) needs frames of at least {SSIM_KERNEL_SIZE}x{SSIM_KERNEL_SIZE}, got "
            f"{tuple(preds.shape[-2:])}"
        )
    x, y = preds.to(torch.float64), target.to(torch.float64)
    n, c, h, w = x.shape
    window = _gaussian_window(torch.float64, x.device)
    kernel_h = window.view(1, 1, SSIM_KERNEL_SIZE, 1).expand(c, 1, SSIM_KERNEL_SIZE, 1)
    kernel_w = window.view(1, 1, 1, SSIM_KERNEL_SIZE).expand(c, 1, 1, SSIM_KERNEL_SIZE)

    def local_mean(image: Tensor) -> Tensor:
        # separable Gaussian, no padding: (N, C, H, W) -> (N, C, H - 10, W - 10)
        return F.conv2d(F.conv2d(image, kernel_h, groups=c), kernel_w, groups=c)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


class SSIM(_PerFrameMean):
    """Mean per-frame SSIM (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03) on [0, 1] (higher is better).

    Args:
        variant: ``wang_valid`` (skimage / Wang et al., the default) or ``torchmetrics_padded`` (the
            ``*_v1`` protocols); module doc.
    """

    higher_is_better = True
    metric_name = "ssim"

    def __init__(self, variant: SSIMVariant = "wang_valid") -> None:
        super().__init__()
        if variant not in SSIM_VARIANTS:
            raise ValueError(f"SSIM variant {variant!r} is not one of {', '.join(SSIM_VARIANTS)} (protocol ssim.variant)")
        self.variant = variant

    def per_frame(self, preds: Tensor, target: Tensor) -> Tensor:
        preds01, target01 = (preds + 1) / 2, (target + 1) / 2
        if self.variant == "wang_valid":
            return ssim_wang_valid(preds01, target01)
        return structural_similarity_index_measure(
            preds01,
            target01,
            data_range=1.0,
            reduction="none",
            gaussian_kernel=True,
            sigma=SSIM_SIGMA,
            kernel_size=SSIM_KERNEL_SIZE,
            k1=SSIM_K1,
            k2=SSIM_K2,
        )


def _alexnet_trunk_key_map(model: lpips.LPIPS) -> dict[str, str]:
    """torchvision ``features.<i>.<param>`` -> lpips ``net.slice<k>.<i>.<param>`` for the AlexNet trunk."""
    mapping = {}
    for name, _ in model.net.named_parameters():
        _, index, param = name.split(".")  # "slice2.3.weight" -> the torchvision layer index "3"
        mapping[f"features.{index}.{param}"] = f"net.{name}"
    return mapping


class LPIPS(_PerFrameMean):
    """Mean LPIPS distance (AlexNet, v0.1 lin layers; lower is better).

    The 1x1 lin layers ship inside the ``lpips`` wheel. The AlexNet trunk comes from ``weights_path``
    (torchvision's ``alexnet-owt-7be5be79.pth``, ``eval.weights.lpips_alex``); only its ``features.*``
    tensors are used. Without a path, ``allow_random_weights`` gives a seeded random trunk
    (``pnet_rand=True``) and uncalibrated results.
    """

    higher_is_better = False
    metric_name = "lpips"

    def __init__(self, weights_path: str | Path | None = None, allow_random_weights: bool = False) -> None:
        super().__init__()
        if weights_path is None and not allow_random_weights:
            resolve_weights_path(LPIPS_ALEX_FILE, None, "LPIPS")  # raises MissingWeightsError with the fix
        # reinit=False: the lin layers just loaded from the lpips wheel are real weights, keep them.
        model = build_random(
            lambda: lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False), reinit=False
        )
        self._calibrated = weights_path is not None
        if weights_path is not None:
            path = resolve_weights_path(LPIPS_ALEX_FILE, weights_path, "LPIPS")
            trunk = read_state_dict(path)
            mapping = _alexnet_trunk_key_map(model)
            missing = sorted(set(mapping) - set(trunk))
            if missing:
                raise ValueError(f"{path} is not a torchvision AlexNet state dict: missing {missing}")
            state = model.state_dict()
            for source, destination in mapping.items():
                if trunk[source].shape != state[destination].shape:
                    raise ValueError(
                        f"{path}: {source} has shape {tuple(trunk[source].shape)}, expected {tuple(state[destination].shape)}"
                    )
                state[destination] = trunk[source]
            model.load_state_dict(state, strict=True)
        self.network = freeze(model)

    @property
    def uncalibrated(self) -> bool:
        return not self._calibrated

    def per_frame(self, preds: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            return self.network(preds.float(), target.float()).flatten()  # (N, 1, 1, 1) -> (N,)

    def train(self, mode: bool = True) -> LPIPS:
        super().train(mode)
        keep_network_in_eval(self.network)
        return self
