"""One input video -> encoded clip samples (runs in a worker process).

Pass 1 decodes the audio and counts frames; pass 2 decodes video, detects faces on every
``detect_every``-th frame; pass 3 decodes again and crops with the smoothed box, encoding each clip
as soon as its last frame arrives, so memory holds one clip of raw frames, not the video.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from data_prep.config import PrepConfig
from data_prep.crop import crop_square, integer_box, smooth_boxes
from data_prep.detect import FaceBox, make_detector
from data_prep.media import MediaError, iter_video, probe_and_decode_audio
from rest_lightning.data.codecs import H264Config, encode_mp4, encode_png, encode_wav
from rest_lightning.data.schema import (
    AUDIO_KEY,
    META_KEY,
    REF_KEY,
    VIDEO_KEY,
    ClipRecord,
    sample_key,
)
from rest_lightning.data.synthetic import VideoTruth, sidecar_path
from rest_lightning.data.synthtalk import clip_truth_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoTask:
    """One input: its path (str, surrogate-escaped if the name is not UTF-8), ids and split."""

    path: str
    video_id: str
    speaker: str
    split: str


@dataclass
class VideoResult:
    """Encoded samples of one video, or the reason it was rejected."""

    task: VideoTask
    samples: list[dict[str, bytes | str]] = field(default_factory=list)
    seconds: float = 0.0  # source seconds covered by usable frames
    face_hit_rate: float = 0.0
    rejected_stage: str = ""
    rejected_reason: str = ""

    @property
    def rejected(self) -> bool:
        return bool(self.rejected_stage)


def video_id_for(relative: str) -> str:
    """Stable id from the path relative to the input root: readable stem + hash of the full path
    (two files named ``a/x.mp4`` and ``b/x.mp4`` get different ids)."""
    stem = os.path.splitext(os.path.basename(relative))[0]
    digest = hashlib.sha1(os.fsencode(relative)).hexdigest()[:10]
    safe = "".join(c if (c.isascii() and (c.isalnum() or c in "-_")) else "_" for c in stem)
    return f"{safe[:40]}-{digest}"


def reference_frames(video_id: str, starts: list[int], clip_frames: int, frames: int, seed: int) -> list[int]:
    """For each clip start, a frame outside that clip, drawn uniformly with a per-video RNG.

    A reference from inside the clip would let the model copy its target; from elsewhere in the same
    video it carries identity but not the pose and mouth to predict (DESIGN §6).
    """
    rng = np.random.default_rng([seed, int(hashlib.sha1(video_id.encode()).hexdigest()[:8], 16)])
    refs = []
    for start in starts:
        outside = frames - clip_frames
        if outside <= 0:
            raise MediaError("clip", "video is exactly one clip long: no frame outside it for a reference")
        r = int(rng.integers(outside))
        refs.append(r if r < start else r + clip_frames)  # skip over [start, start + clip_frames)
    return refs


def load_truth(path: str, fps: int, frames: int) -> VideoTruth | None:
    """The ground truth of a synthetic video (its ``{video}.json`` sidecar), or ``None`` if it has none.

    A sidecar whose frame axis is not this prep's (another fps, another length) cannot be sliced per
    clip: it is dropped with a warning rather than carried wrong.
    """
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    truth = VideoTruth.from_json(sidecar.read_bytes())
    if truth.fps != fps or len(truth.tracks) != frames:
        log.warning(
            "%s: ground truth is %d frames at %d fps, the video %d frames at prep.fps %d; not carried",
            sidecar,
            len(truth.tracks),
            truth.fps,
            frames,
            fps,
        )
        return None
    return truth


def process_video(task: VideoTask, cfg: PrepConfig, skip_keys: frozenset[str] = frozenset()) -> VideoResult:
    """Probe, detect, crop, cut and encode one video; never raises for a bad input."""
    try:
        return _process(task, cfg, skip_keys)
    except MediaError as err:
        return VideoResult(task, rejected_stage=err.stage, rejected_reason=err.reason)


def _process(task: VideoTask, cfg: PrepConfig, skip_keys: frozenset[str]) -> VideoResult:
    media = cfg.media
    spf = media.samples_per_frame
    probe = probe_and_decode_audio(task.path, cfg.fps, cfg.sample_rate)
    clip_frames = cfg.clip_frames
    if probe.frames < clip_frames:
        raise MediaError(
            "clip", f"{probe.frames} usable frames at {cfg.fps} fps, shorter than one clip ({clip_frames})"
        )
    starts = list(range(0, probe.frames - clip_frames + 1, cfg.stride))
    if cfg.max_clips_per_video:
        starts = starts[: cfg.max_clips_per_video]
    refs = reference_frames(task.video_id, starts, clip_frames, probe.frames, cfg.seed)
    truth = load_truth(task.path, cfg.fps, probe.frames)

    detector = make_detector(cfg.detector, cfg.detect_max_side, cfg.margin)
    detections: dict[int, FaceBox | None] = {}
    for j, frame in iter_video(task.path, cfg.fps, probe.frames):
        if j % cfg.detect_every == 0:
            faces = detector.detect(frame)
            detections[j] = max(faces, key=lambda b: b.area) if faces else None
    hits = sum(box is not None for box in detections.values())
    hit_rate = hits / max(len(detections), 1)
    if hit_rate < cfg.min_face_fraction or hits == 0:
        if not cfg.center_crop_fallback:
            raise MediaError(
                "face",
                f"face found in {hits}/{len(detections)} sampled frames (< prep.min_face_fraction "
                f"{cfg.min_face_fraction}); set prep.center_crop_fallback=true to keep it with a centre crop",
            )
        center = make_detector("center", cfg.detect_max_side, cfg.margin)
        detections = {0: center.detect(np.zeros((probe.height, probe.width, 3), np.uint8))[0]}
    window = max(int(round(cfg.smoothing_s * cfg.fps)), 1)
    boxes = smooth_boxes(detections, probe.frames, cfg.margin, window)

    h264 = H264Config(crf=cfg.h264_crf, preset=cfg.h264_preset)
    ref_png: dict[int, bytes] = {}
    wanted_refs = set(refs)
    encoded: dict[int, bytes] = {}
    ends = {start + clip_frames - 1: c for c, start in enumerate(starts)}
    buffer: deque[np.ndarray] = deque(maxlen=clip_frames)
    last = starts[-1] + clip_frames - 1
    for j, frame in iter_video(task.path, cfg.fps, probe.frames):
        if j > last and j > max(wanted_refs):
            break
        crop = crop_square(frame, integer_box(boxes[j]), cfg.size)
        if j in wanted_refs:
            ref_png[j] = encode_png(crop)
        buffer.append(crop)
        clip = ends.get(j)
        if clip is not None and sample_key(task.video_id, clip) not in skip_keys:
            encoded[clip] = encode_mp4(np.stack(buffer), cfg.fps, h264)
    if len(encoded) + sum(sample_key(task.video_id, c) in skip_keys for c in range(len(starts))) != len(
        starts
    ):
        raise MediaError("decode", "video ended before the frames the probe counted (truncated stream)")

    samples = []
    for clip, start in enumerate(starts):
        key = sample_key(task.video_id, clip)
        if key in skip_keys:
            continue
        box = integer_box(np.median(boxes[start : start + clip_frames], axis=0))
        truth_fields = clip_truth_fields(truth, start, clip_frames) if truth is not None else {}
        record = ClipRecord(
            video_id=task.video_id,
            speaker=task.speaker,
            clip_index=clip,
            start_frame=start,
            frames=clip_frames,
            fps=cfg.fps,
            sample_rate=cfg.sample_rate,
            ref_frame=refs[clip],
            crop_box=list(box),
            source=task.path,
            split=task.split,
            frame_boxes=[list(integer_box(b)) for b in boxes[start : start + clip_frames]],
            **truth_fields,
        )
        audio = probe.audio[start * spf : (start + clip_frames) * spf]
        samples.append(
            {
                "__key__": key,
                VIDEO_KEY: encoded[clip],
                AUDIO_KEY: encode_wav(audio, cfg.sample_rate),
                REF_KEY: ref_png[refs[clip]],
                META_KEY: record.to_json(),
            }
        )
    return VideoResult(task, samples=samples, seconds=probe.frames / cfg.fps, face_hit_rate=hit_rate)
