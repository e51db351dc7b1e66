"""data_prep.lipsync_filter with a constructed scorer (a random SyncNet cannot judge real lip sync).

Each video frame and each 40 ms of audio carry the same random code (frame brightness, sample value);
the scorer embeds a 5-frame window as its 5 codes, on both sides, and scores with syncnet_python's
offset search (``rest_lightning.metrics.sync_scores``). So the true AV relation is known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.lipsync_filter import LipSyncFilterConfig, filter_and_correct, judge_clip, shift_audio
from rest_lightning.metrics import sync_scores

SPF = 640  # audio samples per 25 fps frame at 16 kHz
FRAMES = 40
WINDOW = 5  # SyncNet's window
VSHIFT = 15
PAD = 8  # codes beyond the clip on both sides, so a shifted audio is other real speech, not silence
CONFIG = LipSyncFilterConfig(min_confidence=1.0)  # the constructed embeddings' scale (SyncNet's is 3)


class CodeScorer:
    def score_video(self, video: torch.Tensor, audio: torch.Tensor):
        frames = video.shape[1]
        video_codes = video.mean(dim=(0, 2, 3))  # (T,)
        audio_codes = audio.reshape(-1, SPF).mean(dim=1)[:frames]
        windows = frames - WINDOW
        video_emb = torch.stack([video_codes[i : i + WINDOW] for i in range(windows)])
        audio_emb = torch.stack([audio_codes[i : i + WINDOW] for i in range(windows)])
        return sync_scores(video_emb, audio_emb, VSHIFT)


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    levels = np.random.default_rng(0).integers(20, 236, FRAMES + 2 * PAD)
    return levels / 127.5 - 1  # exactly representable as 8-bit frames


def clip(codes: np.ndarray, delay: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames of codes[PAD:PAD+T]; audio delayed by ``delay`` frames (audio frame j = video frame j - delay)."""
    video_codes = codes[PAD : PAD + FRAMES]
    levels = np.round((video_codes + 1) * 127.5).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (FRAMES, 8, 8, 3)).copy()
    audio = np.repeat(codes[PAD - delay : PAD - delay + FRAMES], SPF).astype(np.float32)
    return frames, audio


@pytest.mark.parametrize("delay", [0, 2, -3, 6])
def test_a_known_offset_is_detected_and_shifted_back_to_zero(codes, delay) -> None:
    frames, audio = clip(codes, delay)
    decision, corrected = filter_and_correct(CodeScorer(), frames, audio, CONFIG)
    assert decision.keep and decision.offset == -delay  # negative offset: audio late (syncnet_python)
    assert corrected is not None and corrected.shape == audio.shape
    after = judge_clip(CodeScorer(), frames, corrected, CONFIG)
    assert after.offset == 0 and after.keep
    assert after.distance < decision.distance or delay == 0


def test_a_clip_with_another_clips_audio_is_dropped(codes) -> None:
    frames, _ = clip(codes, 0)
    other = np.repeat(np.random.default_rng(5).integers(20, 236, FRAMES) / 127.5 - 1, SPF).astype(np.float32)
    decision, corrected = filter_and_correct(CodeScorer(), frames, other, CONFIG)
    assert not decision.keep and corrected is None
    assert "confidence" in decision.reason
    in_sync = judge_clip(CodeScorer(), *clip(codes, 0), CONFIG)
    assert in_sync.confidence > decision.confidence


def test_max_abs_offset_drops_a_clip_too_far_out_of_sync(codes) -> None:
    config = LipSyncFilterConfig(min_confidence=1.0, max_abs_offset=4)
    decision, corrected = filter_and_correct(CodeScorer(), *clip(codes, 6), config)
    assert not decision.keep and corrected is None and "exceeds" in decision.reason


def test_shift_audio_moves_whole_frames_and_keeps_the_length() -> None:
    audio = np.arange(5 * SPF, dtype=np.float32)
    advanced = shift_audio(audio, -2, SPF)  # audio 2 frames late -> 2 frames earlier
    np.testing.assert_array_equal(advanced[: 3 * SPF], audio[2 * SPF :])
    assert not advanced[3 * SPF :].any()
    delayed = shift_audio(audio, 1, SPF)
    np.testing.assert_array_equal(delayed[SPF:], audio[: 4 * SPF])
    assert not delayed[:SPF].any() and len(delayed) == len(audio)
