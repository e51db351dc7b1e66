"""Bootstrap confidence intervals over test videos, for every metric.

The unit of resampling is the test item (video): a replicate draws n items with replacement
(multinomial counts), and the metric is recomputed on them.

* Means over videos (Sync-C, Sync-D, CSIM) and over frames (LPIPS, PSNR, SSIM: per-video frame sums
  and counts, so a replicate is the frame-weighted mean of its videos): percentile interval.
* Fréchet distances (FID, FVD): a replicate pools the features of the drawn videos, each as many
  times as it was drawn. Duplicated videos shrink the feature spread and inflate the distance
  (the estimator is biased in n), so the replicates are first shifted by their mean offset from the
  point estimate (bootstrap bias correction) and the percentile interval is taken of the shifted ones.
  Generated and real sides are resampled with the same counts (paired by item); the real-video row's
  two halves are resampled independently.
  A squared distance is >= 0: the point estimate and the interval bounds are clamped at 0 (an exact
  copy scores about -1e-7 before it, with an all-negative interval); the unclamped ones are kept as
  ``raw_value``, ``raw_ci_low``, ``raw_ci_high``.

Intervals are percentile intervals at ``confidence`` (default 95 %); replicates use a seeded numpy
generator, so a rerun gives the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rest_lightning.metrics.frechet import FeatureStats, clamp_distance, frechet_distance_raw_from_stats

# A bound within this relative distance of the point estimate is rounding (float64 sums in another
# order), not a real interval edge; the interval is widened to include the estimate.
ROUNDING_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BootstrapConfig:
    samples: int = 1000  # design choice: replicates for means (Efron & Tibshirani: ~1000 for percentile CIs)
    frechet_samples: int = 200  # design choice: each Fréchet replicate is an eigenproblem of D=2048 (FID)
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1 or self.frechet_samples < 1:
            raise ValueError(f"bootstrap.samples and frechet_samples must be >= 1, got {self.samples}, {self.frechet_samples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"bootstrap.confidence must be in (0, 1), got {self.confidence}")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int  # videos (or video pairs) the estimate is over
    raw: tuple[float, float, float] | None = None  # Fréchet distances: (value, ci_low, ci_high) before the clamp at 0

    def as_dict(self) -> dict[str, float | int]:
        out = {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}
        if self.raw is not None:
            out |= {"raw_value": self.raw[0], "raw_ci_low": self.raw[1], "raw_ci_high": self.raw[2]}
        return out


def draw_counts(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``(samples, n)`` int counts: how often each of n items is drawn in each replicate."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=samples)


def percentile_interval(value: float, replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(replicates, [alpha, 1 - alpha]))
    tolerance = ROUNDING_TOLERANCE * max(1.0, abs(value))
    if value < low and low - value <= tolerance:
        low = value
    if value > high and value - high <= tolerance:
        high = value
    return low, high


def weighted_mean_estimate(
    sums: np.ndarray, counts: np.ndarray, config: BootstrapConfig, rng: np.random.Generator
) -> Estimate:
    """Mean of per-item values as ``sum(sums) / sum(counts)`` (``counts`` = 1 per item for a mean over
    items, frames per item for a mean over frames), with its percentile interval."""
    sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
    n = len(sums)
    value = float(sums.sum() / counts.sum())
    draws = draw_counts(n, config.samples, rng).astype(np.float64)  # (samples, n)
    replicates = (draws @ sums) / (draws @ counts)
    low, high = percentile_interval(value, replicates, config.confidence)
    return Estimate(value, low, high, n)


def _pooled_stats(features: list[Tensor], counts: np.ndarray) -> FeatureStats:
    """Statistics of the features of every item, each repeated ``counts[i]`` times."""
    rows = torch.cat(features).to(torch.float64)  # (N, D)
    weights = torch.cat([
        torch.full((len(f),), float(c), dtype=torch.float64) for f, c in zip(features, counts, strict=True)
    ])
    return FeatureStats((weights[:, None] * rows).sum(0), (rows * weights[:, None]).T @ rows, int(round(float(weights.sum()))))


def frechet_estimate(
    first: list[Tensor], second: list[Tensor], ddof: int, paired: bool, config: BootstrapConfig, rng: np.random.Generator
) -> Estimate:
    """Fréchet distance between the pooled features of two item lists (each item ``(N_i, D)``), with a
    bias-corrected percentile interval, both clamped at 0 and kept raw (module doc). ``paired``: both
    lists are the same items."""
    value = frechet_distance_raw_from_stats(
        _pooled_stats(first, np.ones(len(first))), _pooled_stats(second, np.ones(len(second))), ddof
    )
    if paired and len(first) != len(second):
        raise ValueError(f"paired resampling needs equal item counts, got {len(first)} and {len(second)}")
    draws_first = draw_counts(len(first), config.frechet_samples, rng)
    draws_second = draws_first if paired else draw_counts(len(second), config.frechet_samples, rng)
    replicates = []
    for counts_first, counts_second in zip(draws_first, draws_second, strict=True):
        stats_first, stats_second = _pooled_stats(first, counts_first), _pooled_stats(second, counts_second)
        if stats_first.count <= ddof or stats_second.count <= ddof:
            continue  # a draw of one frame-less side cannot give a covariance; skip it
        replicates.append(frechet_distance_raw_from_stats(stats_first, stats_second, ddof))
    reps = np.asarray(replicates)
    if len(reps) == 0:
        low = high = value
    else:
        # the bias correction works on the raw scale; clamping first would shift by a skewed mean
        shifted = reps - (reps.mean() - value)
        low, high = percentile_interval(value, shifted, config.confidence)
    return Estimate(
        clamp_distance(value), clamp_distance(low), clamp_distance(high), len(first), raw=(value, low, high)
    )
