"""The synthetic corpus: lips really follow the audio, identities differ, output is deterministic."""

from __future__ import annotations

import io

import av
import numpy as np

from data_prep.media import probe_and_decode_audio
from rest_lightning.data.codecs import decode_mp4, pcm16_to_float
from rest_lightning.data.synthetic import (
    SynthConfig,
    lip_audio_correlation,
    make_identity,
    synthesize_video,
    write_synthetic_corpus,
)


def _videos(n=4, seconds=3.0, size=64):
    return [synthesize_video(make_identity(i, 0), seconds, size, seed=i) for i in range(n)]


def test_mouth_follows_own_audio_not_other_audio():
    videos = _videos()
    for i, v in enumerate(videos):
        other = videos[(i + 1) % len(videos)]
        assert lip_audio_correlation(v.frames, v.audio) > 0.8
        assert abs(lip_audio_correlation(v.frames, other.audio)) < 0.4


def test_speech_has_pauses_and_voiced_segments():
    v = _videos(n=1)[0]
    # Mouth opening is the normalised loudness: a real share of frames is closed (pauses) and open.
    assert 0.1 < np.mean(v.mouth_open < 0.1) < 0.7
    assert np.mean(v.mouth_open > 0.5) > 0.1


def test_identities_differ_and_generation_is_deterministic():
    a, b = _videos(n=2)
    assert np.abs(a.frames[0].astype(int) - b.frames[0].astype(int)).mean() > 10
    again = synthesize_video(make_identity(0, 0), 3.0, 64, seed=0)
    np.testing.assert_array_equal(a.frames, again.frames)
    np.testing.assert_array_equal(a.audio, again.audio)


def test_written_mp4_has_h264_video_aac_audio_and_keeps_lip_sync(corpus):
    path = corpus[0]
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].average_rate == 25
    probe = probe_and_decode_audio(str(path), 25, 16_000)  # edit-list aware: priming samples dropped
    frames = decode_mp4(path.read_bytes())
    assert frames.shape == (75, 96, 96, 3) and probe.frames == 75
    # AAC smears the envelope a little; the mouth still follows the decoded audio, and only when
    # aligned (AAC priming not stripped would shift it by 1024 samples = 1.6 frames).
    audio = pcm16_to_float(probe.audio)
    assert lip_audio_correlation(frames, audio) > 0.85
    assert lip_audio_correlation(frames, np.roll(audio, 1024)) < lip_audio_correlation(frames, audio) - 0.1


def test_corpus_layout_speaker_folders(tmp_path):
    paths = write_synthetic_corpus(
        SynthConfig(output=str(tmp_path), n_videos=3, n_speakers=2, seconds=1.0, size=32)
    )
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "spk000/vid0000.mp4",
        "spk001/vid0001.mp4",
        "spk000/vid0002.mp4",
    ]
    assert io.BytesIO(paths[0].read_bytes()).getbuffer().nbytes > 0
