"""The Fréchet distance between two Gaussian fits, and the feature statistics behind FID and FVD.

    d² = ||μ1 − μ2||² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1 Σ2)^{1/2})

computed in float64 by the eigenvalue form (torch-fidelity, torchmetrics ≥ 1.1): Σ1Σ2 is similar to
the PSD matrix Σ1^{1/2} Σ2 Σ1^{1/2}, so Tr((Σ1Σ2)^{1/2}) = Σ_i sqrt(λ_i(Σ1Σ2)). This avoids every
scipy ``sqrtm`` failure mode listed in reference/metrics.md §1.3 (the 1.11-1.12 imaginary-part
regression, the ``disp`` removal, NaNs on rank-deficient Σ) and agrees with it to ~1e-12 on
well-conditioned inputs.

d² is a squared distance, so it is >= 0; in floating point the trace terms cancel and an exact copy can
come out at about -1e-7 (FVD of identical sets). :func:`frechet_distance` clamps at 0 and
:func:`frechet_distance_raw` keeps the unclamped value, so reports can carry both.

Features are accumulated as sufficient statistics (Σx, Σxxᵀ, n) in float64, which are plain sums:
they all-reduce across ranks with ``sum`` and the mean/covariance are formed only at compute time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

logger = logging.getLogger(__name__)

# Biased (ddof=0) vs unbiased (ddof=1) covariance: pytorch-fid, clean-fid, torchmetrics and JunyaoHu use
# ddof=1 (np.cov); StyleGAN-V's FVD uses ddof=0 (metric_utils.FeatureStats.get_mean_cov), metrics.md §1.1.
DDOF_UNBIASED = 1
DDOF_BIASED = 0


def _as_float64(name: str, value: Tensor | np.ndarray, device: torch.device | None) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(
            f"frechet_distance: {name} must be a torch.Tensor or numpy.ndarray, got {type(value)}"
        )
    return value.to(device=device, dtype=torch.float64)


def frechet_distance_raw(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    """Squared 2-Wasserstein (Fréchet) distance between N(mu1, sigma1) and N(mu2, sigma2), unclamped
    (it can be a rounding-sized negative number for identical inputs; see :func:`frechet_distance`).

    Args:
        mu1, mu2: means, shape ``(D,)``.
        sigma1, sigma2: covariances, shape ``(D, D)``, symmetric positive semi-definite.

    Returns:
        d² as a Python float, computed in float64 (inputs of any float dtype are cast up first;
        float32 statistics alone cost ~1e-3 absolute error, metrics.md §1.3).

    Raises:
        ValueError: on mismatched shapes or non-finite inputs.
    """
    device = mu1.device if isinstance(mu1, Tensor) else None
    m1, s1 = _as_float64("mu1", mu1, device), _as_float64("sigma1", sigma1, device)
    m2, s2 = _as_float64("mu2", mu2, device), _as_float64("sigma2", sigma2, device)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(
            f"frechet_distance: means must both be (D,), got mu1 {tuple(m1.shape)}, mu2 {tuple(m2.shape)}"
        )
    dim = m1.shape[0]
    for name, sigma in (("sigma1", s1), ("sigma2", s2)):
        if sigma.shape != (dim, dim):
            raise ValueError(
                f"frechet_distance: {name} must be ({dim}, {dim}) to match the means, got {tuple(sigma.shape)}"
            )
    for name, value in (("mu1", m1), ("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"frechet_distance: {name} has NaN or inf entries; check the features that produced it"
            )
    # eigvals of the (non-symmetric) product are real and >= 0 in exact arithmetic; rounding can make
    # tiny ones negative or complex, and the complex sqrt then contributes ~0 real part instead of NaN.
    eigenvalues = torch.linalg.eigvals(s1 @ s2)
    trace_sqrt_product = torch.sqrt(eigenvalues).real.sum()
    diff = m1 - m2
    distance = diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt_product
    return float(distance)


def clamp_distance(raw: float) -> float:
    """A Fréchet distance is a squared distance: a negative value is rounding, reported as 0."""
    return max(raw, 0.0)


def frechet_distance(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    """:func:`frechet_distance_raw` clamped at 0 (the reported FID/FVD)."""
    return clamp_distance(frechet_distance_raw(mu1, sigma1, mu2, sigma2))


@dataclass(frozen=True)
class FeatureStats:
    """Sufficient statistics of a feature set: Σx ``(D,)``, Σxxᵀ ``(D, D)`` and the count, in float64.

    Sums merge by addition (ranks, shards, cached real-set statistics) and give the mean and the
    covariance with either ddof at the end.
    """

    feature_sum: Tensor
    outer_sum: Tensor
    count: int

    @classmethod
    def from_features(cls, features: Tensor) -> FeatureStats:
        """Statistics of ``features`` ``(N, D)`` (any float dtype; summed in float64)."""
        if features.ndim != 2:
            raise ValueError(
                f"FeatureStats.from_features expects (N, D) features, got shape {tuple(features.shape)}"
            )
        feats = features.detach().to(torch.float64)
        return cls(feats.sum(dim=0), feats.T @ feats, int(feats.shape[0]))

    @property
    def num_features(self) -> int:
        return int(self.feature_sum.shape[0])

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.num_features != self.num_features:
            raise ValueError(
                f"cannot merge feature statistics of dims {self.num_features} and {other.num_features}"
            )
        return FeatureStats(
            self.feature_sum + other.feature_sum.to(self.feature_sum.device),
            self.outer_sum + other.outer_sum.to(self.outer_sum.device),
            self.count + other.count,
        )

    def mean(self) -> Tensor:
        """μ ``(D,)`` float64."""
        return self.feature_sum / self.count

    def covariance(self, ddof: int) -> Tensor:
        """Σ ``(D, D)`` float64: ``(Σxxᵀ − n·μμᵀ) / (n − ddof)``; ddof 1 = ``np.cov``, 0 = StyleGAN-V."""
        if ddof not in (DDOF_BIASED, DDOF_UNBIASED):
            raise ValueError(f"ddof must be {DDOF_BIASED} (biased) or {DDOF_UNBIASED} (unbiased), got {ddof}")
        if self.count <= ddof:
            raise ValueError(
                f"a covariance with ddof={ddof} needs more than {ddof} samples, got {self.count}"
            )
        mu = self.mean()
        return (self.outer_sum - self.count * torch.outer(mu, mu)) / (self.count - ddof)

    def save(self, path: str | Path) -> None:
        """Write the statistics to ``path`` (a ``torch.save`` file of plain tensors, readable with
        ``weights_only=True``); real-set statistics are cached once beside the shards this way."""
        payload = {
            "feature_sum": self.feature_sum.cpu(),
            "outer_sum": self.outer_sum.cpu(),
            "count": torch.tensor(self.count, dtype=torch.int64),
        }
        torch.save(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"feature statistics file {path} does not exist; compute it with FeatureStats.save"
            )
        payload = torch.load(path, map_location="cpu", weights_only=True)
        expected = {"feature_sum", "outer_sum", "count"}
        if not isinstance(payload, dict) or set(payload) != expected:
            raise ValueError(f"{path} is not a FeatureStats file: expected keys {sorted(expected)}")
        return cls(
            payload["feature_sum"].to(torch.float64),
            payload["outer_sum"].to(torch.float64),
            int(payload["count"]),
        )


def frechet_distance_raw_from_stats(stats1: FeatureStats, stats2: FeatureStats, ddof: int) -> float:
    """:func:`frechet_distance_raw` between the Gaussian fits of two feature sets."""
    return frechet_distance_raw(stats1.mean(), stats1.covariance(ddof), stats2.mean(), stats2.covariance(ddof))


def frechet_distance_from_stats(stats1: FeatureStats, stats2: FeatureStats, ddof: int) -> float:
    """:func:`frechet_distance` (clamped at 0) between the Gaussian fits of two feature sets."""
    return clamp_distance(frechet_distance_raw_from_stats(stats1, stats2, ddof))


class FrechetMetric(Metric):
    """A torchmetrics ``Metric`` that accumulates real and generated features and returns their
    Fréchet distance (float64 scalar tensor, clamped at 0).

    Subclasses turn inputs into ``(N, D)`` features in :meth:`extract_features`; :meth:`update` adds
    them to the real or the generated side. The states are float64 sums with ``sum`` reduction, so a
    distributed compute equals the single-process one over the union of the ranks' samples.

    Args:
        num_features: D.
        ddof: covariance normalisation, 1 (unbiased, pytorch-fid) or 0 (biased, StyleGAN-V FVD).
        reset_real_features: if False, :meth:`reset` keeps the real side (the real set is usually fixed
            across validation epochs).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, num_features: int, ddof: int = DDOF_UNBIASED, reset_real_features: bool = True
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if ddof not in (DDOF_BIASED, DDOF_UNBIASED):
            raise ValueError(f"ddof must be {DDOF_BIASED} (biased) or {DDOF_UNBIASED} (unbiased), got {ddof}")
        self.num_features = num_features
        self.ddof = ddof
        self.reset_real_features = reset_real_features
        self._fixed_real_stats: FeatureStats | None = None
        for side in ("real", "fake"):
            self.add_state(
                f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(
                f"{side}_outer_sum",
                torch.zeros(num_features, num_features, dtype=torch.float64),
                dist_reduce_fx="sum",
            )
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def extract_features(self, inputs: Tensor) -> Tensor:
        """Map a batch of inputs to ``(N, D)`` features. Implemented by FID/FVD."""
        raise NotImplementedError(f"{type(self).__name__} must implement extract_features")

    def update(self, inputs: Tensor, real: bool) -> None:
        """Add a batch to the real (``real=True``) or generated side; see the subclass for shapes."""
        self.update_features(self.extract_features(inputs), real=real)

    def update_features(self, features: Tensor, real: bool) -> None:
        """Add precomputed features ``(N, D)`` to one side."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: features must be (N, {self.num_features}), got {tuple(features.shape)}"
            )
        if real and self._fixed_real_stats is not None:
            raise ValueError(
                f"{type(self).__name__}: real statistics were loaded with set_real_stats; "
                "do not also update the real side (the two would be mixed)"
            )
        feats = features.detach().to(torch.float64)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(dim=0))
        setattr(self, f"{side}_outer_sum", getattr(self, f"{side}_outer_sum") + feats.T @ feats)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + feats.shape[0])

    def set_real_stats(self, stats: FeatureStats) -> None:
        """Use cached real-set statistics instead of real updates.

        They are held outside the synced states on purpose: if every rank loaded them into a ``sum``
        state, a distributed compute would count them once per rank.
        """
        if stats.num_features != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: cached stats have D={stats.num_features}, expected {self.num_features}"
            )
        self._fixed_real_stats = stats

    def _side_stats(self, side: str) -> FeatureStats:
        return FeatureStats(
            getattr(self, f"{side}_sum"),
            getattr(self, f"{side}_outer_sum"),
            int(round(float(getattr(self, f"{side}_count")))),
        )

    def real_stats(self) -> FeatureStats:
        """Statistics of the real side (the cached ones if :meth:`set_real_stats` was called)."""
        return self._fixed_real_stats if self._fixed_real_stats is not None else self._side_stats("real")

    def fake_stats(self) -> FeatureStats:
        return self._side_stats("fake")

    def compute(self) -> Tensor:
        """The Fréchet distance clamped at 0 (float64 scalar tensor); :meth:`compute_raw` is unclamped."""
        return self.compute_raw().clamp(min=0)

    def compute_raw(self) -> Tensor:
        """The unclamped Fréchet distance (float64 scalar tensor; ~-1e-7 is possible for identical sets)."""
        real, fake = self.real_stats(), self.fake_stats()
        minimum = self.ddof + 1
        for side, stats in (("real", real), ("generated", fake)):
            if stats.count < minimum:
                raise ValueError(
                    f"{type(self).__name__}: the {side} side has {stats.count} samples; a covariance with "
                    f"ddof={self.ddof} needs at least {minimum} (and far more than D={self.num_features} for a stable value)"
                )
        if min(real.count, fake.count) <= self.num_features:
            logger.warning(
                "%s: %d real / %d generated samples for D=%d features: the covariances are rank-deficient, "
                "so the value is defined but biased and noisy (metrics.md §1.3)",
                type(self).__name__,
                real.count,
                fake.count,
                self.num_features,
            )
        return torch.tensor(frechet_distance_raw_from_stats(real, fake, self.ddof), dtype=torch.float64)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        # Keep the real side across resets: torchmetrics' reset restores every state to its default.
        kept = {name: getattr(self, name) for name in ("real_sum", "real_outer_sum", "real_count")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
