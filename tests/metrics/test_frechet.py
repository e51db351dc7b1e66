"""Fréchet distance core: closed forms (metrics.md §1.4), scipy parity, identities, statistics, rank merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from rest_lightning.metrics import FeatureStats, FrechetMetric, frechet_distance
from rest_lightning.metrics.frechet import DDOF_BIASED, DDOF_UNBIASED, frechet_distance_from_stats

# float64 eigenvalue form vs exact values: rounding of a few ops on O(10) numbers.
CLOSED_FORM_TOL = 1e-10


def _sqrtm_frechet(mu1, s1, mu2, s2) -> float:
    """Independent reference: pytorch-fid's formula with scipy sqrtm (real part kept)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


CLOSED_FORMS = {
    "equal_covariances_2048": (np.zeros(2048), np.eye(2048), np.ones(2048), np.eye(2048), 2048.0),
    "one_dimensional": (np.zeros(1), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]]), 10.0),
    "diagonal_commuting": (np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]), 7.0),
    "scaled_identity": (np.zeros(3), np.eye(3), np.zeros(3), 4 * np.eye(3), 3.0),
    "non_commuting_vs_identity": (
        np.zeros(2),
        np.array([[2.0, 1.0], [1.0, 2.0]]),
        np.zeros(2),
        np.eye(2),
        4 - 2 * math.sqrt(3),
    ),
    "non_commuting_general": (
        np.zeros(2),
        np.array([[2.0, 1.0], [1.0, 2.0]]),
        np.zeros(2),
        np.diag([1.0, 4.0]),
        9 - 2 * math.sqrt(10 + 2 * math.sqrt(12)),
    ),
}


@pytest.mark.parametrize("case", sorted(CLOSED_FORMS))
def test_frechet_distance_equals_closed_form(case: str) -> None:
    mu1, s1, mu2, s2, expected = CLOSED_FORMS[case]
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        expected, abs=CLOSED_FORM_TOL * max(1.0, expected)
    )


def _random_stats(rng: np.random.Generator, n: int, d: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.5 + shift
    return x.mean(axis=0), np.cov(x, rowvar=False)


def test_frechet_distance_matches_scipy_sqrtm_on_well_conditioned_inputs() -> None:
    rng = np.random.default_rng(0)
    mu1, s1 = _random_stats(rng, 400, 16, 0.0)
    mu2, s2 = _random_stats(rng, 400, 16, 0.3)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_sqrtm_frechet(mu1, s1, mu2, s2), rel=1e-9)
    # torch tensors of another dtype go through the same float64 path.
    as_torch = frechet_distance(*(torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)))
    assert as_torch == pytest.approx(ours, rel=1e-4)


def test_frechet_distance_identities() -> None:
    """Symmetric, translation invariant, and scales as a² (metrics.md §1.4)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 8))
    y = rng.standard_normal((200, 8)) * 1.5 + 0.2
    stats = lambda a: (a.mean(axis=0), np.cov(a, rowvar=False))  # noqa: E731
    base = frechet_distance(*stats(x), *stats(y))
    assert base > 0.1
    assert frechet_distance(*stats(y), *stats(x)) == pytest.approx(base, rel=1e-10)
    assert frechet_distance(*stats(x + 7.0), *stats(y + 7.0)) == pytest.approx(base, rel=1e-9)
    assert frechet_distance(*stats(3.0 * x), *stats(3.0 * y)) == pytest.approx(9.0 * base, rel=1e-9)


def test_identical_samples_give_zero_even_with_large_means() -> None:
    """float64 keeps d(X, X) at ~0 where float32 statistics would give ~1e-3 (metrics.md §1.3)."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((500, 64)) + 100.0)
    stats = FeatureStats.from_features(x)
    assert abs(frechet_distance_from_stats(stats, stats, DDOF_UNBIASED)) < 1e-8


def test_rank_deficient_covariances_stay_finite_and_agree_with_sqrtm() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert math.isfinite(ours)
    assert ours == pytest.approx(_sqrtm_frechet(mu1, s1, mu2, s2), rel=1e-5)


