"""The shard sample format of DESIGN §6, and the media constants it is built on.

One sample of a shard is one *clip*: 1 + 8k video frames at 25 fps, the audio those frames cover
(exactly ``frames * samples_per_frame`` samples of 16 kHz mono PCM16), a reference image taken from
another part of the same video, and a JSON record. Stored under these keys (webdataset extensions)::

    video.mp4   H.264 clip, frames x size x size, 25 fps
    audio.wav   PCM16 mono, frames * 640 samples at 16 kHz (frame i covers [i*640, (i+1)*640))
    ref.png     RGB reference frame, size x size
    json        ClipRecord (video id, speaker, clip index, start, fps, frames, sample rate, crop box, per-frame
                crop boxes, source; for a synthetic video also its ground truth ``gt`` and ``identity``)
    audio.npy   optional precomputed audio features
    latent.npy  optional VAE latent of the clip (for stages 2-3)
    ode.npy     optional frozen-teacher ODE trajectory of the clip, (S + 1, C, 1 + k, h, w) float32: the states
                at the student's levels, noise first, sample last (data_prep/ode_trajectories.py)

Nothing here touches files; codecs live in ``rest_lightning.data.codecs``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

VIDEO_KEY = "video.mp4"
AUDIO_KEY = "audio.wav"
REF_KEY = "ref.png"
META_KEY = "json"
AUDIO_FEATURES_KEY = "audio.npy"
LATENT_KEY = "latent.npy"
ODE_KEY = "ode.npy"
#: Per-frame 68-point landmarks of a clip, ``(frames, 68, 2)`` float16 ``[x, y]`` in the crop's pixels
#: (``prep.size`` side; iBUG 300-W order, rest_lightning.faces), as ``.npy``: 33 x 68 x 2 x 2 bytes + a
#: 128-byte header = 9,104 bytes a 33-frame clip. float16 keeps 1/4 px up to 512 (1/2 px to 1024).
#: Written by prep.detector=hog|cnn with prep.landmarks=true.
LANDMARKS_KEY = "landmarks.npy"

#: Keys every sample must hold; the optional ones may be absent.
REQUIRED_KEYS = (VIDEO_KEY, AUDIO_KEY, REF_KEY, META_KEY)
OPTIONAL_KEYS = (AUDIO_FEATURES_KEY, LATENT_KEY, ODE_KEY, LANDMARKS_KEY)

#: Version of the sample format; bumped when a key or a JSON field changes meaning.
#: 2: ClipRecord gained ``frame_boxes``, ``gt`` and ``identity`` (version-1 records still read, empty).
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class MediaSpec:
    """The time base shared by prep, loader and model.

    ``samples_per_frame`` is derived (16000 / 25 = 640), never typed twice: frame ``i`` covers
    audio samples ``[i * samples_per_frame, (i + 1) * samples_per_frame)``.
    """

    fps: int = 25  # REST / DESIGN §3: 25 fps video, as every talking-head corpus (HDTF, MEAD) uses
    sample_rate: int = 16_000  # REST / DESIGN §3: 16 kHz mono speech, what audio encoders expect
    temporal_compression: int = 8  # LTX-Video VAE: 8x in time, so a clip is 1 + 8k frames

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"data.fps must be positive, got {self.fps}")
        if self.sample_rate <= 0:
            raise ValueError(f"data.sample_rate must be positive, got {self.sample_rate}")
        if self.sample_rate % self.fps != 0:
            raise ValueError(
                f"data.sample_rate ({self.sample_rate}) must be a multiple of data.fps ({self.fps}) so that "
                "every video frame covers a whole number of audio samples; e.g. 16000 Hz with 25 fps"
            )
        if self.temporal_compression <= 0:
            raise ValueError(f"data.temporal_compression must be positive, got {self.temporal_compression}")

    @property
    def samples_per_frame(self) -> int:
        """Audio samples covered by one video frame (640 at 16 kHz / 25 fps)."""
        return self.sample_rate // self.fps

    def clip_frames(self, latent_frames: int) -> int:
        """Video frames of a clip whose causal VAE latent has ``1 + latent_frames`` frames: ``1 + 8k``."""
        if latent_frames < 0:
            raise ValueError(f"clip latent frames k must be >= 0, got {latent_frames}")
        return 1 + self.temporal_compression * latent_frames

    def latent_frames(self, frames: int) -> int:
        """Inverse of ``clip_frames``: ``k`` for a clip of ``1 + 8k`` frames; refuses other lengths."""
        if frames < 1 or (frames - 1) % self.temporal_compression != 0:
            raise ValueError(f"a clip must have 1 + {self.temporal_compression}k frames, got {frames}")
        return (frames - 1) // self.temporal_compression

    def audio_samples(self, frames: int) -> int:
        """Audio samples that exactly cover ``frames`` video frames."""
        return frames * self.samples_per_frame


@dataclass(frozen=True)
class CropBox:
    """Square crop in source pixels: top-left corner and side (may extend past the frame; padded)."""

    x: int
    y: int
    side: int

    def __post_init__(self) -> None:
        if self.side <= 0:
            raise ValueError(f"crop box side must be positive, got {self.side}")


@dataclass(frozen=True)
class ClipRecord:
    """The ``json`` entry of a sample (DESIGN §6)."""

    video_id: str
    speaker: str
    clip_index: int
    start_frame: int  # first frame of the clip, counted in 25 fps frames from the start of the video
    frames: int
    fps: int
    sample_rate: int
    ref_frame: int  # frame index (same time base) the reference image was taken from
    crop_box: list[int] = field(default_factory=list)  # [x, y, side] of the median smoothed box
    source: str = ""  # input path as given (surrogate-escaped if not UTF-8)
    split: str = ""
    schema_version: int = SCHEMA_VERSION
    # [x, y, side] of the smoothed box each frame was actually cropped with (crop_box is their median).
    frame_boxes: list[list[int]] = field(default_factory=list)
    # Synthetic videos only (rest_lightning/data/synthtalk.py): the clip's slice of the video's ground
    # truth ("mouth", "blink", "pose" per frame; "blink_seed", "loudness_scale", "source_size") and
    # the identity's parameters (make_identity(identity["index"], identity["seed"])). Empty otherwise.
    gt: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"ClipRecord.frames must be >= 1, got {self.frames}")
        if self.sample_rate % self.fps != 0:
            raise ValueError(f"ClipRecord.sample_rate {self.sample_rate} is not a multiple of fps {self.fps}")

    @property
    def start_sample(self) -> int:
        """First audio sample of the clip in the video's 16 kHz time base."""
        return self.start_frame * (self.sample_rate // self.fps)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> ClipRecord:
        record = json.loads(data) if isinstance(data, (bytes, str)) else dict(data)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(record) - known
        if unknown:
            raise ValueError(
                f"unknown ClipRecord fields {sorted(unknown)}; the shard was written by a newer schema "
                f"(this reader knows version {SCHEMA_VERSION})"
            )
        return cls(**record)


def sample_key(video_id: str, clip_index: int) -> str:
    """The webdataset ``__key__`` of a clip: unique per (video, clip) and free of dots.

    webdataset splits a tar member name at the first dot to find the key, so dots (and slashes,
    which would make sub-folders) are replaced.
    """
    safe = "".join(c if (c.isalnum() or c in "-_") else "_" for c in video_id)
    return f"{safe}__{clip_index:06d}"
