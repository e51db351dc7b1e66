"""Validation metrics of generated (or reconstructed) clips, shared by the stages (DESIGN §8).

The same torchmetrics ``Metric``s the offline suite uses (``rest_lightning.metrics``), so the numbers a
run logs are the numbers ``rest-eval`` computes. They sync across ranks themselves (float64 sums).
The metric networks are kept out of the stage's module tree: they are not trained and do not belong
in its checkpoints. CSIM is left to ``rest-eval``: it needs 5-point face landmarks of every frame.

Results are logged under ``val/<key>``, where the key carries ``_uncalibrated`` when the network runs
on random weights (``allow_random_weights``), so such a number can never pass for a real FID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rest_lightning.metrics import FID, FVD, LipSync, MetricWeightsConfig

METRIC_NAMES = ("fid", "fvd", "sync")


@dataclass
class ValMetricsConfig:
    """``stage.metrics``: which metrics validation computes and where their weights are."""

    names: list[str] = field(default_factory=list)  # any of fid, fvd, sync; empty = none (tiny runs)
    weights: MetricWeightsConfig = field(default_factory=MetricWeightsConfig)
    allow_random_weights: bool = False  # tests/demo only: every number is logged as *_uncalibrated

    def __post_init__(self) -> None:
        self.names = list(self.names)
        unknown = [n for n in self.names if n not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"stage.metrics.names has {unknown}; allowed: {', '.join(METRIC_NAMES)}")
        if isinstance(self.weights, dict):
            self.weights = MetricWeightsConfig(**self.weights)


class ValMetrics:
    """Builds the configured metrics (refusing missing weights at construction, i.e. at config time)."""

    def __init__(self, config: ValMetricsConfig) -> None:
        w, rand = config.weights, config.allow_random_weights
        self.metrics: dict[str, Any] = {}
        if "fid" in config.names:
            self.metrics["fid"] = FID(w.fid_inception, allow_random_weights=rand)
        if "fvd" in config.names:
            self.metrics["fvd"] = FVD(w.i3d, allow_random_weights=rand)
        if "sync" in config.names:
            self.metrics["sync"] = LipSync(w.syncnet, allow_random_weights=rand)

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def _to(self, device: torch.device) -> None:
        for metric in self.metrics.values():
            metric.to(device)

    @torch.no_grad()
    def update(self, fake: Tensor, real: Tensor, audio: Tensor | None = None) -> None:
        """fake, real: videos ``(B, 3, T, H, W)`` in [-1, 1]; audio ``(B, S)`` 16 kHz for Sync-C/D."""
        if not self.metrics or fake.shape[0] == 0:
            return
        self._to(fake.device)
        if "fid" in self.metrics:
            frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731 - (B*T, 3, H, W)
            self.metrics["fid"].update(frames(real), real=True)
            self.metrics["fid"].update(frames(fake), real=False)
        if "fvd" in self.metrics:
            self.metrics["fvd"].update(real, real=True)
            self.metrics["fvd"].update(fake, real=False)
        if "sync" in self.metrics and audio is not None:
            self.metrics["sync"].update(fake, audio)

    def compute_and_reset(self) -> dict[str, float]:
        """``{"val/<key>": value}`` for every metric that saw data (collective: call on every rank)."""
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            if metric.update_called:
                for result in metric.results().values():
                    out[f"val/{result.key}"] = float(result.value)
            metric.reset()
        return out
