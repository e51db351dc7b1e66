"""Sync-C / Sync-D: offset search closed forms, windowing, the MFCC front end, and the metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rest_lightning.metrics import LipSync, SyncConfig, sync_scores
from rest_lightning.metrics.mfcc import MFCCConfig, mfcc, num_mfcc_frames
from rest_lightning.metrics.sync import PAIRWISE_EPS, mean_offset_distances, num_windows

VSHIFT = 15  # syncnet_python --vshift 15


def test_constant_features_closed_form() -> None:
    """All embeddings = e0, N = 20 windows: mdist[k] = |k-15|/N (share of zero-padded partners) except
    mdist[15] = sqrt(D)*eps; offset 0, Sync-D = sqrt(1024)*1e-6, Sync-C = median|k-15|/N = 8/20."""
    n, dim = 20, 1024
    e0 = torch.zeros(n, dim)
    e0[:, 0] = 1
    scores = sync_scores(e0, e0, VSHIFT)
    eps_distance = math.sqrt(dim) * PAIRWISE_EPS
    # A padded (zero) partner is at distance ||e0 + eps|| = sqrt((1+eps)^2 + (D-1) eps^2) ~ 1.
    pad_distance = math.sqrt((1 + PAIRWISE_EPS) ** 2 + (dim - 1) * PAIRWISE_EPS**2)
    expected = [
        (abs(k - VSHIFT) * pad_distance + (n - abs(k - VSHIFT)) * eps_distance) / n
        for k in range(2 * VSHIFT + 1)
    ]
    np.testing.assert_allclose(scores.mean_distances.numpy(), expected, rtol=1e-9)
    assert scores.offset == 0
    assert scores.min_distance == pytest.approx(eps_distance, rel=1e-9)
    assert scores.confidence == pytest.approx(expected[VSHIFT + 8] - eps_distance, rel=1e-9)
    assert scores.confidence == pytest.approx(8 / n, abs=1e-3)


@pytest.mark.parametrize("shift", [2, -3])
def test_offset_search_recovers_a_known_shift(shift: int) -> None:
    """Audio delayed by s frames (a_j = v_{j-s}) is detected at offset -s; the scores are the ones
    computed by hand from the distance table."""
    n, dim = 60, 64
    gen = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    audio = torch.nn.functional.normalize(
        torch.randn(n, dim, generator=gen), dim=1
    )  # rows out of range stay random
    for j in range(n):
        if 0 <= j - shift < n:
            audio[j] = video[j - shift]
    scores = sync_scores(video, audio, VSHIFT)
    assert scores.offset == -shift

    # Hand computation: distance of window i to audio row i+k (zero rows outside), mean over i.
    table = torch.zeros(n, 2 * VSHIFT + 1, dtype=torch.float64)
    for i in range(n):
        for k in range(-VSHIFT, VSHIFT + 1):
            j = i + k
            partner = audio[j].double() if 0 <= j < n else torch.zeros(dim, dtype=torch.float64)
            table[i, k + VSHIFT] = torch.linalg.vector_norm(video[i].double() - partner + PAIRWISE_EPS)
    mean = table.mean(dim=0)
    best = int(torch.argmin(mean))
    assert best == VSHIFT + shift
    assert scores.min_distance == pytest.approx(float(mean[best]), rel=1e-9)
    assert scores.confidence == pytest.approx(float(torch.sort(mean).values[VSHIFT] - mean[best]), rel=1e-9)
    assert scores.confidence > 1.0  # a clear peak: matched rows ~0 vs random unit vectors ~sqrt(2)


def test_mean_offset_distances_rejects_mismatched_embeddings() -> None:
    with pytest.raises(ValueError, match="both be \\(L, D\\)"):
        mean_offset_distances(torch.zeros(5, 4), torch.zeros(6, 4), VSHIFT)


def test_windowing_follows_syncnet_python() -> None:
    """min_length = min(frames, samples // 640); lastframe = min_length - 5; window v uses MFCC
    columns 4v..4v+19, so for min_length 25 the last window reads columns 76..95."""
    config = SyncConfig()
    assert (config.samples_per_frame, config.mfcc_steps_per_frame) == (640, 4)
    assert num_windows(25, 25 * 640, config) == 20
    assert num_windows(30, 25 * 640 + 639, config) == 20  # audio is the shorter stream here
    last = num_windows(25, 25 * 640, config) - 1
    first_col, last_col = 4 * last, 4 * last + 20 - 1
    assert (first_col, last_col) == (76, 95)
    assert last_col < num_mfcc_frames(25 * 640)


def test_sync_config_refuses_rates_syncnet_cannot_pair() -> None:
    with pytest.raises(ValueError, match="multiple of fps"):
        SyncConfig(fps=24, mfcc=MFCCConfig(sample_rate=16000 + 1))
    with pytest.raises(ValueError, match="SyncNet pairs 5 frames with 20 MFCC steps"):
        SyncConfig(fps=50)


def test_mfcc_frame_counts() -> None:
    assert mfcc(torch.ones(16000)).shape == (99, 13)
    assert num_mfcc_frames(401) == 2 and num_mfcc_frames(400) == 1
    assert mfcc(torch.ones(400)).shape == (1, 13)


def test_mfcc_scaling_moves_only_c0_by_two_log_c() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8000, generator=gen, dtype=torch.float64) * 3000
    c = 1 / 32768
    base, scaled = mfcc(x), mfcc(c * x)
    torch.testing.assert_close(scaled[:, 1:], base[:, 1:], rtol=0, atol=1e-9)
    torch.testing.assert_close(
        scaled[:, 0] - base[:, 0], torch.full_like(base[:, 0], 2 * math.log(c)), rtol=0, atol=1e-9
    )


def test_mfcc_matches_python_speech_features() -> None:
    psf = pytest.importorskip(
        "python_speech_features", reason="reference MFCC (pip install python_speech_features)"
    )
    rng = np.random.default_rng(2)
    t = np.arange(12345) / 16000
    # int16-range speech-like signal: two tones plus noise, with a silent stretch (exercises the eps floor).
    signal = (
        8000 * np.sin(2 * np.pi * 220 * t)
        + 3000 * np.sin(2 * np.pi * 1800 * t)
        + 500 * rng.standard_normal(t.size)
    )
    signal[4000:5000] = 0
    signal = np.round(signal).astype(np.int16)
    reference = psf.mfcc(signal, 16000)
    ours = mfcc(torch.from_numpy(signal.astype(np.int64))).numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-7, atol=1e-7)


def _lipsync_inputs(gen: torch.Generator, videos: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    video = torch.rand(videos, 3, frames, 64, 64, generator=gen) * 2 - 1  # resized to 224 inside
    audio = (torch.rand(videos, frames * 640, generator=gen) * 2 - 1) * 0.3
    return video, audio


def test_lipsync_metric_runs_end_to_end_and_merges_ranks() -> None:
    """Random-weight SyncNet on 2 short videos (8 frames -> 3 windows each): scores match the per-video
    function, are labelled uncalibrated, and 2 simulated ranks merge to the single-process values."""
    gen = torch.Generator().manual_seed(3)
    video, audio = _lipsync_inputs(gen, videos=2, frames=8)
    single = LipSync(allow_random_weights=True)
    single.update(video, audio)
    per_video = [single.score_video(v, a) for v, a in zip(video, audio, strict=True)]
    values = single.compute()
    assert float(values["sync_c"]) == pytest.approx(np.mean([s.confidence for s in per_video]), rel=1e-12)
    assert float(values["sync_d"]) == pytest.approx(np.mean([s.min_distance for s in per_video]), rel=1e-12)
    assert all(s.confidence >= 0 and len(s.mean_distances) == 2 * VSHIFT + 1 for s in per_video)
    assert single.offsets().tolist() == [s.offset for s in per_video]
    results = single.results()
    assert results["sync_c"].key == "sync_c_uncalibrated" and results["sync_c"].higher_is_better
    assert not results["sync_d"].higher_is_better

    ranks = [LipSync(network=single.network) for _ in range(2)]
    for rank, metric in enumerate(ranks):
        metric.update(video[rank : rank + 1], audio[rank : rank + 1])
    ranks[0].merge_state(ranks[1])
    merged = ranks[0].compute()
    for name in ("sync_c", "sync_d"):
        assert float(merged[name]) == pytest.approx(float(values[name]), rel=1e-12)


def test_lipsync_refuses_too_short_videos() -> None:
    gen = torch.Generator().manual_seed(4)
    video, audio = _lipsync_inputs(gen, videos=1, frames=5)
    metric = LipSync(network=LipSync(allow_random_weights=True).network)
    with pytest.raises(ValueError, match="at least 6 frames and 3840 audio samples"):
        metric.update(video, audio)
