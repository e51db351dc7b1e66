"""SynthTalk metrics on a tiny prepared synthetic corpus: the ground truth scores best, and each failure
(shifted audio, another speaker, noise, a frozen copy) moves the metric it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.config import PrepConfig
from data_prep.run import run_prep
from rest_lightning.data.codecs import decode_mp4, decode_png, decode_wav
from rest_lightning.data.schema import ClipRecord, MediaSpec
from rest_lightning.data.shard_index import CorpusIndex
from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus
from rest_lightning.data.synthtalk import ClipTruth
from rest_lightning.metrics import PSNR
from rest_lightning.metrics.synthtalk import (
    MouthMeasureConfig,
    SynthTalkIdentity,
    SynthTalkLipSync,
    clip_identity,
    drift,
    expected_mouth,
    frames_to_unit,
    identity_calibration,
    identity_distance,
    lip_sync,
    measure_mouth,
    pearson,
)

SPF = MediaSpec().samples_per_frame


class Clip:
    def __init__(self, record: ClipRecord, sample: dict) -> None:
        self.record = record
        self.speaker = record.speaker
        self.video = frames_to_unit(decode_mp4(sample["video.mp4"]))  # (T, 3, H, W)
        self.ref = frames_to_unit(decode_png(sample["ref.png"])[None])[0]  # (3, H, W)
        self.audio = decode_wav(sample["audio.wav"])[0]
        self.truth = ClipTruth.from_record(record)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Clip]:
    """6 speakers x 1 video x 3 s at 96 px, cut into 4 clips of 17 frames at 64 px each."""
    root = tmp_path_factory.mktemp("synthtalk")
    write_synthetic_corpus(
        SynthConfig(output=str(root / "raw"), n_videos=6, n_speakers=6, seconds=3.0, size=96, seed=0, crf=0)
    )  # lossless: libx264 at crf 18 encodes the same frames differently run to run (docs/synthtalk.md), and
    # the ground truth's lip-sync r then moved across 0.95 (0.92 in one CI run)
    cfg = PrepConfig(
        input=str(root / "raw"),
        output=str(root / "shards"),
        size=64,
        latent_frames=2,
        val_fraction=0.34,
        test_fraction=0.17,
        progress=False,
        workers=0,
        h264_crf=0,
    )
    run_prep(cfg)
    out = []
    for split in ("train", "val", "test"):
        index = CorpusIndex.from_manifest(Path(cfg.output), split)
        out += [Clip(ClipRecord.from_json((s := index.read(i))["json"]), s) for i in range(index.total)]
    assert len({c.speaker for c in out}) == 6
    return out


@pytest.fixture(scope="module")
def calibration(clips):
    return identity_calibration([c.video for c in clips], [c.speaker for c in clips], [c.ref for c in clips])


def _by_speaker(clips):
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        groups.setdefault(c.speaker, []).append(c)
    return groups


def test_mouth_opening_from_pixels_matches_ground_truth_on_held_out_frames(clips):
    held_out = [c for c in clips if c.record.split != "train"]
    measured = torch.cat([measure_mouth(c.video) for c in held_out])
    truth = torch.cat([torch.from_numpy(c.truth.tracks.mouth) for c in held_out])
    mae = float((measured - truth).abs().mean())
    r = pearson(measured, truth)
    # The scale of the task: predicting the mean opening for every frame.
    baseline = float((truth - truth.mean()).abs().mean())
    print(
        f"mouth opening on {len(truth)} held-out frames at 64 px: MAE {mae:.3f} (constant {baseline:.3f}), r {r:.3f}"
    )
    assert r >= 0.9 and mae <= 0.5 * baseline


def test_ground_truth_syncs_and_keeps_identity_and_shifted_audio_is_found(clips, calibration):
    same_p95, different_p5 = calibration.percentile("same", 95), calibration.percentile("different", 5)
    distances = {}
    # The geometry for this fixture's crops (PrepConfig's default margin): the default one, which also
    # covers tight crops, read 0.93-0.94 for one speaker in some full-suite runs.
    geometry = MouthMeasureConfig.for_crop_margin(PrepConfig.__dataclass_fields__["margin"].default)
    for speaker, group in _by_speaker(clips).items():
        measured = [measure_mouth(c.video, geometry) for c in group]
        expected = expected_mouth([c.audio for c in group])
        score = lip_sync(measured, expected)
        assert score.r >= 0.95 and score.offset == 0, (speaker, score)
        distances[speaker] = np.mean(
            [identity_distance(clip_identity(c.video), clip_identity(c.ref[None])) for c in group]
        )
        # Not "each speaker <= same_p95": with 6 speakers one can hold the whole upper 5% of the same-speaker
        # pairs (seen: 0.0412 against p95 0.0409, depending on the codec's output). What must hold is that a
        # speaker's own clips are never mistaken for another speaker's.
        assert distances[speaker] < different_p5, (speaker, distances[speaker], different_p5)
        for k in (2, -3):  # audio delayed by k frames (k < 0: early)
            shifted = expected_mouth([np.roll(c.audio, k * SPF) for c in group])
            moved = lip_sync(measured, shifted)
            assert moved.offset == k and moved.r < score.r - 0.2, (speaker, k, moved)
    assert np.mean(list(distances.values())) <= same_p95, (distances, same_p95)


def test_crop_margin_geometry_is_the_fitted_one_at_the_default_margin_and_grows_for_tight_crops():
    fitted = MouthMeasureConfig.for_crop_margin(0.25)
    assert fitted.search_box == pytest.approx((0.5, 0.82, 0.3, 0.7)) and fitted.window == pytest.approx((0.09, 0.14))
    tight = MouthMeasureConfig.for_crop_margin(0.0)
    assert tight.search_box == pytest.approx((0.5, 0.98, 0.2, 0.8)) and tight.closing == pytest.approx(0.3)
    assert tight.skin_box == fitted.skin_box == MouthMeasureConfig().skin_box
    with pytest.raises(ValueError, match="margin"):
        MouthMeasureConfig.for_crop_margin(-0.1)


def test_another_speakers_reference_is_far(clips, calibration):
    different_p5 = calibration.percentile("different", 5)
    assert different_p5 > calibration.percentile("same", 95)  # the two distributions separate
    for i, clip in enumerate(clips):
        other = next(c for c in clips[i:] + clips[:i] if c.speaker != clip.speaker)
        assert identity_distance(clip_identity(clip.video), clip_identity(other.ref[None])) > different_p5


def test_noise_scores_worst_and_a_frozen_clip_does_not_sync(clips, calibration):
    gen = torch.Generator().manual_seed(0)
    clip = clips[0]
    noise = torch.rand(clip.video.shape, generator=gen) * 2 - 1
    frozen = clip.ref[None].expand_as(clip.video)
    (expected,) = expected_mouth([clip.audio])
    truth = frames_to_unit(clip.truth.frames(64))
    psnr = {}
    for name, video in (("truth", clip.video), ("frozen", frozen), ("noise", noise)):
        metric = PSNR()
        metric.update(video, truth)
        psnr[name] = float(metric.compute())
    assert psnr["noise"] < psnr["frozen"] < psnr["truth"]
    ref = clip_identity(clip.ref[None])
    assert identity_distance(clip_identity(noise), ref) > calibration.percentile("different", 5)
    # A frozen copy has a constant mouth: r is exactly 0 (not NaN), whatever the audio.
    measured = measure_mouth(frozen)
    assert float(measured.std()) == 0.0
    assert lip_sync([measured], [expected]).r == 0.0
    assert pearson(torch.zeros(5), torch.arange(5.0)) == 0.0
    assert (
        abs(lip_sync([measure_mouth(noise)], [expected]).r)
        < 0.5 * lip_sync([measure_mouth(clip.video)], [expected]).r
    )


def test_metrics_merged_from_two_halves_equal_one_pass(clips):
    group = clips[:8]
    speakers = {s: i for i, s in enumerate(sorted({c.speaker for c in group}))}
    video = torch.stack([c.video.transpose(0, 1) for c in group])  # (B, 3, T, H, W)
    audio = torch.stack([torch.from_numpy(c.audio) for c in group])
    ids = torch.tensor([speakers[c.speaker] for c in group])
    refs = torch.stack([c.ref for c in group])
    whole, halves = SynthTalkLipSync(), [SynthTalkLipSync(), SynthTalkLipSync()]
    identity, identity_halves = SynthTalkIdentity(), [SynthTalkIdentity(), SynthTalkIdentity()]
    whole.update(video, audio, ids)
    identity.update(video, refs)
    for part, (metric, ident) in enumerate(zip(halves, identity_halves, strict=True)):
        metric.update(video[part::2], audio[part::2], ids[part::2])
        ident.update(video[part::2], refs[part::2])
    halves[0].merge_state(halves[1])
    identity_halves[0].merge_state(identity_halves[1])
    for key, value in whole.compute().items():
        assert float(halves[0].compute()[key]) == pytest.approx(float(value), abs=1e-12), key
    assert float(whole.compute()["synthtalk_sync_r"]) >= 0.95
    assert float(identity_halves[0].compute()["synthtalk_identity"]) == pytest.approx(
        float(identity.compute()["synthtalk_identity"]), abs=1e-12
    )
    assert {r.key for r in whole.results().values()} == {
        "synthtalk_sync_r",
        "synthtalk_sync_offset",
        "synthtalk_mouth_std",
    }


def test_drift_rule_holds_for_one_face_and_fails_when_the_face_changes(clips, calibration):
    different_median = calibration.percentile("different", 50)
    groups = list(_by_speaker(clips).values())
    own, other = groups[0], groups[1]
    window_s = own[0].video.shape[0] / MediaSpec().fps  # one clip per window (the test's "10 s")
    stream = torch.cat([c.video for c in own])
    kept = drift(stream, own[0].ref, different_median, window_s=window_s)
    assert len(kept.distances) == len(own) and kept.holds
    changed = torch.cat([c.video for c in own[:-1]] + [other[0].video])
    broken = drift(changed, own[0].ref, different_median, window_s=window_s)
    assert not broken.holds and broken.distances[-1] > broken.limit


def test_index_spread_equals_numpy_quantile(clips):
    """The face box's vectorised quantile spread is numpy's per-frame ``np.quantile`` to the bit: on random
    masks (empty, one pixel, full rows) and on the corpus's own face masks, both axes."""
    from rest_lightning.metrics.synthtalk import _index_spread

    def reference(masks: np.ndarray, q: float) -> np.ndarray:
        out = np.zeros((len(masks), 2))
        for i, mask in enumerate(masks):
            rows, cols = np.nonzero(mask)
            if len(rows):
                out[i] = (np.subtract(*np.quantile(cols, (q, 1.0 - q))[::-1]),
                          np.subtract(*np.quantile(rows, (q, 1.0 - q))[::-1]))
        return out

    def spread(masks: np.ndarray, q: float) -> np.ndarray:
        return np.stack([_index_spread(masks.sum(axis=1), q), _index_spread(masks.sum(axis=2), q)], axis=1)

    rng = np.random.default_rng(0)
    masks = rng.random((200, 32, 24)) < rng.random((200, 1, 1)) ** 3  # densities from ~0 to ~1
    masks[0] = False
    masks[1] = False
    masks[1, 5, 7] = True
    masks[2] = False
    masks[2, 3:9] = True
    video = torch.cat([c.video for c in clips])
    frames = ((video.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()
    faces = np.linalg.norm(frames - frames[:, :, :1], axis=-1) > 40.0  # far from the left column's colour
    for q in (0.02, 0.1, 0.25, 0.5):
        np.testing.assert_array_equal(spread(masks, q), reference(masks, q))
        np.testing.assert_array_equal(spread(faces, q), reference(faces, q))
    assert reference(faces, 0.02).min() > 0, "the corpus masks hold faces"
