"""Reconstruction metrics: LPIPS (lpips 0.1.4, AlexNet v0.1), PSNR and SSIM, as per-frame means.

All take frames ``(N, 3, H, W)`` in [-1, 1] (fold videos with ``video_to_frames``) and average the
per-frame values, so a distributed compute equals the single-process mean over all frames. PSNR and
SSIM run on [0, 1] with ``data_range=1`` set explicitly (torchmetrics would infer it from the data).
"""

from __future__ import annotations

from pathlib import Path

import lpips
import torch
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


class SSIM(_PerFrameMean):
    """Mean per-frame SSIM (Gaussian 11x11, sigma 1.5; torchmetrics' padding) on [0, 1] (higher is better)."""

    higher_is_better = True
    metric_name = "ssim"

    def per_frame(self, preds: Tensor, target: Tensor) -> Tensor:
        return structural_similarity_index_measure(
            (preds + 1) / 2,
            (target + 1) / 2,
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
