"""Regression values with the real weight files (metrics.md §3.5, §7.1); skipped when files are absent.

Point ``REST_METRIC_WEIGHTS_DIR`` at a folder holding the published files under their usual names
(``i3d_torchscript.pt``, ``alexnet-owt-7be5be79.pth``). Both FVD cases use constant videos, so Σ = 0
on each side and FVD = ||μ_black − μ_white||², independent of ddof and n.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rest_lightning.metrics import FVD, LPIPS, FVDConfig
from rest_lightning.metrics.weights import I3D_FILE, LPIPS_ALEX_FILE

WEIGHTS_DIR_ENV = "REST_METRIC_WEIGHTS_DIR"


def _weights(file_name: str) -> Path:
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    path = Path(folder) / file_name if folder else None
    if path is None or not path.is_file():
        pytest.skip(f"real weights {file_name} not found (set {WEIGHTS_DIR_ENV} to a folder holding it)")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("videos", "frames", "expected", "tolerance"),
    [
        (8, 30, 151.2565, 0.05),  # JunyaoHu styleganv path: 8 x 30 frames 64x64, zeros vs ones
        (16, 15, 131.0, 3.0),  # TF example.py: 16 x 15 frames 64x64, 0 vs 255: "around 131"
    ],
)
def test_fvd_black_vs_white_matches_published_values(
    videos: int, frames: int, expected: float, tolerance: float
) -> None:
    fvd = FVD(weights_path=_weights(I3D_FILE.file_name), config=FVDConfig(clip_frames=frames, batch_size=2))
    assert not fvd.uncalibrated
    fvd.update(-torch.ones(videos, 3, frames, 64, 64), real=True)
    fvd.update(torch.ones(videos, 3, frames, 64, 64), real=False)
    assert float(fvd.compute()) == pytest.approx(expected, abs=tolerance)


@pytest.mark.slow
def test_lpips_zeros_vs_ones_matches_published_value() -> None:
    """JunyaoHu README: AlexNet LPIPS between all-0 and all-1 frames in [0, 1] is 0.8140."""
    metric = LPIPS(weights_path=_weights(LPIPS_ALEX_FILE.file_name))
    metric.update(-torch.ones(2, 3, 64, 64), torch.ones(2, 3, 64, 64))
    assert float(metric.compute()) == pytest.approx(0.8140, abs=2e-3)
