"""rest-prep on a synthetic corpus plus deliberately broken inputs: counts, rejections, alignment."""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.config import PrepConfig
from data_prep.detect import HaarFaceDetector
from data_prep.run import run_prep
from rest_lightning.data.codecs import decode_mp4, decode_png, decode_wav
from rest_lightning.data.schema import ClipRecord
from rest_lightning.data.shard_index import CorpusIndex
from rest_lightning.data.synthetic import make_identity, render_face, synthesize_video


def write_media(
    path,
    frames=None,
    fps=25,
    audio=None,
    rate=16_000,
    container=None,
    acodec="aac",
    layout="mono",
    pts_scale=None,
):
    """Write a file with PyAV: frames (T, H, W, 3) uint8 and/or audio (C, S) float32."""
    with av.open(os.fsdecode(path), "w", format=container) as c:
        vs = a = None  # every stream is added before the first packet is muxed (header)
        if frames is not None:
            vs = c.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            if pts_scale is not None:
                vs.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            a = c.add_stream(acodec, rate=rate)
            a.layout = layout
        if vs is not None:
            for i, f in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(f, format="rgb24")
                if pts_scale is not None:  # variable frame rate: explicit, irregular timestamps
                    vf.pts, vf.time_base = int(pts_scale[i]), Fraction(1, 1000)
                for p in vs.encode(vf):
                    c.mux(p)
            for p in vs.encode(None):
                c.mux(p)
        if a is not None:
            pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
            af = av.AudioFrame.from_ndarray(pcm.T.reshape(1, -1).copy(), format="s16", layout=layout)
            af.sample_rate, af.pts, af.time_base = rate, 0, Fraction(1, rate)
            for p in a.encode(af):
                c.mux(p)
            for p in a.encode(None):
                c.mux(p)


def _talking(seconds, size=96, seed=0):
    return synthesize_video(make_identity(seed, 0), seconds, size, seed=seed)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    v = _talking(2.0, seed=1)  # 50 frames at 25 fps
    # Accepted: 30 fps mkv with 44.1 kHz stereo PCM, odd frame size via a 98x96 pad, a non-UTF-8 name, VFR.
    t = np.arange(60) / 30.0
    frames30 = v.frames[np.minimum((t * 25).astype(int), 49)]
    frames30 = np.pad(frames30, ((0, 0), (0, 0), (0, 2), (0, 0)), mode="edge")
    stereo = np.stack([np.interp(np.arange(88200) / 44100, np.arange(32000) / 16000, v.audio)] * 2)
    write_media(
        root / "fps30_stereo44k.mkv",
        frames30,
        fps=30,
        audio=stereo,
        rate=44100,
        container="matroska",
        acodec="pcm_s16le",
        layout="stereo",
    )
    write_media(os.path.join(os.fsencode(root), b"caf\xe9_latin1.mp4"), v.frames, audio=v.audio[None])
    vfr_times = np.cumsum(np.where(np.arange(60) % 2, 30, 45))  # 30/45 ms alternating
    idx = np.minimum((vfr_times / 40).astype(int), 49)
    write_media(
        root / "vfr.mov",
        v.frames[idx],
        fps=25,
        audio=v.audio[None],
        container="mov",
        pts_scale=vfr_times - vfr_times[0],
    )
    # Rejected.
    (root / "zero.mp4").write_bytes(b"")
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    good = (root / "fps30_stereo44k.mkv").read_bytes()
    write_media(root / "truncated_src.mp4", v.frames, audio=v.audio[None])
    (root / "truncated.mp4").write_bytes((root / "truncated_src.mp4").read_bytes()[:3000])
    (root / "truncated_src.mp4").unlink()
    write_media(root / "noaudio.mp4", v.frames)
    write_media(root / "audioonly.mp4", None, audio=v.audio[None])
    write_media(root / "short.mp4", v.frames[:10], audio=v.audio[None, : 10 * 640])
    flat = np.full((50, 96, 96, 3), 128, np.uint8)
    write_media(root / "noface.mp4", flat, audio=v.audio[None])
    assert good
    return root


