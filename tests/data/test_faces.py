"""The dlib face stack (rest_lightning.faces) and its use in rest-prep: detection and landmarks on a real
photo (scikit-image's astronaut), the frame checks (several faces, too small, profile), landmarks stored
per frame, the fallback to haar without the extra, and the lip-sync filter wired into run_prep."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from skimage import data as skdata

from data_prep import detect, process
from data_prep.config import PrepConfig
from data_prep.detect import FaceBox, frame_verdict, make_detector, yaw_asymmetry
from data_prep.run import run_prep
from rest_lightning import faces
from rest_lightning.data.codecs import decode_wav
from rest_lightning.data.schema import ClipRecord
from rest_lightning.data.shard_index import CorpusIndex
from rest_lightning.data.synthetic import make_identity, synthesize_video
from rest_lightning.metrics.sync import SyncScores
from tests.data.test_prep import write_media

CHECKS = dict(size=512, margin=0.25, several_faces_ratio=0.5, max_upscale=4.0, max_yaw_asymmetry=0.8)


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo, its HOG box and its 68 landmarks."""
    image = skdata.astronaut()
    boxes = faces.detect_faces(image, "hog")
    return image, boxes, faces.landmarks68(image, boxes[0])


def test_face_stack_finds_a_real_face_and_its_landmarks(astronaut):
    image, boxes, points = astronaut
    assert boxes.shape == (1, 4)
    x0, y0, x1, y1 = boxes[0]
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # her face, not the flag or the helmet
    assert points.shape == (68, 2) and ((points >= boxes[0][:2] - 20) & (points <= boxes[0][2:] + 20)).all()
    five = faces.five_from_68(points)
    assert five.shape == (5, 2) and np.allclose(faces.landmarks5(image, boxes[0]), five)
    assert five[0, 0] < five[2, 0] < five[1, 0] and five[3, 0] < five[4, 0]  # image-left eye/mouth first
    assert five[2, 1] < five[3, 1]  # nose above the mouth
    cnn = faces.detect_faces(image[30:250, 120:340].copy(), "cnn")  # around the face: ~1 s at 512 px
    assert len(cnn) == 1 and abs(cnn[0][0] + 120 - x0) < 20 and abs(cnn[0][1] + 30 - y0) < 20
    flipped = np.ascontiguousarray(image[:, ::-1])
    same = faces.face_descriptor(flipped, faces.detect_faces(flipped, "hog")[0])
    assert np.linalg.norm(faces.face_descriptor(image, boxes[0]) - same) < 0.6  # dlib's same-person threshold


def _turned(points: np.ndarray, degrees: float) -> np.ndarray:
    """Landmarks of a cylinder head turned by ``degrees`` of yaw: each point sits on a cylinder through
    the jaw contour (0 and 16), the nose protruding to 1.3 radii; a point turned past the silhouette is
    drawn on it, as a landmark fit puts the hidden cheek's contour on the visible edge."""
    cx, radius = (points[0, 0] + points[16, 0]) / 2, (points[16, 0] - points[0, 0]) / 2
    depth = np.ones(68)
    depth[27:36] = [1.05, 1.12, 1.2, 1.3, 1.12, 1.15, 1.17, 1.15, 1.12]  # nose bridge 27-30, base 31-35
    angle = np.arcsin(np.clip((points[:, 0] - cx) / radius, -1, 1)) + np.radians(degrees)
    out = points.copy()
    out[:, 0] = cx + radius * depth * np.sin(np.clip(angle, -np.pi / 2, np.pi / 2))
    return out


