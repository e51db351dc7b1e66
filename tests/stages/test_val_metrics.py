"""Stages log the suite's metrics on validation clips, labelled uncalibrated on random weights."""

from __future__ import annotations

import pytest
import torch

from rest_lightning.config import ConfigError, compose
from rest_lightning.stages.val_metrics import ValMetrics, ValMetricsConfig
from rest_lightning.training import instantiate_node, train


def test_missing_weights_refused_when_the_stage_is_built(tiny_shards):
    cfg = compose("train", ["experiment=tiny_teacher", f"data.cfg.root={tiny_shards}", "stage.metrics.names=[fid]"])
    with pytest.raises(ConfigError, match="fid_inception"):
        instantiate_node(cfg.stage, "stage")
    with pytest.raises(ValueError, match="allowed: fid, fvd, sync, csim, identity"):
        ValMetricsConfig(names=["lpips"])


def test_val_metrics_zero_for_identical_sets_and_labelled_uncalibrated():
    metrics = ValMetrics(ValMetricsConfig(names=["fvd"], allow_random_weights=True))
    torch.manual_seed(0)
    video = torch.rand(2, 3, 16, 32, 32) * 2 - 1  # I3D at 224 px is the cost: two clips
    metrics.update(video, video)
    same = metrics.compute_and_reset()
    assert list(same) == ["val/fvd_uncalibrated"] and abs(same["val/fvd_uncalibrated"]) < 1e-3
    metrics.update(video.flip(0).roll(3, dims=-1) * 0.3, video)
    assert metrics.compute_and_reset()["val/fvd_uncalibrated"] > 1e-3


def test_teacher_validation_logs_fid_of_samples_and_saves_no_metric_network(tmp_path, tiny_shards):
    cfg = compose("train", [
        "experiment=tiny_teacher", f"data.cfg.root={tiny_shards}", f"run_dir={tmp_path}", "trainer.max_steps=1",
        "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "stage.metrics.names=[fid]",
        "stage.metrics.allow_random_weights=true",
    ])
    result = train(cfg)
    header = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/fid_uncalibrated" in header and "val/fid" not in header
    keys = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert not any("val_metrics" in k or "network" in k for k in keys)
