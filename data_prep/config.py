"""``PrepConfig``: every knob of ``run_prep`` (maps 1:1 to the ``rest-prep`` keys ``input``, ``output``
and ``prep.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rest_lightning.data.schema import MediaSpec

SPLITS = ("train", "val", "test")
SPLIT_BY = ("speaker", "video")
DETECTORS = ("haar", "center", "hog", "cnn")
DLIB_DETECTORS = ("hog", "cnn")  # the face stack (.[faces]): landmarks and the frame checks below


@dataclass
class PrepConfig:
    """Raw talking videos -> face-cropped 25 fps clips + 16 kHz audio -> WebDataset shards."""

    input: str = ""  # a folder (searched recursively) or a manifest: .txt (one path a line) / .jsonl
    output: str = ""  # output folder: {split}/shard-*.tar, manifest.json, rejected.jsonl, prep_state.jsonl
    size: int = 512  # REST / DESIGN §3: 512x512 face crops
    workers: int = 1  # processes decoding videos; 0 or 1 = in the main process
    latent_frames: int = 4  # design choice: k = 4 -> 1 + 8*4 = 33 frames (1.32 s) per clip
    clip_stride: int = 0  # frames between clip starts; 0 = the clip length (no overlap)
    max_clips_per_video: int = 0  # 0 = no limit; caps the influence of one long video
    shard_max_count: int = 1000  # design choice: ~1000 clips (~100 MB at 512 px) per shard
    shard_max_bytes: int = 1_000_000_000  # design choice: 1 GB tar shards, a good object-store size
    val_fraction: float = 0.05  # design choice: share of speakers (or videos) held out for validation
    test_fraction: float = 0.05  # design choice: share held out for test
    split_by: str = "speaker"  # "speaker" (parent folder / manifest field) or "video"
    seed: int = 0
    # "haar" (OpenCV), "center" (no detection: a centre square crop), "hog" or "cnn" (dlib, the `faces`
    # extra: 68-point landmarks stored per frame, frames checked for several faces / too small / profile;
    # without the extra they fall back to haar with a warning). haar stays the default: the demo and the
    # synthetic corpus are tuned on it, and it needs no extra.
    detector: str = "haar"
    center_crop_fallback: bool = False  # when no face is found, crop the centre instead of rejecting
    detect_every: int = 5  # design choice: detect on every 5th frame (0.2 s) and interpolate between
    detect_max_side: int = 320  # design choice: frames are shrunk to this side before detection (speed)
    min_face_fraction: float = 0.5  # design choice: reject a video with faces in fewer sampled frames
    margin: float = 0.25  # design choice: crop side = 1.5x the detector box (chin and hairline in)
    # Frame checks of the hog/cnn detectors (0 turns one off); a sampled frame failing one counts as
    # faceless for min_face_fraction, and a rejected video's stage names its most common failure.
    several_faces_ratio: float = 0.5  # design choice: a 2nd face >= half the largest's side: speaker unknown
    max_upscale: float = 4.0  # design choice: crop enlarged > 4x to prep.size is too blurry (512: face < 85 px)
    max_yaw_asymmetry: float = 0.8  # design choice: ~40 deg of yaw (detect.yaw_asymmetry), 68-pt fits degrade
    landmarks: bool = True  # hog/cnn: store 68-point landmarks per frame (landmarks.npy, float16 crop px)
    # Lip-sync filter (LatentSync's recipe, data_prep/lipsync_filter.py): off while lipsync_weights is "".
    lipsync_weights: str = ""  # path of syncnet_v2.model (the Sync-C/D weights); "" = no filter
    lipsync_min_confidence: float = 3.0  # LatentSync: clips with SyncNet confidence (Sync-C) < 3 dropped
    lipsync_max_abs_offset: int = -1  # drop clips whose |AV offset| exceeds this many frames; -1 = any
    lipsync_correct_offset: bool = True  # shift a kept clip's audio so its detected offset becomes 0
    smoothing_s: float = 0.5  # design choice: moving-average window of the crop box, seconds
    h264_crf: int = 18  # design choice: see rest_lightning.data.codecs.H264Config
    h264_preset: str = "veryfast"  # design choice: see H264Config
    limit_videos: int = 0  # 0 = all inputs; else only the first N (sorted) inputs, for smoke runs
    progress: bool = True  # tqdm progress bar with ETA on stderr
    fps: int = 25  # REST / DESIGN §3
    sample_rate: int = 16_000  # REST / DESIGN §3

    def __post_init__(self) -> None:
        if not self.input:
            raise ValueError("input is empty: set input=DIR (a folder of videos) or input=FILE (a manifest)")
        if not self.output:
            raise ValueError("output is empty: set output=DIR")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"prep.size must be an even number >= 16 (H.264 yuv420p), got {self.size}")
        if self.workers < 0:
            raise ValueError(f"prep.workers must be >= 0, got {self.workers}")
        if self.latent_frames < 1:
            raise ValueError(
                f"prep.latent_frames (k, clips of 1+8k frames) must be >= 1, got {self.latent_frames}"
            )
        if self.clip_stride < 0:
            raise ValueError(f"prep.clip_stride must be >= 0 (0 = clip length), got {self.clip_stride}")
        if self.max_clips_per_video < 0:
            raise ValueError(
                f"prep.max_clips_per_video must be >= 0 (0 = no limit), got {self.max_clips_per_video}"
            )
        if self.shard_max_count < 1 or self.shard_max_bytes < 1:
            raise ValueError("prep.shard_max_count and prep.shard_max_bytes must be >= 1")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"prep.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"prep.val_fraction + prep.test_fraction must leave data for training, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"prep.split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        if self.detector not in DETECTORS:
            raise ValueError(f"prep.detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.detect_every < 1 or self.detect_max_side < 32:
            raise ValueError("prep.detect_every must be >= 1 and prep.detect_max_side >= 32")
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise ValueError(f"prep.min_face_fraction must be in [0, 1], got {self.min_face_fraction}")
        for key in ("several_faces_ratio", "max_upscale", "max_yaw_asymmetry"):
            if getattr(self, key) < 0:
                raise ValueError(f"prep.{key} must be >= 0 (0 = check off), got {getattr(self, key)}")
        if self.lipsync_weights and not Path(self.lipsync_weights).is_file():
            raise ValueError(
                f"prep.lipsync_weights={self.lipsync_weights!r} is not a file: give syncnet_v2.model's path "
                "or set prep.lipsync_weights='' (no lip-sync filter)"
            )
        if self.lipsync_max_abs_offset < -1:
            raise ValueError(f"prep.lipsync_max_abs_offset must be >= 0 or -1 (any), got {self.lipsync_max_abs_offset}")
        if self.margin < 0:
            raise ValueError(f"prep.margin must be >= 0, got {self.margin}")
        if self.smoothing_s < 0:
            raise ValueError(f"prep.smoothing_s must be >= 0, got {self.smoothing_s}")
        if self.limit_videos < 0:
            raise ValueError(f"prep.limit_videos must be >= 0, got {self.limit_videos}")
        MediaSpec(fps=self.fps, sample_rate=self.sample_rate)

    @property
    def media(self) -> MediaSpec:
        return MediaSpec(fps=self.fps, sample_rate=self.sample_rate)

    @property
    def clip_frames(self) -> int:
        return self.media.clip_frames(self.latent_frames)

    @property
    def stride(self) -> int:
        return self.clip_stride or self.clip_frames