def test_profile_rule_on_a_real_flipped_and_turned_face(astronaut):
    image, _, points = astronaut
    box = [FaceBox(0, 0, 200, 200)]
    assert abs(yaw_asymmetry(points)) < 0.1  # she faces the camera
    flipped = np.ascontiguousarray(image[:, ::-1])
    assert abs(yaw_asymmetry(faces.landmarks68(flipped, faces.detect_faces(flipped)[0]))) < 0.1
    turns = {deg: yaw_asymmetry(_turned(points, deg)) for deg in (0, 10, 20, 30, 40, 45, 60)}
    assert list(turns.values()) == sorted(turns.values())  # monotonic in the turn
    for deg, asym in turns.items():
        mirrored = yaw_asymmetry(_turned(points, -deg))
        assert abs(asym + mirrored) < 0.1  # the other way round: the same magnitude, the other sign
        verdict = frame_verdict(box, _turned(points, deg), **CHECKS)
        assert verdict == ("ok" if deg <= 30 else "profile"), (deg, asym)
    assert frame_verdict(box, _turned(points, 60), **{**CHECKS, "max_yaw_asymmetry": 0}) == "ok"  # off


def test_frame_checks_several_small_none():
    big, half, third = FaceBox(0, 0, 200, 200), FaceBox(300, 0, 100, 100), FaceBox(300, 0, 66, 66)
    assert frame_verdict([], None, **CHECKS) == "none"
    assert frame_verdict([big, half], None, **CHECKS) == "several"
    assert frame_verdict([big, third], None, **CHECKS) == "ok"  # a small face in the background
    assert frame_verdict([big, half], None, **{**CHECKS, "several_faces_ratio": 0}) == "ok"
    # 512 / (80 * 1.5) = 4.3x enlargement > 4: too small; 90 px: 3.8x, fine.
    assert frame_verdict([FaceBox(0, 0, 80, 80)], None, **CHECKS) == "small"
    assert frame_verdict([FaceBox(0, 0, 90, 90)], None, **CHECKS) == "ok"


