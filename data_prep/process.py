"""One input video -> encoded clip samples (runs in a worker process).

Pass 1 decodes the audio and counts frames; pass 2 decodes video, detects faces on every
``detect_every``-th frame (and, with dlib's detectors, checks each for several faces, a face too small,
a profile); pass 3 decodes again and crops with the smoothed box, fits 68-point landmarks on every frame
(dlib detectors), encoding each clip as soon as its last frame arrives, so memory holds one clip of raw
frames, not the video. With ``prep.lipsync_weights`` set, each clip is then scored by SyncNet and dropped
below ``prep.lipsync_min_confidence`` (its audio shifted to offset 0 when kept).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from data_prep.config import PrepConfig
from data_prep.crop import crop_square, integer_box, smooth_boxes
from data_prep.detect import (
    VERDICT_STAGES,
    VERDICT_WORDS,
    DlibFaceDetector,
    FaceBox,
    frame_verdict,
    make_detector,
)
from data_prep.media import MediaError, iter_video, probe_and_decode_audio
from rest_lightning.data.codecs import H264Config, encode_mp4, encode_png, encode_wav
from rest_lightning.data.schema import (
    AUDIO_KEY,
    LANDMARKS_KEY,
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
    # Clips dropped by the lip-sync filter: {clip, key, stage, reason, confidence, offset, distance}.
    clips_rejected: list[dict] = field(default_factory=list)

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


def landmarks_npy(points: np.ndarray) -> bytes:
    """``(frames, 68, 2)`` crop-pixel landmarks -> the ``LANDMARKS_KEY`` bytes (float16 ``.npy``)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(points, np.float32).astype(np.float16), allow_pickle=False)
    return buf.getvalue()


@functools.cache
def sync_scorer(weights: str):
    """The SyncNet scorer of the lip-sync filter, loaded once per process."""
    from data_prep.lipsync_filter import syncnet_scorer

    return syncnet_scorer(weights)


