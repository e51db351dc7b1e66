"""The Fréchet distance is clamped at 0 and the raw value is kept (issue 17 item 5): an exact copy
scores 0 with a [0, 0] interval, where the unclamped estimate is a rounding-sized negative number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.bootstrap import BootstrapConfig, frechet_estimate
from rest_lightning.metrics import FrechetMetric, frechet_distance
from rest_lightning.metrics.frechet import (
    DDOF_BIASED,
    FeatureStats,
    frechet_distance_from_stats,
    frechet_distance_raw,
    frechet_distance_raw_from_stats,
)

# n = 12 clips of D = 400 features (FVD's logits; talking-head test sets are this small): the rank-
# deficient covariances leave eigenvalue rounding of ~-1e-3 in d(X, X), far from 0 on either side.
CLIPS, LOGITS = 12, 400


def _copy_features() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, LOGITS, generator=gen, dtype=torch.float64) * 3 + 5 for _ in range(CLIPS)]


def test_an_exact_copy_has_a_negative_raw_distance_and_scores_zero() -> None:
    stats = FeatureStats.from_features(torch.cat(_copy_features()))
    raw = frechet_distance_raw_from_stats(stats, stats, DDOF_BIASED)
    assert raw < 0  # the rounding the clamp exists for
    assert frechet_distance_from_stats(stats, stats, DDOF_BIASED) == 0.0
    mu, sigma = stats.mean(), stats.covariance(DDOF_BIASED)
    assert frechet_distance_raw(mu, sigma, mu, sigma) == raw
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0


def test_the_metric_reports_the_clamped_value_and_keeps_the_raw_one() -> None:
    features = torch.cat(_copy_features())
    metric = FrechetMetric(LOGITS, ddof=DDOF_BIASED)
    metric.update_features(features, real=True)
    metric.update_features(features, real=False)
    assert float(metric.compute_raw()) < 0
    assert float(metric.compute()) == 0.0


def test_bootstrap_of_an_exact_copy_is_zero_with_a_zero_interval_and_raw_values_kept() -> None:
    features = _copy_features()
    estimate = frechet_estimate(features, features, DDOF_BIASED, True, BootstrapConfig(frechet_samples=20), np.random.default_rng(0))
    assert (estimate.value, estimate.ci_low, estimate.ci_high) == (0.0, 0.0, 0.0)
    raw_value, raw_low, raw_high = estimate.raw
    assert raw_low <= raw_value <= raw_high < 0  # the all-negative interval of issue 17
    entry = estimate.as_dict()  # what results.json carries per metric
    assert entry["value"] == 0.0 and entry["raw_value"] == raw_value
    assert (entry["raw_ci_low"], entry["raw_ci_high"]) == (raw_low, raw_high)


def test_positive_distances_are_unchanged_by_the_clamp() -> None:
    gen = torch.Generator().manual_seed(1)
    real = [torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(8)]
    fake = [torch.randn(5, 4, generator=gen, dtype=torch.float64) * 1.5 + 0.5 for _ in range(8)]
    estimate = frechet_estimate(fake, real, 1, True, BootstrapConfig(frechet_samples=50), np.random.default_rng(0))
    assert estimate.raw == pytest.approx((estimate.value, estimate.ci_low, estimate.ci_high), abs=0)
    assert 0 < estimate.ci_low <= estimate.value <= estimate.ci_high