def test_frechet_distance_rejects_mismatched_shapes_and_nan() -> None:
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="mu1"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("ddof", [DDOF_BIASED, DDOF_UNBIASED])
def test_streaming_statistics_equal_numpy_cov(ddof: int) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((120, 12)) * 3 + 5
    stats = FeatureStats.from_features(torch.from_numpy(x[:50])).merge(
        FeatureStats.from_features(torch.from_numpy(x[50:]))
    )
    np.testing.assert_allclose(stats.mean().numpy(), x.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        stats.covariance(ddof).numpy(), np.cov(x, rowvar=False, ddof=ddof), rtol=0, atol=1e-10
    )


def test_biased_and_unbiased_covariance_give_different_distances() -> None:
    rng = np.random.default_rng(5)
    a = FeatureStats.from_features(torch.from_numpy(rng.standard_normal((50, 4))))
    b = FeatureStats.from_features(torch.from_numpy(rng.standard_normal((50, 4)) + 0.5))
    biased = frechet_distance_from_stats(a, b, DDOF_BIASED)
    unbiased = frechet_distance_from_stats(a, b, DDOF_UNBIASED)
    assert biased != pytest.approx(unbiased, rel=1e-6)
    # Only the covariance term changes, by the factor (n-1)/n on each Σ.
    n = 50
    a_scaled = (a.mean(), a.covariance(DDOF_UNBIASED) * (n - 1) / n)
    b_scaled = (b.mean(), b.covariance(DDOF_UNBIASED) * (n - 1) / n)
    assert biased == pytest.approx(frechet_distance(*a_scaled, *b_scaled), rel=1e-10)


class _IdentityFrechet(FrechetMetric):
    """The Fréchet metric on raw feature vectors (the inputs are the features)."""

    def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


def test_frechet_metric_equals_direct_computation() -> None:
    gen = torch.Generator().manual_seed(6)
    real, fake = torch.randn(40, 5, generator=gen), torch.randn(40, 5, generator=gen) + 1
    metric = _IdentityFrechet(num_features=5)
    for chunk in real.split(7):
        metric.update(chunk, real=True)
    metric.update(fake, real=False)
    mu1, s1 = real.double().mean(0), torch.cov(real.double().T)
    mu2, s2 = fake.double().mean(0), torch.cov(fake.double().T)
    assert float(metric.compute()) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-10)


def test_two_simulated_ranks_merge_to_the_single_process_value() -> None:
    gen = torch.Generator().manual_seed(7)
    real, fake = torch.randn(30, 4, generator=gen), torch.randn(30, 4, generator=gen) * 2
    single = _IdentityFrechet(num_features=4, ddof=DDOF_BIASED)
    single.update(real, real=True)
    single.update(fake, real=False)
    ranks = [_IdentityFrechet(num_features=4, ddof=DDOF_BIASED) for _ in range(2)]
    for rank, metric in enumerate(ranks):
        metric.update(real[rank::2], real=True)  # DistributedSampler-style interleaved split
        metric.update(fake[rank::2], real=False)
    ranks[0].merge_state(ranks[1])
    assert float(ranks[0].compute()) == pytest.approx(float(single.compute()), rel=1e-12)


def test_reset_keeps_real_side_when_asked_and_cached_stats_round_trip(tmp_path) -> None:
    gen = torch.Generator().manual_seed(8)
    real, fake = torch.randn(20, 3, generator=gen), torch.randn(20, 3, generator=gen) + 2
    metric = _IdentityFrechet(num_features=3, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    value = float(metric.compute())
    metric.reset()
    assert metric.real_stats().count == 20 and metric.fake_stats().count == 0
    metric.update(fake, real=False)
    assert float(metric.compute()) == pytest.approx(value, rel=1e-12)

    path = tmp_path / "real_stats.pt"
    metric.real_stats().save(path)
    cached = _IdentityFrechet(num_features=3)
    cached.set_real_stats(FeatureStats.load(path))
    cached.update(fake, real=False)
    assert float(cached.compute()) == pytest.approx(value, rel=1e-12)
    with pytest.raises(ValueError, match="set_real_stats"):
        cached.update(real, real=True)


def test_compute_refuses_too_few_samples() -> None:
    metric = _IdentityFrechet(num_features=2)
    metric.update(torch.zeros(1, 2), real=True)
    metric.update(torch.zeros(5, 2), real=False)
    with pytest.raises(ValueError, match="real side has 1 samples"):
        metric.compute()
