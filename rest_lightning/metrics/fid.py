"""FID: Fréchet distance between FID-Inception pool3 features of real and generated frames.

Protocol (pytorch-fid, which talking-head papers use; metrics.md §2): frames as 8-bit images,
bilinear resize to 299x299 without antialias, [-1, 1] input, 2048-d pool3 features, unbiased
covariance. FID is frame-level: pass every frame of every video (``video_to_frames``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rest_lightning.metrics.frechet import DDOF_UNBIASED, FrechetMetric
from rest_lightning.metrics.nets.base import FeatureExtractor, network_dtype
from rest_lightning.metrics.nets.fid_inception import FID_INCEPTION_INPUT_SIZE, FIDInceptionV3
from rest_lightning.metrics.preprocess import check_images, quantize_uint8, resize_bilinear
from rest_lightning.metrics.result import MetricResult, keep_network_in_eval, make_results
from rest_lightning.metrics.weights import FID_INCEPTION_FILE, load_network, metric_network


@dataclass
class FIDConfig:
    image_size: int = FID_INCEPTION_INPUT_SIZE  # pytorch-fid resizes to 299 (smaller only in tests)
    quantize_uint8: bool = True  # pytorch-fid reads 8-bit image files; generated floats are rounded alike
    ddof: int = DDOF_UNBIASED  # pytorch-fid np.cov (metrics.md §1.1)
    batch_size: int = 50  # frames per network forward (pytorch-fid's default batch size)
    reset_real_features: bool = True  # False keeps the real side across reset() (fixed real set)

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.batch_size < 1:
            raise ValueError(
                f"FIDConfig: image_size and batch_size must be >= 1, got {self.image_size}, {self.batch_size}"
            )


class FID(FrechetMetric):
    """Fréchet Inception Distance (lower is better).

    ``update(frames, real)``: frames ``(N, 3, H, W)`` float in [-1, 1].
    ``compute()``: float64 scalar tensor. :meth:`results` labels it uncalibrated when the network is
    not the reference one loaded from ``weights_path``.

    Args:
        weights_path: ``eval.weights.fid_inception``, the pytorch-fid ``pt_inception-2015-12-05-6726825d.pth``.
        allow_random_weights: ``eval.allow_random_weights``; without a path, use seeded random weights.
        config: preprocessing and statistics options.
        network: a custom :class:`FeatureExtractor` instead of the FID Inception (always uncalibrated).
        expected_sha256: the protocol's ``weight_sha256.fid_inception``: digests of the reference file
            (empty: not checked). Another file is refused unless ``allow_random_weights``, which loads it
            uncalibrated.
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        allow_random_weights: bool = False,
        config: FIDConfig | None = None,
        network: FeatureExtractor | None = None,
        expected_sha256: Sequence[str] = (),
    ) -> None:
        config = config or FIDConfig()
        if network is not None and not isinstance(network, FeatureExtractor):
            raise TypeError(f"FID network must subclass FeatureExtractor, got {type(network).__name__}")
        loaded = metric_network(
            network,
            lambda: load_network(
                FID_INCEPTION_FILE, FIDInceptionV3, weights_path, allow_random_weights, "FID", expected_sha256
            ),
        )
        module, calibrated = loaded.module, loaded.calibrated
        super().__init__(
            module.num_features, ddof=config.ddof, reset_real_features=config.reset_real_features
        )
        self.config = config
        self.network = module
        self.uncalibrated = not calibrated

    def extract_features(self, inputs: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [-1, 1] -> ``(N, D)`` features."""
        check_images(inputs, "FID.update")
        dtype = network_dtype(self.network)
        outputs = []
        with torch.no_grad():
            for batch in inputs.split(self.config.batch_size):
                if self.config.quantize_uint8:
                    batch = quantize_uint8(batch)
                batch = resize_bilinear(batch.to(dtype), self.config.image_size)
                outputs.append(self.network(batch))
        return torch.cat(outputs)

    def train(self, mode: bool = True) -> FID:
        super().train(mode)
        keep_network_in_eval(self.network)
        return self

    def results(self) -> dict[str, MetricResult]:
        return make_results({"fid": self.compute()}, {"fid": False}, self.uncalibrated)
