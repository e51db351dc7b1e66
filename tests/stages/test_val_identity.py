"""Identity among the validation metrics (issue 17): dlib identity always, ArcFace CSIM with weights."""

from __future__ import annotations

import logging

import pytest
import torch

from rest_lightning import faces
from rest_lightning.stages import val_metrics
from rest_lightning.stages.val_metrics import ValMetrics, ValMetricsConfig


@pytest.mark.skipif(not faces.available(), reason="needs the faces extra (dlib, face_recognition_models)")
def test_identity_and_csim_are_logged_from_validation_clips() -> None:
    metrics = ValMetrics(ValMetricsConfig(names=["identity", "csim"], identity_frames=2, allow_random_weights=True))
    fake = torch.rand(2, 3, 5, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    metrics.update(fake, fake.clone())
    out = metrics.compute_and_reset()
    assert set(out) == {"val/identity_dist", "val/identity_match", "val/csim_uncalibrated"}
    # each clip's reference is its own first frame (no ref given), which is among the scored frames
    assert 0 <= out["val/identity_dist"] and out["val/identity_match"] >= 0.5


def test_identity_is_skipped_with_a_log_line_without_the_faces_extra(monkeypatch, caplog) -> None:
    monkeypatch.setattr(val_metrics.faces, "available", lambda: False)
    with caplog.at_level(logging.INFO, logger=val_metrics.__name__):
        metrics = ValMetrics(ValMetricsConfig(names=["identity"]))
    assert not metrics and "faces extra is missing" in caplog.text
    with pytest.raises(ValueError, match="identity_frames"):
        ValMetricsConfig(names=["identity"], identity_frames=0)
