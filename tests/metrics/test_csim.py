"""CSIM (ArcFace cosine to the reference) and 5-point face alignment (metrics.md §5.3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from rest_lightning.metrics import CSIM
from rest_lightning.metrics.face_align import (
    ARCFACE_TEMPLATE_112,
    align_faces,
    arcface_template,
    similarity_transform,
    warp_affine,
)
from rest_lightning.metrics.weights import build_random

TEMPLATE = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)


class TinyFaceEmbedder(nn.Module):
    """A small random conv embedder standing in for ArcFace: (N, 3, 112, 112) -> (N, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.head = nn.Linear(16 * 14 * 14, 32)

    def forward(self, faces: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(faces)).flatten(start_dim=1))


def _faces(gen: torch.Generator, batch: int, frames: int) -> tuple[Tensor, Tensor]:
    reference = torch.rand(batch, 3, 112, 112, generator=gen) * 2 - 1
    video = reference[:, :, None].expand(-1, -1, frames, -1, -1).clone()
    return video, reference


def test_csim_is_one_for_the_reference_itself_and_falls_with_distortion() -> None:
    gen = torch.Generator().manual_seed(0)
    video, reference = _faces(gen, batch=3, frames=4)
    noise = torch.randn(video.shape, generator=gen)
    metric = CSIM(network=build_random(TinyFaceEmbedder))
    values = []
    for level in (0.0, 0.3, 1.0):
        metric.reset()
        metric.update((video + level * noise).clamp(-1, 1), reference)
        values.append(float(metric.compute()))
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[0] > values[1] > values[2]
    assert metric.uncalibrated and metric.results()["csim"].key == "csim_uncalibrated"


def test_csim_cosine_properties_and_negative_clipping() -> None:
    """cos(x, x) = 1, cos(x, -x) = -1, scale invariant: checked with an identity 'embedder'."""
    metric = CSIM(network=nn.Flatten())
    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, 112, 112, generator=gen) * 2 - 1
    video = torch.stack([ref[0], -ref[0], 0.5 * ref[0]], dim=1)[None]  # (1, 3, 3, 112, 112)
    sims = metric.frame_similarities(video, ref)
    torch.testing.assert_close(sims, torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64), rtol=0, atol=1e-6)
    clipped = CSIM(network=nn.Flatten())
    clipped.config.clip_negative = True
    assert clipped.frame_similarities(video, ref)[0, 1] == 0


def test_csim_two_simulated_ranks_equal_single_process() -> None:
    gen = torch.Generator().manual_seed(2)
    video, reference = _faces(gen, batch=4, frames=2)
    video = (video + 0.4 * torch.randn(video.shape, generator=gen)).clamp(-1, 1)
    net = build_random(TinyFaceEmbedder)
    single = CSIM(network=net)
    single.update(video, reference)
    ranks = [CSIM(network=net) for _ in range(2)]
    for rank, metric in enumerate(ranks):
        metric.update(video[rank::2], reference[rank::2])
    ranks[0].merge_state(ranks[1])
    # float32 embeddings of differently composed batches differ at rounding level (~1e-8 relative).
    assert float(ranks[0].compute()) == pytest.approx(float(single.compute()), rel=1e-6)


def test_csim_refuses_a_reference_of_another_shape() -> None:
    metric = CSIM(network=nn.Flatten())
    with pytest.raises(ValueError, match="reference must be"):
        metric.update(torch.zeros(2, 3, 1, 112, 112), torch.zeros(1, 3, 112, 112))


def test_similarity_transform_closed_forms() -> None:
    identity = similarity_transform(TEMPLATE, TEMPLATE)
    torch.testing.assert_close(
        identity, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64), atol=1e-9, rtol=0
    )
    scaled = similarity_transform(2 * TEMPLATE + torch.tensor([10.0, 20.0], dtype=torch.float64), TEMPLATE)
    torch.testing.assert_close(
        scaled, torch.tensor([[0.5, 0, -5.0], [0, 0.5, -10.0]], dtype=torch.float64), atol=1e-9, rtol=0
    )
    theta = 0.3
    rot = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64
    )
    recovered = similarity_transform(TEMPLATE @ rot.T, TEMPLATE)
    torch.testing.assert_close(recovered[:, :2], rot.T, atol=1e-9, rtol=0)  # the inverse (-theta) rotation


def test_arcface_template_sizes() -> None:
    torch.testing.assert_close(arcface_template(224), 2 * TEMPLATE)
    torch.testing.assert_close(
        arcface_template(128), TEMPLATE + torch.tensor([8.0, 0.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        arcface_template(100)


def test_warp_moves_landmark_dots_onto_the_template() -> None:
    """Dots drawn at 2*template + (10, 20) on a black 256x256 image land within 1 px of the template."""
    image = -torch.ones(1, 3, 256, 256)
    landmarks = 2 * TEMPLATE + torch.tensor([10.0, 20.0], dtype=torch.float64)
    for x, y in landmarks.round().long().tolist():
        image[..., y - 1 : y + 2, x - 1 : x + 2] = 1.0  # 3x3 white dot
    aligned = align_faces(image, landmarks[None].float())
    assert aligned.shape == (1, 3, 112, 112)
    brightness = aligned[0, 0]
    for (tx, ty), (x, y) in zip(TEMPLATE.tolist(), landmarks.tolist(), strict=True):
        # the dot was drawn at the rounded landmark: its warped centre is offset by half that rounding
        expected_x, expected_y = tx + (round(x) - x) / 2, ty + (round(y) - y) / 2
        window = brightness[int(ty) - 3 : int(ty) + 4, int(tx) - 3 : int(tx) + 4]
        iy, ix = divmod(int(torch.argmax(window)), window.shape[1])
        assert abs(int(tx) - 3 + ix - expected_x) <= 1 and abs(int(ty) - 3 + iy - expected_y) <= 1
    assert float(brightness.min()) == pytest.approx(-1.0)  # black background stays black


def test_warp_outside_the_image_is_black() -> None:
    image = torch.ones(1, 3, 8, 8)
    shift_out = torch.tensor([[[1.0, 0.0, 100.0], [0.0, 1.0, 0.0]]])  # everything moves 100 px right
    assert torch.equal(warp_affine(image, shift_out, 8), -torch.ones(1, 3, 8, 8))
