"""FID and FVD as metrics: 0 for identical sets, growing with distortion, rank merging, preprocessing."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from rest_lightning.metrics import FID, FVD, FIDConfig, FVDConfig
from rest_lightning.metrics.nets.base import FeatureExtractor
from rest_lightning.metrics.preprocess import quantize_uint8, resize_shorter_side_center_crop, video_to_frames
from rest_lightning.metrics.weights import build_random

NUM_CLIPS = 8  # issue 9: FID/FVD tests use at least 8 samples per side
# A zero distance from identical sets is ~1e-8 of a mild distortion's (rank-deficient covariances at
# n << D leave eigenvalue rounding of that order), so 1e-3 of it is a safe bound for "zero".
ZERO_FRACTION = 1e-3


class TinyVideoFeatures(FeatureExtractor):
    """A small random 3D-conv feature net standing in for I3D: (B, 3, T, H, W) -> (B, 24)."""

    num_features = 24

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 12, kernel_size=(3, 4, 4), stride=(2, 4, 4))
        self.head = nn.Linear(24, 24)

    def forward(self, video: Tensor) -> Tensor:
        h = torch.relu(self.conv(video))
        pooled = torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1)  # (B, 24)
        return self.head(pooled)


def _distances(metric, real: Tensor, noise: Tensor, levels: list[float]) -> list[float]:
    values = []
    for level in levels:
        metric.reset()
        metric.update(real, real=True)
        metric.update((real + level * noise).clamp(-1, 1), real=False)
        values.append(float(metric.compute()))
    return values


class TinyImageFeatures(FeatureExtractor):
    """A small random conv feature net standing in for the FID Inception: (B, 3, H, W) -> (B, 16)."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.head = nn.Linear(16, 16)

    def forward(self, images: Tensor) -> Tensor:
        h = torch.relu(self.conv(images))
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


def test_fid_is_zero_for_identical_sets_and_grows_with_distortion() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(NUM_CLIPS, 3, 24, 24, generator=gen) * 2 - 1
    noise = torch.randn(real.shape, generator=gen)
    fid = FID(network=build_random(TinyImageFeatures), config=FIDConfig(image_size=32))
    identical, mild, strong = _distances(fid, real, noise, [0.0, 0.2, 0.6])
    assert fid.uncalibrated  # a custom network is never the calibrated reference
    assert 0 < mild < strong
    assert abs(identical) < ZERO_FRACTION * mild


def test_fid_default_network_is_the_random_weight_fid_inception_when_allowed() -> None:
    """End-to-end wiring to the real architecture (2048-d pool3) without a 2048x2048 eigenproblem:
    the features of identical frames coincide and a distortion moves them."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 24, 24, generator=gen) * 2 - 1
    # Fed 75x75 (the smallest size the net takes) instead of 299 to stay cheap on a CPU.
    fid = FID(allow_random_weights=True, config=FIDConfig(image_size=75))
    features = fid.extract_features(torch.cat([frames, frames, (frames + 0.5).clamp(-1, 1)]))
    assert features.shape == (6, 2048)
    assert torch.equal(features[:2], features[2:4])
    assert not torch.allclose(features[:2], features[4:], rtol=1e-3, atol=0)
    assert fid.uncalibrated and fid.num_features == 2048


def test_fvd_is_zero_for_identical_sets_and_grows_with_distortion() -> None:
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(NUM_CLIPS, 3, 18, 40, 48, generator=gen) * 2 - 1
    noise = torch.randn(real.shape, generator=gen)
    fvd = FVD(
        network=build_random(TinyVideoFeatures), config=FVDConfig(frame_size=32, clip_start=1, batch_size=3)
    )
    identical, mild, strong = _distances(fvd, real, noise, [0.0, 0.2, 0.6])
    assert fvd.uncalibrated  # a custom network is never the calibrated reference
    assert 0 < mild < strong
    assert abs(identical) < ZERO_FRACTION * mild


def test_fvd_uses_the_protocol_clip_and_refuses_short_videos() -> None:
    fvd = FVD(network=build_random(TinyVideoFeatures), config=FVDConfig(frame_size=32, clip_start=2))
    video = torch.zeros(1, 3, 18, 32, 32)
    video[:, :, 2:18] = 1.0  # only the protocol clip (frames 2..17) is white
    assert torch.equal(fvd.clips(video), torch.ones(1, 3, 16, 32, 32))
    with pytest.raises(ValueError, match="at least clip_start \\+ clip_frames = 18 frames"):
        fvd.update(torch.zeros(1, 3, 17, 32, 32), real=True)


def test_fid_two_simulated_ranks_equal_single_process() -> None:
    gen = torch.Generator().manual_seed(2)
    net = build_random(TinyImageFeatures)
    # More samples than features, so the covariances are well conditioned and summation order
    # (per rank, then merged) changes the value only at rounding level.
    real = torch.rand(40, 3, 16, 16, generator=gen) * 2 - 1
    fake = torch.rand(40, 3, 16, 16, generator=gen) * 2 - 1
    config = FIDConfig(image_size=16)
    single = FID(network=net, config=config)
    single.update(real, real=True)
    single.update(fake, real=False)
    ranks = [FID(network=net, config=config) for _ in range(2)]
    for rank, metric in enumerate(ranks):
        metric.update(real[rank::2], real=True)
        metric.update(fake[rank::2], real=False)
    ranks[0].merge_state(ranks[1])
    assert float(ranks[0].compute()) == pytest.approx(float(single.compute()), rel=1e-9)


def test_metric_networks_stay_in_eval_mode() -> None:
    fid = FID(network=build_random(TinyImageFeatures))
    fid.train()
    assert not fid.network.training
    assert not any(p.requires_grad for p in fid.network.parameters())


def test_shorter_side_resize_and_center_crop() -> None:
    """256x320 (HxW) -> 224x280 -> crop 224x224 starting at column (280-224)//2 = 28 (metrics.md §3.5)."""
    ramp = torch.arange(320, dtype=torch.float64).expand(1, 1, 256, 320).clone()
    out = resize_shorter_side_center_crop(ramp, 224)
    assert out.shape == (1, 1, 224, 224)
    full = torch.nn.functional.interpolate(ramp, size=(224, 280), mode="bilinear", align_corners=False)
    assert torch.equal(out, full[..., :, 28:252])


def test_quantize_and_frame_folding() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, 1.3])
    q = quantize_uint8(x)
    assert q[0] == -1 and q[1] == 1 and q[3] == 1  # 0 -> -1, 255 -> +1, out of range clipped
    levels = (q.double() + 1) / 2 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # every value is an 8-bit level
    assert float(levels[2]) == pytest.approx(128, abs=1e-4)  # 127.5 -> 128 (torch.round: half to even)
    video = torch.arange(2 * 3 * 4).float().reshape(2, 3, 4, 1, 1).expand(-1, -1, -1, 2, 2)
    frames = video_to_frames(video)
    assert frames.shape == (8, 3, 2, 2)
    assert torch.equal(frames[5], video[1, :, 1])  # video 1, frame 1
