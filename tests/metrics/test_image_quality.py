"""PSNR / SSIM closed forms and LPIPS properties (metrics.md §7), with a random LPIPS trunk."""

from __future__ import annotations

import pytest
import torch
import torchvision

from rest_lightning.metrics import LPIPS, PSNR, SSIM, MissingWeightsError
from rest_lightning.metrics.image_quality import PSNR_CAP_DB
from rest_lightning.metrics.weights import build_random

SSIM_ZEROS_VS_ONES = 1e-4 / 1.0001  # C1 / (1 + C1) with C1 = (0.01 * 1)^2 (metrics.md §7.2)


def test_psnr_closed_forms() -> None:
    black, white = -torch.ones(2, 3, 16, 16), torch.ones(2, 3, 16, 16)
    psnr = PSNR()
    psnr.update(black, white)  # [0,1]: MSE 1 -> 0 dB
    assert float(psnr.compute()) == pytest.approx(0.0, abs=1e-9)
    psnr.reset()
    grey = torch.zeros(1, 3, 16, 16)
    psnr.update(grey, grey + 0.2)  # [0,1] error 0.1 -> 20 dB
    assert float(psnr.compute()) == pytest.approx(20.0, abs=1e-4)
    psnr.reset()
    psnr.update(grey, grey)
    assert float(psnr.compute()) == PSNR_CAP_DB
    assert not psnr.results()["psnr"].uncalibrated


def test_psnr_is_a_mean_over_frames() -> None:
    grey = torch.zeros(1, 3, 8, 8)
    psnr = PSNR()
    psnr.update(torch.cat([grey, grey]), torch.cat([grey + 0.2, grey + 0.02]))  # 20 dB and 40 dB
    assert float(psnr.compute()) == pytest.approx(30.0, abs=1e-3)


def test_ssim_closed_forms() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    ssim = SSIM()
    ssim.update(x, x)
    assert float(ssim.compute()) == pytest.approx(1.0, abs=1e-6)
    ssim.reset()
    ssim.update(-torch.ones(1, 3, 32, 32), torch.ones(1, 3, 32, 32))
    assert float(ssim.compute()) == pytest.approx(SSIM_ZEROS_VS_ONES, rel=1e-4)


def test_lpips_needs_a_trunk_unless_random_weights_are_allowed() -> None:
    with pytest.raises(MissingWeightsError, match="eval.weights.lpips_alex"):
        LPIPS()


def test_lpips_properties_with_a_random_trunk() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    b = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    metric = LPIPS(allow_random_weights=True)
    assert metric.uncalibrated
    assert float(metric.per_frame(a, a).abs().max()) == 0.0
    torch.testing.assert_close(metric.per_frame(a, b), metric.per_frame(b, a))
    assert bool((metric.per_frame(a, b) > 0).all())
    # the shipped lin layers are loaded (non-negative by training), not re-initialised
    lins = [p for n, p in metric.network.named_parameters() if n.startswith("lin")]
    assert lins and all(bool((p >= 0).all()) for p in lins)


def test_lpips_loads_a_torchvision_alexnet_trunk_strictly(tmp_path) -> None:
    alexnet = build_random(lambda: torchvision.models.alexnet(weights=None))
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    # The trunk is all LPIPS reads: the classifier would add 230 MB on disk per file for nothing.
    trunk = {k: v for k, v in alexnet.state_dict().items() if k.startswith("features.")}
    torch.save(trunk, path)
    metric = LPIPS(weights_path=path)
    assert not metric.uncalibrated
    torch.testing.assert_close(metric.network.net.slice2.state_dict()["3.weight"], alexnet.features[3].weight)
    bad = {k: v for k, v in trunk.items() if k != "features.10.weight"}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="features.10.weight"):
        LPIPS(weights_path=tmp_path / "bad.pth")
