"""Metric results that carry their calibration status.

A number from a random-weight network must never pass for a real one: every result says whether it is
uncalibrated, and :attr:`MetricResult.key` (the name to log or tabulate it under) gets an
``_uncalibrated`` suffix, so even a bare W&B chart or CSV column shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

UNCALIBRATED_SUFFIX = "_uncalibrated"


@dataclass(frozen=True)
class MetricResult:
    """One reported number."""

    name: str
    value: float
    higher_is_better: bool
    uncalibrated: bool

    @property
    def key(self) -> str:
        """Name to log under: ``name`` or ``name_uncalibrated``."""
        return self.name + UNCALIBRATED_SUFFIX if self.uncalibrated else self.name

    def __str__(self) -> str:
        label = " (uncalibrated: random-weight network)" if self.uncalibrated else ""
        return f"{self.name}={self.value:.6g}{label}"


def make_results(
    values: Mapping[str, Tensor | float], higher_is_better: Mapping[str, bool], uncalibrated: bool
) -> dict[str, MetricResult]:
    """Wrap computed values (scalar tensors or floats) into :class:`MetricResult` by name."""
    return {
        name: MetricResult(name, float(value), higher_is_better[name], uncalibrated)
        for name, value in values.items()
    }


def keep_network_in_eval(network: nn.Module | None) -> None:
    """Metric networks stay in eval mode whatever ``train()`` the Trainer calls on their parent (their
    BatchNorms must keep the reference statistics)."""
    if network is not None:
        network.eval()
