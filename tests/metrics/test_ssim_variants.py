"""SSIM variants (issue 17 item 5): ``wang_valid`` equals skimage's Gaussian SSIM on random and real
images; ``torchmetrics_padded`` differs only by its padded borders; protocols name the variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from eval.protocol import load_protocol
from rest_lightning.metrics import SSIM

# float64 on CPU: the two implementations sum the same Gaussian window in a different order, so they
# agree to rounding (measured ~1e-15); 1e-12 still fails on any one-pixel border or window change.
SKIMAGE_TOLERANCE = 1e-12
# torchmetrics' padded border moves SSIM by >= 1e-4 on these frames (measured 2e-4 .. 2e-2)
BORDER_EFFECT = 1e-4


def skimage_ssim(preds: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-frame skimage SSIM of ``(N, 3, H, W)`` frames in [-1, 1] (the Wang et al. settings)."""
    values = []
    for p, t in zip(((preds + 1) / 2).double().numpy(), ((target + 1) / 2).double().numpy(), strict=True):
        values.append(structural_similarity(
            p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=0,
        ))
    return np.array(values)


def _real_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two real photos (skimage's astronaut, chelsea the cat) and 8-bit noisy copies, as [-1, 1] frames."""
    gen = torch.Generator().manual_seed(3)
    frames = []
    for image in (data.astronaut()[:200, :240], data.chelsea()[:200, :240]):
        frames.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1)
    clean = torch.stack(frames)  # (2, 3, 200, 240), exact 8-bit levels
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=gen)).clamp(-1, 1)
    noisy = torch.round((noisy + 1) * 127.5) / 127.5 - 1
    return noisy, clean


def _random_pair(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(shape, generator=gen) * 2 - 1
    return (target + 0.3 * torch.randn(shape, generator=gen)).clamp(-1, 1), target


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 45, 61), (1, 3, 11, 11)])
def test_wang_valid_equals_skimage_on_random_images(shape) -> None:
    preds, target = _random_pair(shape)
    ours = SSIM("wang_valid").per_frame(preds, target).numpy()
    np.testing.assert_allclose(ours, skimage_ssim(preds, target), rtol=0, atol=SKIMAGE_TOLERANCE)


def test_wang_valid_equals_skimage_on_real_images_and_torchmetrics_does_not() -> None:
    preds, target = _real_pair()
    reference = skimage_ssim(preds, target)
    assert bool((reference < 0.95).all())  # the noise is visible: not a trivial SSIM of ~1
    np.testing.assert_allclose(SSIM("wang_valid").per_frame(preds, target).numpy(), reference, rtol=0, atol=SKIMAGE_TOLERANCE)
    padded = SSIM("torchmetrics_padded").per_frame(preds, target).double().numpy()
    assert float(np.abs(padded - reference).max()) > BORDER_EFFECT


def test_the_variants_differ_only_at_the_border() -> None:
    # the same distortion confined to the interior (>= 10 px from every edge): equal maps in the valid
    # region, identical outside it, so the valid mean changes and the padded mean changes by the area ratio
    preds, target = _random_pair((2, 3, 40, 40))
    inner = target.clone()
    inner[..., 10:-10, 10:-10] = preds[..., 10:-10, 10:-10]
    wang = SSIM("wang_valid").per_frame(inner, target).double()
    padded = SSIM("torchmetrics_padded").per_frame(inner, target).double()
    # a distortion 10 px inside never reaches torchmetrics' border windows: only the SSIM averaging area
    # differs, (40 - 10)² valid positions vs 40² (map value 1 outside the distorted block's reach)
    valid_area, full_area = 30**2, 40**2
    torch.testing.assert_close(1 - padded, (1 - wang) * valid_area / full_area, rtol=2e-3, atol=1e-6)


def test_closed_forms_hold_for_both_variants() -> None:
    preds, _ = _random_pair((2, 3, 24, 24))
    for variant in ("wang_valid", "torchmetrics_padded"):
        metric = SSIM(variant)
        metric.update(preds, preds)
        assert float(metric.compute()) == pytest.approx(1.0, abs=1e-6)
        metric.reset()
        metric.update(-torch.ones(1, 3, 24, 24), torch.ones(1, 3, 24, 24))
        assert float(metric.compute()) == pytest.approx(1e-4 / 1.0001, rel=1e-4)  # C1 / (1 + C1), metrics.md §7.2


def test_unknown_variant_and_too_small_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="protocol ssim.variant"):
        SSIM("gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 11x11"):
        SSIM("wang_valid").per_frame(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))


@pytest.mark.parametrize(("name", "variant"), [
    ("hdtf_v1", "torchmetrics_padded"), ("mead_v1", "torchmetrics_padded"), ("smoke_v1", "torchmetrics_padded"),
    ("hdtf_v2", "wang_valid"), ("mead_v2", "wang_valid"), ("smoke_v2", "wang_valid"),
])
def test_protocols_name_the_ssim_variant(name, variant) -> None:
    protocol = load_protocol(name)
    assert protocol.ssim.variant == variant
    assert protocol.as_dict()["ssim"] == {"variant": variant}  # what results.json's protocol.values carries
