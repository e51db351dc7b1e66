"""The stages log the SynthTalk metrics (issue 12) at validation on a synthetic corpus, and nothing elsewhere.

``tiny_shards`` is a real rest-prep output of a synthetic corpus at 32 px (clips of 17 frames), so its
samples' json carries ground truth (``gt``) and every batch says so (``ClipBatch.synthetic``).
"""

from __future__ import annotations

import csv
import logging

import lightning as L
import pytest
import torch

from rest_lightning.config import compose
from rest_lightning.data.batch import ClipBatch
from rest_lightning.data.datamodule import DataConfig, VideoDataModule
from rest_lightning.metrics import SynthTalkIdentity, SynthTalkLipSync
from rest_lightning.stages.val_metrics import ValMetrics, ValMetricsConfig, speaker_id, synthtalk_rows
from rest_lightning.training import instantiate_node, train

GENERATED = ("val/synthtalk_sync_r", "val/synthtalk_sync_offset", "val/synthtalk_mouth_std", "val/synthtalk_identity")
REAL = tuple(f"{key}_real" for key in GENERATED)
VAL_BATCHES, BATCH_SIZE = 2, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def val_batches(root) -> list[ClipBatch]:
    """The batches the stages validate on (rank 0 of 1, the tiny configs' window and batch size)."""
    data = VideoDataModule(DataConfig(root=str(root), latent_frames=2, batch_size=BATCH_SIZE, num_workers=0))
    return list(data.eval_dataset("val"))[:VAL_BATCHES]


def test_vae_validation_logs_synthtalk_of_reconstructions_and_of_the_clips(tmp_path, tiny_shards):
    cfg = compose("train", [
        "experiment=tiny_vae", f"data.cfg.root={tiny_shards}", f"run_dir={tmp_path}", "trainer.max_steps=2",
        "trainer.val_check_interval=2", f"trainer.limit_val_batches={VAL_BATCHES}", "checkpoint.every_n_steps=2",
    ])
    result = train(cfg)
    rows = list(csv.DictReader((result.run_dir / "logs" / "metrics.csv").open()))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/synthtalk") and v}
    assert set(logged) == set(GENERATED + REAL)

    # The clips' own scores equal the metrics run offline on the same clips: the stage scores the right
    # rows, with their audio, references and speakers (pooled per speaker name).
    batches = val_batches(tiny_shards)
    video = torch.cat([b.video[b.mask] for b in batches])
    audio = torch.cat([b.audio[b.mask] for b in batches])
    ref = torch.cat([b.ref[b.mask] for b in batches])
    speakers = [s for b in batches for s, keep in zip(b.speakers, b.mask, strict=True) if keep]
    assert len(set(speakers)) >= 2, "the tiny val split holds two speakers"
    lip_sync, identity = SynthTalkLipSync(), SynthTalkIdentity()
    lip_sync.update(video, audio, torch.tensor([speaker_id(s) for s in speakers]))
    identity.update(video, ref)
    expected = {f"val/{k}_real": float(v) for k, v in (lip_sync.compute() | identity.compute()).items()}
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # Two steps of training reconstruct a blur: ground truth must score better on both axes.
    assert logged["val/synthtalk_sync_r_real"] > 0.8 > logged["val/synthtalk_sync_r"]
    assert logged["val/synthtalk_identity"] > logged["val/synthtalk_identity_real"]


def _validate(stage, tiny_shards, *overrides: str) -> dict[str, float]:
    cfg = compose("train", [*overrides, f"data.cfg.root={tiny_shards}"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=VAL_BATCHES)
    trainer.validate(stage, datamodule=instantiate_node(cfg.data, "data"), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/synthtalk")}


@pytest.mark.parametrize("experiment", ["tiny_teacher", "tiny_student"])
def test_teacher_samples_and_student_streams_are_scored(tiny_shards, experiment):
    torch.manual_seed(0)
    overrides = [f"experiment={experiment}", f"data.cfg.root={tiny_shards}"]
    stage = instantiate_node(compose("train", overrides).stage, "stage")
    logged = _validate(stage, tiny_shards, *overrides)
    # The teacher's sampled clip stands for a validation clip (so the clip's own score is logged too);
    # the student's stream loops the clip's audio and has no such counterpart.
    assert set(logged) == set(GENERATED + REAL if experiment == "tiny_teacher" else GENERATED)
    assert all(torch.isfinite(torch.tensor(v)) for v in logged.values())


def test_switched_off_nothing_is_logged(tiny_shards):
    torch.manual_seed(0)
    overrides = ["experiment=tiny_teacher", f"data.cfg.root={tiny_shards}", "stage.metrics.synthtalk=false"]
    assert _validate(instantiate_node(compose("train", overrides).stage, "stage"), tiny_shards, *overrides) == {}


def test_clips_without_ground_truth_padding_and_small_frames_are_not_scored(tiny_shards, caplog):
    batch = val_batches(tiny_shards)[0]
    assert batch.synthetic.all() and batch.mask.all() and all(batch.speakers)
    everything = torch.ones(len(batch), dtype=torch.bool)
    metrics = ValMetrics(ValMetricsConfig())

    # A corpus without ground truth (a real one, or shards of schema 1), and a batch built by hand.
    unknown = ClipBatch(**{**batch.__dict__, "synthetic": None, "speakers": []})
    real_corpus = ClipBatch(**{**batch.__dict__, "synthetic": torch.zeros(len(batch), dtype=torch.bool)})
    for other in (unknown, real_corpus):
        assert synthtalk_rows(other) == []
        metrics.update_synthtalk(other.video, other, everything, other.audio, real=other.video)
    assert metrics.compute_and_reset() == {}, "no clip scored: nothing logged, no error"

    padded = ClipBatch(**{**batch.__dict__, "mask": torch.tensor([False, True])})
    assert synthtalk_rows(padded) == [1] and synthtalk_rows(batch, torch.tensor([True, False])) == [0]

    with caplog.at_level(logging.WARNING, logger="rest_lightning.stages.val_metrics"):
        small = batch.video[..., :16, :16]
        metrics.update_synthtalk(small, batch, everything, batch.audio)
    assert metrics.compute_and_reset() == {} and "needs >= 32" in caplog.text

    # The same batch with ground truth is scored; fake/real rows follow `rows` in order.
    metrics.update_synthtalk(batch.video[1:], batch, torch.tensor([False, True]), batch.audio, real=batch.video[1:])
    logged = metrics.compute_and_reset()
    assert set(logged) == set(GENERATED + REAL)
    assert logged["val/synthtalk_identity"] == logged["val/synthtalk_identity_real"]

    switched_off = ValMetrics(ValMetricsConfig(synthtalk=False))
    switched_off.update_synthtalk(batch.video, batch, everything, batch.audio)
    assert switched_off.compute_and_reset() == {}