def _lipsync_config(cfg: PrepConfig):
    from data_prep.lipsync_filter import LipSyncFilterConfig

    return LipSyncFilterConfig(
        min_confidence=cfg.lipsync_min_confidence,
        correct_offset=cfg.lipsync_correct_offset,
        max_abs_offset=None if cfg.lipsync_max_abs_offset < 0 else cfg.lipsync_max_abs_offset,
        samples_per_frame=cfg.media.samples_per_frame,
    )


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
    dlib = isinstance(detector, DlibFaceDetector)
    detections: dict[int, FaceBox | None] = {}
    verdicts: Counter[str] = Counter()
    for j, frame in iter_video(task.path, cfg.fps, probe.frames):
        if j % cfg.detect_every == 0:
            faces = sorted(detector.detect(frame), key=lambda b: -b.area)
            if dlib:
                points = detector.landmarks(frame, faces[0]) if faces else None
                verdict = frame_verdict(
                    faces, points, cfg.size, cfg.margin,
                    cfg.several_faces_ratio, cfg.max_upscale, cfg.max_yaw_asymmetry,
                )
            else:
                verdict = "ok" if faces else "none"
            verdicts[verdict] += 1
            detections[j] = faces[0] if verdict == "ok" else None
    hits = verdicts["ok"]
    hit_rate = hits / max(len(detections), 1)
    centred = False
    if hit_rate < cfg.min_face_fraction or hits == 0:
        if not cfg.center_crop_fallback:
            failures = [(v, n) for v, n in verdicts.most_common() if v != "ok"]
            detail = ", ".join(f"{VERDICT_WORDS[v]} {n}" for v, n in failures)
            raise MediaError(
                VERDICT_STAGES[failures[0][0]],
                f"face found in {hits}/{len(detections)} sampled frames (< prep.min_face_fraction "
                f"{cfg.min_face_fraction}; {detail}); set prep.center_crop_fallback=true to keep it with "
                "a centre crop",
            )
        center = make_detector("center", cfg.detect_max_side, cfg.margin)
        detections = {0: center.detect(np.zeros((probe.height, probe.width, 3), np.uint8))[0]}
        centred = True
    window = max(int(round(cfg.smoothing_s * cfg.fps)), 1)
    boxes = smooth_boxes(detections, probe.frames, cfg.margin, window)
    with_landmarks = dlib and cfg.landmarks and not centred
    scorer = sync_scorer(cfg.lipsync_weights) if cfg.lipsync_weights else None
    lipsync = _lipsync_config(cfg) if scorer is not None else None

    h264 = H264Config(crf=cfg.h264_crf, preset=cfg.h264_preset)
    ref_png: dict[int, bytes] = {}
    wanted_refs = set(refs)
    encoded: dict[int, bytes] = {}
    encoded_landmarks: dict[int, bytes] = {}
    audio_of: dict[int, np.ndarray] = {}  # clip -> its audio, shifted by the lip-sync filter
    clips_rejected: list[dict] = []
    dropped: set[int] = set()  # clips the lip-sync filter refused
    ends = {start + clip_frames - 1: c for c, start in enumerate(starts)}
    buffer: deque[np.ndarray] = deque(maxlen=clip_frames)
    points_buffer: deque[np.ndarray] = deque(maxlen=clip_frames)
    last = starts[-1] + clip_frames - 1
    for j, frame in iter_video(task.path, cfg.fps, probe.frames):
        if j > last and j > max(wanted_refs):
            break
        x, y, side = integer_box(boxes[j])
        crop = crop_square(frame, (x, y, side), cfg.size)
        if j in wanted_refs:
            ref_png[j] = encode_png(crop)
        buffer.append(crop)
        if with_landmarks:
            cx, cy, crop_side = boxes[j]
            face = crop_side / (1.0 + 2.0 * cfg.margin)  # the smoothed detector box inside the crop box
            points = detector.landmarks(frame, FaceBox(cx - face / 2, cy - face / 2, face, face))
            points_buffer.append((points - (x, y)) * (cfg.size / side))
        clip = ends.get(j)
        if clip is None or (key := sample_key(task.video_id, clip)) in skip_keys:
            continue
        start = starts[clip]
        audio = probe.audio[start * spf : (start + clip_frames) * spf]
        if scorer is not None:
            from data_prep.lipsync_filter import filter_and_correct

            decision, audio = filter_and_correct(scorer, np.stack(buffer), audio, lipsync)
            if audio is None:
                clips_rejected.append({
                    "clip": clip, "key": key, "stage": "lipsync", "reason": decision.reason,
                    "confidence": round(decision.confidence, 4), "offset": decision.offset,
                    "distance": round(decision.distance, 4),
                })
                log.info("%s clip %d: dropped by the lip-sync filter (%s)", task.path, clip, decision.reason)
                dropped.add(clip)
                continue
        audio_of[clip] = audio
        encoded[clip] = encode_mp4(np.stack(buffer), cfg.fps, h264)
        if with_landmarks:
            encoded_landmarks[clip] = landmarks_npy(np.stack(points_buffer))
    skipped = sum(sample_key(task.video_id, c) in skip_keys for c in range(len(starts)))
    if len(encoded) + len(dropped) + skipped != len(starts):
        raise MediaError("decode", "video ended before the frames the probe counted (truncated stream)")

    samples = []
    for clip, start in enumerate(starts):
        key = sample_key(task.video_id, clip)
        if key in skip_keys or clip in dropped:
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
        sample = {
            "__key__": key,
            VIDEO_KEY: encoded[clip],
            AUDIO_KEY: encode_wav(audio_of[clip], cfg.sample_rate),
            REF_KEY: ref_png[refs[clip]],
            META_KEY: record.to_json(),
        }
        if clip in encoded_landmarks:
            sample[LANDMARKS_KEY] = encoded_landmarks[clip]
        samples.append(sample)
    return VideoResult(
        task, samples=samples, seconds=probe.frames / cfg.fps, face_hit_rate=hit_rate,
        clips_rejected=clips_rejected,
    )
