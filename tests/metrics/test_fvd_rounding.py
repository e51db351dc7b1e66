"""FVD's 8-bit rounding is the protocol's choice (issue 17 item 5): ``input`` (StyleGAN-V: uint8 frames,
resized in float; the v2 protocols), ``after_resize`` (the v1 protocols) or ``none``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from eval.protocol import load_protocol
from rest_lightning.metrics import FVD, FVDConfig
from rest_lightning.metrics.nets.base import FeatureExtractor
from rest_lightning.metrics.preprocess import UINT8_LEVELS, quantize_uint8
from rest_lightning.metrics.weights import build_random

FRAME = 24  # design choice: a 32x40 video resized to 24 moves values off the 8-bit grid


class MeanFeatures(FeatureExtractor):
    """(B, 3, T, S, S) -> (B, 2): enough for the FVD metric's plumbing; the clips are what is tested."""

    num_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, video: Tensor) -> Tensor:
        return torch.stack([video.mean(dim=(1, 2, 3, 4)), video.std(dim=(1, 2, 3, 4))], dim=1) * self.scale


def _fvd(rounding: str) -> FVD:
    return FVD(network=build_random(MeanFeatures), config=FVDConfig(frame_size=FRAME, uint8_rounding=rounding))


def _on_uint8_grid(x: Tensor) -> bool:
    levels = (x + 1) / 2 * UINT8_LEVELS
    return bool(torch.allclose(levels, levels.round(), atol=1e-4))


def _video(eight_bit: bool) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 16, 32, 40, generator=gen) * 2 - 1
    return quantize_uint8(video) if eight_bit else video


def test_input_rounding_rounds_before_the_resize_only() -> None:
    float_video = _video(eight_bit=False)
    clips = _fvd("input").clips(float_video)
    assert not _on_uint8_grid(clips)  # the resize of 8-bit frames is not re-rounded
    torch.testing.assert_close(clips, _fvd("none").clips(quantize_uint8(float_video)), rtol=0, atol=0)


def test_frames_decoded_from_video_files_are_unchanged_by_input_rounding() -> None:
    video = _video(eight_bit=True)  # what rest-eval reads from mp4 files
    torch.testing.assert_close(_fvd("input").clips(video), _fvd("none").clips(video), rtol=0, atol=1e-6)


def test_after_resize_rounding_reproduces_the_v1_clips() -> None:
    video = _video(eight_bit=True)
    v1 = _fvd("after_resize").clips(video)
    assert _on_uint8_grid(v1)
    difference = (v1 - _fvd("input").clips(video)).abs()
    assert 0 < float(difference.max()) <= 1 / UINT8_LEVELS + 1e-6  # at most half a level, in [-1, 1] units


def test_unknown_rounding_is_refused() -> None:
    with pytest.raises(ValueError, match="fvd.uint8_rounding"):
        FVDConfig(uint8_rounding="nearest")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "rounding"), [
    ("hdtf_v1", "after_resize"), ("mead_v1", "after_resize"), ("smoke_v1", "after_resize"),
    ("hdtf_v2", "input"), ("mead_v2", "input"), ("smoke_v2", "input"),
])
def test_protocols_name_the_rounding_and_the_suite_uses_it(name, rounding) -> None:
    from eval.networks import build_suite

    protocol = load_protocol(name)
    assert protocol.fvd.uint8_rounding == rounding
    suite = build_suite("tiny", {}, True, protocol)
    assert suite.fvd.config.uint8_rounding == rounding
    assert suite.ssim.variant == protocol.ssim.variant