def test_missing_face_stack_is_one_line_and_prep_falls_back_to_haar(monkeypatch, caplog):
    loaders = (faces.hog_detector, faces.cnn_detector, faces.landmark_predictor, faces.face_models_dir)
    for loader in loaders:
        loader.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # `import dlib` raises ImportError
    monkeypatch.setattr(detect, "_fallback_logged", False)
    try:
        assert not faces.available()
        with pytest.raises(ImportError, match=r"pip install 'rest-lightning\[faces\]'") as err:
            faces.hog_detector()
        assert "\n" not in str(err.value)
        with caplog.at_level(logging.WARNING, logger="data_prep.detect"):
            assert isinstance(make_detector("hog", 320, 0.25), detect.HaarFaceDetector)
            assert isinstance(make_detector("cnn", 320, 0.25), detect.HaarFaceDetector)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "using prep.detector=haar" in warnings[0]  # once per process
        monkeypatch.setattr(faces.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(faces.FaceStackUnavailable, match="face_recognition_models is not installed"):
            faces.face_models_dir()
    finally:
        for loader in loaders:
            loader.cache_clear()


def _video(path, frames, seconds=1.5):
    write_media(path, frames=frames, audio=np.zeros((1, int(seconds * 16_000)), np.float32))


def test_prep_with_hog_stores_landmarks_and_rejects_by_cause(tmp_path, prep_kwargs):
    raw = tmp_path / "raw"
    raw.mkdir()
    one = synthesize_video(make_identity(0, 0), 1.5, 96, seed=0)
    other = synthesize_video(make_identity(1, 0), 1.5, 96, seed=1)
    _video(raw / "one.mp4", one.frames)
    _video(raw / "two.mp4", np.concatenate([one.frames, other.frames], axis=2))  # two faces side by side
    _video(raw / "none.mp4", np.random.default_rng(0).integers(0, 255, one.frames.shape, np.uint8))
    cfg = PrepConfig(
        input=str(raw), output=str(tmp_path / "out"), detector="hog",
        **{**prep_kwargs, "val_fraction": 0.0, "test_fraction": 0.0},
    )
    summary = run_prep(cfg)
    assert summary.clips_total == 2 and summary.rejected_by_stage == {"face_several": 1, "face": 1}
    rejected = {json.loads(line)["input"].rsplit("/", 1)[1]: json.loads(line)
                for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()}
    assert "several faces 8" in rejected["two.mp4"]["reason"] and rejected["none.mp4"]["stage"] == "face"
    corpus = CorpusIndex.from_manifest(tmp_path / "out", "train")
    for i in range(corpus.total):
        sample = corpus.read(i)
        points = np.load(io.BytesIO(sample[process.LANDMARKS_KEY]), allow_pickle=False)
        assert points.dtype == np.float16 and points.shape == (cfg.clip_frames, 68, 2)
        assert len(sample[process.LANDMARKS_KEY]) == 128 + cfg.clip_frames * 68 * 2 * 2
        assert (points > -2).all() and (points < cfg.size + 2).all()  # the face lies inside its crop
        eyes = faces.five_from_68(points.astype(np.float32))
        assert (eyes[:, 0, 0] < eyes[:, 1, 0]).all()  # image-left eye left of image-right eye, every frame
        assert ClipRecord.from_json(sample["json"]).frames == cfg.clip_frames


class ScriptedScorer:
    """A lip-sync scorer returning the next scripted (confidence, offset) per clip."""

    def __init__(self, script):
        self.script = list(script)

    def score_video(self, video, audio):
        confidence, offset = self.script.pop(0)
        return SyncScores(offset, confidence, 7.5, torch.zeros(31))


def test_lipsync_filter_in_prep_drops_low_confidence_clips_with_scores(tmp_path, prep_kwargs, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    seconds = 2.1  # 52 frames: 3 clips of 17
    tone = np.sin(np.arange(int(seconds * 16_000)) * 0.05).astype(np.float32)[None] * 0.5
    write_media(raw / "talk.mp4", frames=synthesize_video(make_identity(0, 0), seconds, 96, 0).frames, audio=tone)
    weights = tmp_path / "syncnet_v2.model"
    weights.write_bytes(b"not read: the scorer is scripted")
    with pytest.raises(ValueError, match="is not a file"):
        PrepConfig(input=str(raw), output=str(tmp_path), lipsync_weights=str(tmp_path / "nowhere.model"))
    kwargs = {**prep_kwargs, "val_fraction": 0.0, "test_fraction": 0.0, "detector": "center"}
    # Off by default: with no weights the scorer is never asked for.
    monkeypatch.setattr(process, "sync_scorer", lambda path: pytest.fail("lip-sync filter ran unasked"))
    assert run_prep(PrepConfig(input=str(raw), output=str(tmp_path / "off"), **kwargs)).clips_total == 3
    unshifted, _ = decode_wav(CorpusIndex.from_manifest(tmp_path / "off", "train").read(0)["audio.wav"])

    scorer = ScriptedScorer([(5.0, -2), (1.2, 0), (4.0, 0)])
    monkeypatch.setattr(process, "sync_scorer", lambda path: scorer)
    cfg = PrepConfig(input=str(raw), output=str(tmp_path / "out"), lipsync_weights=str(weights), **kwargs)
    summary = run_prep(cfg)
    assert summary.clips_total == 2 and summary.rejected_clips == 1 and summary.rejected == 0
    assert summary.rejected_by_stage == {"lipsync": 1}
    lines = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["clip"] == 1 and lines[0]["confidence"] == 1.2
    assert lines[0]["stage"] == "lipsync" and "< 3.0" in lines[0]["reason"] and lines[0]["distance"] == 7.5
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rejected_by_stage"] == {"lipsync": 1} and manifest["rejected_clips"] == 1
    corpus = CorpusIndex.from_manifest(tmp_path / "out", "train")
    clips = {ClipRecord.from_json(corpus.read(i)["json"]).clip_index: corpus.read(i) for i in range(corpus.total)}
    assert sorted(clips) == [0, 2]
    spf, frames = 640, cfg.clip_frames
    shifted, _ = decode_wav(clips[0]["audio.wav"])  # offset -2: the audio moved 2 frames earlier
    np.testing.assert_array_equal(shifted[: (frames - 2) * spf], unshifted[2 * spf : frames * spf])
    assert not shifted[(frames - 2) * spf :].any()
    assert process.LANDMARKS_KEY not in clips[0]  # the center detector has no landmarks
