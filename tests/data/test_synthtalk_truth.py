"""SynthTalk ground truth: the sidecar re-renders the source exactly, every shard clip carries its slice,
and re-rendering through the clip's crop boxes gives the decoded shard clip up to codec error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rest_lightning.data.codecs import H264Config, decode_mp4, decode_wav, encode_mp4
from rest_lightning.data.schema import ClipRecord, MediaSpec
from rest_lightning.data.shard_index import CorpusIndex
from rest_lightning.data.synthetic import (
    VideoTruth,
    make_identity,
    render_for_audio,
    render_frames,
    sidecar_path,
    synthesize_video,
    tracks_for_audio,
)
from rest_lightning.data.synthtalk import ClipTruth

SPLITS = ("train", "val", "test")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0**2 / mse))


def _records(output: str, split: str) -> list[tuple[ClipRecord, dict]]:
    index = CorpusIndex.from_manifest(output, split)
    return [(ClipRecord.from_json((s := index.read(i))["json"]), s) for i in range(index.total)]


def test_sidecar_rerenders_the_source_video_exactly(corpus):
    for path in corpus:
        truth = VideoTruth.from_json(sidecar_path(path).read_text())
        i = int(path.stem.removeprefix("vid"))
        assert truth.identity == make_identity(truth.identity.index, truth.identity.seed)
        video = synthesize_video(truth.identity, 3.0, truth.size, seed=i, media=truth.media)
        np.testing.assert_array_equal(render_frames(truth.identity, truth.size, truth.tracks), video.frames)
        # From the audio alone (pose phase 0, the video's blink seed and loudness scale): the same frames.
        again = render_for_audio(
            truth.identity, video.audio, truth.size, truth.media, 0, truth.blink_seed, truth.loudness_scale
        )
        np.testing.assert_array_equal(again, video.frames)


def test_any_window_of_the_audio_gives_that_window_of_the_tracks():
    media = MediaSpec()
    identity = make_identity(2, 0)
    video = synthesize_video(identity, 4.0, 32, seed=7, media=media)
    spf = media.samples_per_frame
    for start, frames in ((0, 17), (23, 33), (60, 40)):
        window = tracks_for_audio(
            identity,
            video.audio[start * spf : (start + frames) * spf],
            media,
            start_frame=start,
            blink_seed=video.blink_seed,
            scale=video.loudness_scale,
        )
        expected = video.tracks.slice(start, start + frames)
        np.testing.assert_array_equal(window.mouth, expected.mouth)
        np.testing.assert_array_equal(window.blink, expected.blink)
        np.testing.assert_allclose(window.pose, expected.pose, rtol=0, atol=1e-12)
    assert video.tracks.blink.sum() > 0, "4 s of video should hold at least one blink"


def test_shard_clips_carry_their_slice_and_rerender_within_codec_error(corpus, prepared):
    cfg, _ = prepared
    truths = {str(p): VideoTruth.from_json(sidecar_path(p).read_text()) for p in corpus}
    h264 = H264Config(crf=cfg.h264_crf, preset=cfg.h264_preset)
    psnrs, controls, codec = [], [], []
    for split in SPLITS:
        for record, sample in _records(cfg.output, split):
            video_truth = truths[record.source]
            clip = ClipTruth.from_record(record)
            stop = record.start_frame + record.frames
            np.testing.assert_array_equal(
                clip.tracks.mouth, video_truth.tracks.mouth[record.start_frame : stop]
            )
            np.testing.assert_array_equal(
                clip.tracks.blink, video_truth.tracks.blink[record.start_frame : stop]
            )
            assert clip.identity == video_truth.identity and clip.identity.speaker == record.speaker
            decoded = decode_mp4(sample["video.mp4"])
            rendered = clip.frames(cfg.size)
            assert rendered.shape == decoded.shape
            psnrs.append(_psnr(rendered, decoded))
            # Codec error, measured here: the rendered clip through the two H.264 generations a shard clip
            # went through (source mp4, clip mp4) at the same settings, without any rendering mismatch.
            once = decode_mp4(encode_mp4(rendered, cfg.fps, h264))
            codec.append(_psnr(rendered, decode_mp4(encode_mp4(once, cfg.fps, h264))))
            # Control: the right face one frame late (what a pose or mouth off by one frame would score).
            late = np.concatenate([rendered[1:], rendered[-1:]])
            controls.append(_psnr(late, decoded))
            # The clip's own audio gives back the clip (mouth normalised by the video's loudness scale;
            # AAC moves the loudness a little, so the mouth agrees to ~1 % of full opening).
            audio, _ = decode_wav(sample["audio.wav"])
            assert np.abs(clip.tracks_for_audio(audio).mouth - clip.tracks.mouth).max() < 0.02
    psnrs, codec, controls = np.array(psnrs), np.array(codec), np.array(controls)
    print(
        f"re-render vs shard clip: PSNR {psnrs.mean():.2f} dB (min {psnrs.min():.2f}); two-generation "
        f"codec round trip {codec.mean():.2f} dB; one frame late {controls.mean():.2f} dB"
    )
    # Within codec error: no clip worse than its own codec round trip by more than 1 dB (x264 does not
    # decode to the same pixels from a different GOP, so equality is not expected), and clearly better
    # than a one-frame mismatch.
    assert np.all(psnrs >= codec - 1.0), (psnrs, codec)
    assert np.all(psnrs >= controls + 1.0), (psnrs, controls)


def test_manifest_held_out_speakers_never_train(prepared):
    cfg, _ = prepared
    manifest = json.loads((Path(cfg.output) / "manifest.json").read_text())
    names = {split: set(manifest["splits"][split]["speaker_names"]) for split in SPLITS}
    assert all(names.values()), names
    assert not names["train"] & (names["val"] | names["test"]) and not names["val"] & names["test"]
    # The manifest agrees with the clips, and no held-out identity's parameters occur in train.
    identities = {}
    for split in SPLITS:
        records = [r for r, _ in _records(cfg.output, split)]
        assert {r.speaker for r in records} == names[split]
        identities[split] = {json.dumps(r.identity, sort_keys=True) for r in records}
    assert not identities["train"] & (identities["val"] | identities["test"])


def test_clip_without_ground_truth_is_refused():
    record = ClipRecord("v", "spk", 0, 0, 17, 25, 16_000, 20, [0, 0, 96])
    with pytest.raises(ValueError, match="no SynthTalk ground truth"):
        ClipTruth.from_record(record)