def test_messy_inputs_accepted_or_rejected_with_reason(messy, tmp_path, prep_kwargs):
    cfg = PrepConfig(
        input=str(messy),
        output=str(tmp_path / "out"),
        **{**prep_kwargs, "val_fraction": 0.0, "test_fraction": 0.0},
    )
    summary = run_prep(cfg)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    by_name = {Path(r["input"]).name: r for r in rejected}
    assert set(by_name) == {
        "zero.mp4",
        "corrupt.mp4",
        "truncated.mp4",
        "noaudio.mp4",
        "audioonly.mp4",
        "short.mp4",
        "noface.mp4",
    }
    assert by_name["zero.mp4"]["reason"] == "zero-length file"
    assert by_name["noaudio.mp4"]["reason"] == "no audio stream"
    assert by_name["audioonly.mp4"]["reason"] == "no video stream"
    assert by_name["short.mp4"]["stage"] == "clip"
    assert by_name["noface.mp4"]["stage"] == "face"
    assert all(r["stage"] and r["reason"] for r in rejected)
    assert summary.rejected == 7 and summary.videos_total == 10
    # The three accepted files: 30 fps / 44.1k stereo mkv (2 s -> 50 frames), non-UTF-8 name, VFR mov.
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["videos"] == 3
    index = CorpusIndex.from_manifest(tmp_path / "out", "train")
    records = [ClipRecord.from_json(index.read(i)["json"]) for i in range(index.total)]
    sources = {os.fsencode(r.source).rsplit(b"/", 1)[-1] for r in records}
    assert b"caf\xe9_latin1.mp4" in sources and b"fps30_stereo44k.mkv" in sources and b"vfr.mov" in sources
    assert all(
        r.frames == 17 and r.ref_frame not in range(r.start_frame, r.start_frame + 17) for r in records
    )
    # Centre-crop fallback keeps the faceless video when asked to.
    only = tmp_path / "noface_only"
    only.mkdir()
    shutil.copy(messy / "noface.mp4", only / "noface.mp4")
    kept = run_prep(
        PrepConfig(
            input=str(only),
            output=str(tmp_path / "out2"),
            center_crop_fallback=True,
            **{**prep_kwargs, "val_fraction": 0.0, "test_fraction": 0.0},
        )
    )
    assert kept.rejected == 0 and kept.clips_total == 2


_STEP = 12  # grey levels between codes: survives two H.264 encodes (source, clip) with margin


def _code(j: int) -> tuple[int, int, int]:
    """Frame index -> background colour (R codes j % 16, G codes j // 16)."""
    return (20 + _STEP * (j % 16), 20 + _STEP * (j // 16), 128)


def _decode(frame: np.ndarray) -> int:
    r, g, _ = frame[:4, :4].reshape(-1, 3).mean(axis=0)
    return int(round((r - 20) / _STEP)) + 16 * int(round((g - 20) / _STEP))


def test_clip_frames_and_audio_are_the_source_sample_exact(tmp_path, prep_kwargs):
    """PCM 16 kHz source (no resampling): each clip's wav equals the source samples it covers, and
    its frames are the source frames at the clip's start (frame index coded in the background)."""
    n = 60
    frames = np.empty((n, 96, 96, 3), np.uint8)
    identity = make_identity(0, 0)
    for j in range(n):
        bg = np.full((96, 96, 3), _code(j), np.uint8)
        frames[j] = render_face(identity, 96, 0.3, background=bg)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, n * 640).astype(np.float32)
    src = tmp_path / "src" / "a.mkv"
    src.parent.mkdir()
    write_media(src, frames, audio=audio[None], container="matroska", acodec="pcm_s16le")
    source_pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    cfg = PrepConfig(
        input=str(src.parent),
        output=str(tmp_path / "out"),
        detector="center",
        margin=0.0,
        **{**prep_kwargs, "val_fraction": 0.0, "test_fraction": 0.0, "size": 96},
    )
    assert run_prep(cfg).clips_total == 3
    index = CorpusIndex.from_manifest(tmp_path / "out", "train")
    for i in range(index.total):
        sample = index.read(i)
        rec = ClipRecord.from_json(sample["json"])
        wav, rate = decode_wav(sample["audio.wav"])
        assert rate == 16_000 and len(wav) == rec.frames * 640
        np.testing.assert_array_equal(
            np.round(wav * 32768).astype(np.int16),
            source_pcm[rec.start_sample : rec.start_sample + rec.frames * 640],
        )
        video = decode_mp4(sample["video.mp4"])
        coded = [_decode(f) for f in video]
        assert coded == list(range(rec.start_frame, rec.start_frame + rec.frames))
        assert _decode(decode_png(sample["ref.png"])) == rec.ref_frame


def test_haar_hit_rate_on_synthetic_faces_and_a_real_photo():
    detector = HaarFaceDetector()
    hits = total = 0
    for i in range(5):  # five identities, every skin tone
        v = synthesize_video(make_identity(i, 0), 1.0, 96, seed=i)
        for frame in v.frames[::5]:
            hits += bool(detector.detect(frame))
            total += 1
    assert hits / total >= 0.8, f"Haar found {hits}/{total} synthetic faces"
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()  # 512x512, one real face around x 170-270, y 60-170
    boxes = detector.detect(photo)
    assert boxes, "no face found in skimage.data.astronaut()"
    best = max(boxes, key=lambda b: b.area)
    assert 150 < best.x + best.w / 2 < 290 and 50 < best.y + best.h / 2 < 190


def test_prepared_corpus_counts_and_speaker_split(prepared):
    cfg, summary = prepared
    assert summary.rejected == 0 and summary.videos_total == 6
    assert summary.clips_total == 6 * 4  # 75 frames -> 4 clips of 17 (stride 17)
    manifest = json.loads((Path(cfg.output) / "manifest.json").read_text())
    speakers = {}
    for split in ("train", "val", "test"):
        index = CorpusIndex.from_manifest(cfg.output, split)
        assert index.total == manifest["splits"][split]["clips"] > 0
        speakers[split] = {ClipRecord.from_json(index.read(i)["json"]).speaker for i in range(index.total)}
    assert not (speakers["train"] & speakers["val"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["val"] & speakers["test"])
    assert all(s["count"] <= cfg.shard_max_count for sp in manifest["splits"].values() for s in sp["shards"])
