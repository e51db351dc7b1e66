"""SynthTalk ground truth of a clip: what a synthetic clip's frames should be, for its own audio or any other.

``rest-prep mode=synth`` writes each video's ``VideoTruth`` beside it (``{video}.json``); ``rest-prep``
slices it into every clip's ``json`` (``clip_truth_fields``): ``gt`` holds the clip's frames
``[start, start + T)`` of ``mouth``, ``blink`` and ``pose`` plus what re-rendering needs (``blink_seed``,
``loudness_scale``, ``source_size``), ``identity`` the identity's parameters, and ``frame_boxes`` the
crop box of every frame. ``ClipTruth.from_record`` reads that back; ``ClipTruth.frames(size)`` re-renders
the clip in source pixels and takes it through the clip's own crop boxes and resize, which equals the
decoded shard clip up to codec error (tests/data/test_synthtalk_truth.py). ``frames_for_audio`` renders
what the same face, pose phase and blinks look like for other audio: the ground truth a generated clip
is scored against (``rest_lightning/metrics/synthtalk.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from data_prep.crop import crop_square
from rest_lightning.data.schema import ClipRecord, MediaSpec
from rest_lightning.data.synthetic import (
    FrameTracks,
    Identity,
    VideoTruth,
    identity_from_json,
    render_frames,
    tracks_for_audio,
    tracks_from_json,
    tracks_to_json,
)

BOX_FIELDS = 3  # [x, y, side] in source pixels


def clip_truth_fields(truth: VideoTruth, start_frame: int, frames: int) -> dict[str, dict[str, Any]]:
    """The ``gt`` and ``identity`` entries of the ``ClipRecord`` of frames ``[start_frame, start_frame + frames)``."""
    gt: dict[str, Any] = tracks_to_json(truth.tracks.slice(start_frame, start_frame + frames))
    gt.update(blink_seed=truth.blink_seed, loudness_scale=truth.loudness_scale, source_size=truth.size)
    return {"gt": gt, "identity": identity_to_json(truth.identity)}


def identity_to_json(identity: Identity) -> dict[str, Any]:
    """The identity's parameters as plain JSON (index, seed, colours, geometry, voice)."""
    return asdict(identity)


def crop_frames(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Source frames ``(T, S, S, 3)`` uint8 -> face crops ``(T, size, size, 3)`` uint8, frame i through box i.

    ``boxes``: ``(T, 3)`` int ``[x, y, side]``, or ``(3,)`` for one box for every frame. The crop is
    ``data_prep.crop.crop_square``, the very function ``rest-prep`` crops with.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.shape == (BOX_FIELDS,):
        boxes = np.broadcast_to(boxes, (len(frames), BOX_FIELDS))
    if boxes.shape != (len(frames), BOX_FIELDS):
        raise ValueError(f"crop_frames: boxes must be (3,) or (T={len(frames)}, 3), got {boxes.shape}")
    return np.stack(
        [crop_square(f, tuple(int(v) for v in b), size) for f, b in zip(frames, boxes, strict=True)]
    )


@dataclass(frozen=True)
class ClipTruth:
    """Ground truth of one shard clip of a synthetic video.

    tracks: the clip's ``T`` frames of mouth / blink / pose; frame_boxes: ``(T, 3)`` int crop boxes in
    source pixels; start_frame: the clip's first frame in the video (the pose phase).
    """

    identity: Identity
    tracks: FrameTracks
    start_frame: int
    blink_seed: int
    loudness_scale: float
    source_size: int
    frame_boxes: np.ndarray
    media: MediaSpec

    @classmethod
    def from_record(cls, record: ClipRecord) -> ClipTruth:
        """Read a clip's ground truth; ``ValueError`` for a clip that carries none (not a synthetic video,
        or shards written before schema version 2)."""
        if not record.gt or not record.identity or not record.frame_boxes:
            raise ValueError(
                f"clip {record.video_id}#{record.clip_index} carries no SynthTalk ground truth: prepare a corpus "
                "written by rest-prep mode=synth (its {video}.json sidecars) with this rest-prep"
            )
        tracks = tracks_from_json(record.gt)
        boxes = np.asarray(record.frame_boxes, dtype=np.int64)
        if len(tracks) != record.frames or boxes.shape != (record.frames, BOX_FIELDS):
            raise ValueError(
                f"clip {record.video_id}#{record.clip_index}: {len(tracks)} ground-truth frames and boxes "
                f"{boxes.shape} for a clip of {record.frames} frames"
            )
        return cls(
            identity=identity_from_json(record.identity),
            tracks=tracks,
            start_frame=record.start_frame,
            blink_seed=int(record.gt["blink_seed"]),
            loudness_scale=float(record.gt["loudness_scale"]),
            source_size=int(record.gt["source_size"]),
            frame_boxes=boxes,
            media=MediaSpec(fps=record.fps, sample_rate=record.sample_rate),
        )

    @property
    def median_box(self) -> np.ndarray:
        """``(3,)`` int: the clip's median crop box (``ClipRecord.crop_box``)."""
        return np.round(np.median(self.frame_boxes, axis=0)).astype(np.int64)

    def source_frames(self) -> np.ndarray:
        """The clip re-rendered in source pixels: ``(T, source_size, source_size, 3)`` uint8 RGB."""
        return render_frames(self.identity, self.source_size, self.tracks)

    def frames(self, size: int) -> np.ndarray:
        """The clip as ``rest-prep`` cut it: ``(T, size, size, 3)`` uint8 RGB, through each frame's crop box."""
        return crop_frames(self.source_frames(), self.frame_boxes, size)

    def tracks_for_audio(self, audio: np.ndarray) -> FrameTracks:
        """Tracks ``(S // spf,)`` this face has for ``audio`` ``(S,)`` float in [-1, 1], at the clip's pose
        phase and blinks; the mouth is normalised by the video's ``loudness_scale``, so the clip's own
        audio gives back the clip's mouth (up to AAC error)."""
        return tracks_for_audio(
            self.identity, audio, self.media, self.start_frame, self.blink_seed, self.loudness_scale
        )

    def frames_for_audio(self, audio: np.ndarray, size: int) -> np.ndarray:
        """What this face should look like for ``audio`` ``(S,)``: ``(S // spf, size, size, 3)`` uint8 RGB.

        Frames are cropped with the clip's per-frame boxes when the audio covers exactly the clip's
        frames, and with its median box otherwise (a longer stream has no boxes of its own).
        """
        tracks = self.tracks_for_audio(audio)
        boxes = self.frame_boxes if len(tracks) == len(self.frame_boxes) else self.median_box
        return crop_frames(render_frames(self.identity, self.source_size, tracks), boxes, size)
