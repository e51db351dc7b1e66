"""A deterministic synthetic talking-head corpus: cartoon faces whose mouths follow synthetic speech.

What tests and ``make demo`` train on, so the one property that matters is real: the mouth opening of
every frame is the (normalised) loudness of the audio that frame covers, so a model can only predict
the mouth from the audio. Audio is speech-like: voiced syllables grouped into words with pauses, a
harmonic source whose pitch drifts with intonation, and two formant peaks per syllable. Identities
differ in face shape, skin tone, hair, eye colour and spacing, background and voice pitch; heads sway
a little and blink.

``synthesize_video`` makes one video in memory; ``write_synthetic_corpus(SynthConfig)`` writes real
``.mp4`` files (H.264 25 fps + AAC mono 16 kHz) laid out as ``{output}/{speaker}/{video}.mp4`` so
that ``data_prep`` can split by speaker (the parent folder), each with a ``{video}.json`` sidecar of
its ground truth (``VideoTruth``: identity, per-frame mouth / blink / pose). A frame is a pure function
of (identity, ``FrameTracks``), and the tracks of a pure function of (identity, audio, pose phase, blink
seed): ``render_for_audio`` re-renders what any audio should look like (the SynthTalk benchmark).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rest_lightning.data.codecs import H264Config, encode_mp4
from rest_lightning.data.schema import MediaSpec

log = logging.getLogger(__name__)

_SUBPIXEL_BITS = 4  # cv2 drawing takes fixed-point coordinates; 4 bits = 1/16 px, smooth head motion
_SUBPIXEL = 1 << _SUBPIXEL_BITS


@dataclass(frozen=True)
class SynthConfig:
    """Config of the synthetic corpus (maps 1:1 to the ``synth.*`` keys of the prep CLI)."""

    output: str = ""  # folder to write {speaker}/{video}.mp4 into
    n_videos: int = 8  # design choice: enough for a train/val/test split by speaker in tests
    n_speakers: int = 4  # design choice: distinct identities; videos cycle over them
    seconds: float = 4.0  # design choice: 100 frames = several 33-frame clips per video
    size: int = 96  # design choice: tiny frames keep tests and the demo fast on 2 CPU cores
    seed: int = 0
    fps: int = 25  # REST / DESIGN §3
    sample_rate: int = 16_000  # REST / DESIGN §3
    audio_codec: str = "aac"  # "aac" (what real mp4s carry) or "pcm_s16le" (with container "mov"/"mkv")
    container: str = "mp4"
    crf: int = 18  # design choice: see H264Config

    def __post_init__(self) -> None:
        if self.n_videos < 1:
            raise ValueError(f"synth.n_videos must be >= 1, got {self.n_videos}")
        if self.n_speakers < 1:
            raise ValueError(f"synth.n_speakers must be >= 1, got {self.n_speakers}")
        if self.seconds <= 0:
            raise ValueError(f"synth.seconds must be positive, got {self.seconds}")
        if self.size < 32 or self.size % 2:
            raise ValueError(
                f"synth.size must be an even number >= 32 (H.264 yuv420p, a face detector needs ~24 px), "
                f"got {self.size}"
            )
        MediaSpec(fps=self.fps, sample_rate=self.sample_rate)  # validates the fps / rate pair

    @property
    def media(self) -> MediaSpec:
        return MediaSpec(fps=self.fps, sample_rate=self.sample_rate)


@dataclass(frozen=True)
class Identity:
    """Appearance and voice of one synthetic speaker; sizes are fractions of the frame side."""

    speaker: str
    face_w: float
    face_h: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    background_top: tuple[int, int, int]
    background_bottom: tuple[int, int, int]
    eye_dx: float
    eye_size: float
    mouth_w: float
    base_f0: float  # voice pitch in Hz
    sway_hz: float
    sway_phase: float
    index: int = 0  # make_identity(index, seed) rebuilds this identity
    seed: int = 0


@dataclass(frozen=True)
class FrameTracks:
    """Per-frame ground truth that drives the renderer: everything but the identity.

    mouth: ``(T,)`` opening in [0, 1]; blink: ``(T,)`` eyelid closure in [0, 1];
    pose: ``(T, 3)`` float64 ``[offset_x, offset_y, tilt_deg]``, offsets as fractions of the frame side.
    """

    mouth: np.ndarray
    blink: np.ndarray
    pose: np.ndarray

    def __post_init__(self) -> None:
        t = len(self.mouth)
        if self.blink.shape != (t,) or self.pose.shape != (t, POSE_DIMS):
            raise ValueError(
                f"FrameTracks: mouth {self.mouth.shape}, blink {self.blink.shape} and pose {self.pose.shape} "
                f"must be (T,), (T,) and (T, {POSE_DIMS})"
            )

    def __len__(self) -> int:
        return len(self.mouth)

    def slice(self, start: int, stop: int) -> FrameTracks:
        """Frames ``[start, stop)``; refuses a range outside the tracks."""
        if not 0 <= start < stop <= len(self):
            raise ValueError(f"FrameTracks.slice: [{start}, {stop}) is outside the {len(self)} frames")
        return FrameTracks(self.mouth[start:stop], self.blink[start:stop], self.pose[start:stop])


POSE_DIMS = 3  # offset_x, offset_y, tilt_deg


@dataclass
class SyntheticVideo:
    """One synthetic talking-head video in memory.

    frames: ``(T, H, W, 3)`` uint8 RGB; audio: ``(T * samples_per_frame,)`` float32 in [-1, 1];
    mouth_open: ``(T,)`` float in [0, 1], the per-frame loudness that drove the mouth (= tracks.mouth);
    loudness_scale: the loudness that maps to a fully open mouth (``mouth_opening_from_loudness``).
    """

    identity: Identity
    frames: np.ndarray
    audio: np.ndarray
    mouth_open: np.ndarray
    media: MediaSpec = field(default_factory=MediaSpec)
    tracks: FrameTracks | None = None
    loudness_scale: float = 0.0
    blink_seed: int = 0


_SKIN_TONES = ((234, 192, 160), (198, 142, 104), (165, 112, 80), (240, 210, 180), (140, 96, 70))
_HAIR = ((30, 20, 15), (90, 60, 30), (200, 170, 90), (60, 60, 60), (120, 40, 20))
_IRIS = ((60, 90, 160), (70, 50, 30), (50, 110, 60), (40, 40, 40))


def make_identity(index: int, seed: int) -> Identity:
    """A deterministic identity: the same (index, seed) always gives the same face and voice."""
    rng = np.random.default_rng([seed, index, 0x1D])
    background = rng.integers(40, 220, size=(2, 3))
    return Identity(
        speaker=f"spk{index:03d}",
        face_w=float(rng.uniform(0.22, 0.27)),
        face_h=float(rng.uniform(0.29, 0.33)),
        skin=_SKIN_TONES[index % len(_SKIN_TONES)],
        hair=_HAIR[int(rng.integers(len(_HAIR)))],
        iris=_IRIS[int(rng.integers(len(_IRIS)))],
        background_top=tuple(int(c) for c in background[0]),
        background_bottom=tuple(int(c) for c in background[1]),
        eye_dx=float(rng.uniform(0.085, 0.105)),
        eye_size=float(rng.uniform(0.035, 0.045)),
        mouth_w=float(rng.uniform(0.07, 0.10)),
        base_f0=float(rng.uniform(100.0, 230.0)),
        sway_hz=float(rng.uniform(0.15, 0.4)),
        sway_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        index=index,
        seed=seed,
    )


def synthesize_speech(
    seconds: float, sample_rate: int, base_f0: float, rng: np.random.Generator
) -> np.ndarray:
    """Speech-like audio: words of 1-4 voiced syllables separated by pauses.

    Returns ``(round(seconds * sample_rate),)`` float32 in [-1, 1]. Each syllable is a harmonic
    series on a drifting pitch (intonation), shaped by two formant peaks and a smooth attack/decay.
    """
    n = int(round(seconds * sample_rate))
    audio = np.zeros(n, dtype=np.float64)
    t = 0
    nyquist_margin = 0.45 * sample_rate  # harmonics stay below ~Nyquist so nothing aliases
    while t < n:
        # Pause before each word: 0.1-0.45 s, the range of inter-word gaps in read speech.
        t += int(rng.uniform(0.1, 0.45) * sample_rate)
        for _ in range(int(rng.integers(1, 5))):
            length = int(rng.uniform(0.12, 0.3) * sample_rate)  # syllable 120-300 ms
            if t + length > n:
                break
            time = np.arange(length) / sample_rate
            # Pitch: base +-20 % per syllable, gliding +-10 % within it (intonation).
            f0_start = base_f0 * rng.uniform(0.8, 1.2)
            f0 = f0_start * (1.0 + rng.uniform(-0.1, 0.1) * time / time[-1])
            phase = 2.0 * math.pi * np.cumsum(f0) / sample_rate
            formants = (rng.uniform(300, 850), rng.uniform(900, 2300))  # F1, F2 of a vowel, Hz
            syllable = np.zeros(length)
            for harmonic in range(1, int(nyquist_margin // (f0_start * 1.1))):
                freq = harmonic * f0_start
                weight = sum(math.exp(-(((freq - f) / 150.0) ** 2)) for f in formants) + 0.05
                syllable += weight / harmonic * np.sin(harmonic * phase)
            envelope = np.clip(np.sin(math.pi * time / time[-1]), 0.0, 1.0) ** 0.7  # smooth attack/decay
            audio[t : t + length] += rng.uniform(0.4, 1.0) * envelope * syllable
            t += length + int(rng.uniform(0.0, 0.06) * sample_rate)  # short gaps inside a word
    audio += 1e-3 * rng.standard_normal(n)  # breath noise floor, so silence is not exactly zero
    peak = np.max(np.abs(audio))
    return (0.5 * audio / peak).astype(np.float32)  # -6 dBFS peak: AAC never clips


def frame_loudness(audio: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """Per-frame RMS loudness: ``(S,)`` -> ``(S // samples_per_frame,)``; frame i covers
    samples ``[i * spf, (i + 1) * spf)``, the alignment used everywhere in the pipeline."""
    frames = len(audio) // samples_per_frame
    windows = np.asarray(audio[: frames * samples_per_frame], dtype=np.float64)
    return np.sqrt(np.mean(windows.reshape(frames, samples_per_frame) ** 2, axis=1))


LOUDNESS_OPEN_PERCENTILE = 95  # design choice: the 95th-percentile loudness of a video opens the mouth fully
LOUDNESS_EPS = 1e-8  # keeps silence (all-zero audio) from dividing by zero


def loudness_scale(loudness: np.ndarray) -> float:
    """The loudness that opens the mouth fully: the 95th percentile of ``(T,)`` per-frame loudness."""
    return float(np.percentile(loudness, LOUDNESS_OPEN_PERCENTILE) + LOUDNESS_EPS)


def mouth_opening_from_loudness(loudness: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Normalise ``(T,)`` loudness to a mouth opening ``(T,)`` in [0, 1].

    ``scale`` (the loudness of a fully open mouth) defaults to this audio's own 95th percentile; pass a
    video's ``loudness_scale`` to render a part of it exactly as the whole video was rendered.
    """
    scale = loudness_scale(loudness) if scale is None else scale
    return np.clip(loudness / scale, 0.0, 1.0)


def _fixed(value: float) -> int:
    return int(round(value * _SUBPIXEL))


def _ellipse(img, center, axes, angle, color, thickness=-1) -> None:
    cv2.ellipse(
        img,
        (_fixed(center[0]), _fixed(center[1])),
        (max(_fixed(axes[0]), 1), max(_fixed(axes[1]), 1)),
        angle,
        0,
        360,
        color,
        thickness,
        cv2.LINE_AA,
        _SUBPIXEL_BITS,
    )


def _background(identity: Identity, size: int) -> np.ndarray:
    weights = np.linspace(0.0, 1.0, size)[:, None, None]
    top = np.array(identity.background_top, dtype=np.float64)
    bottom = np.array(identity.background_bottom, dtype=np.float64)
    column = (1.0 - weights) * top + weights * bottom  # (size, 1, 3) vertical gradient
    return np.repeat(column, size, axis=1).astype(np.uint8)


# The mouth as render_face draws it (half-axes in units of the identity's mouth_w); the SynthTalk metrics
# (rest_lightning/metrics/synthtalk.py) invert this geometry to read the opening back from pixels.
LIP_TINT = (0.75, 0.45, 0.45)  # lips = skin x this, per RGB channel
MOUTH_INTERIOR_RGB = (35, 8, 12)  # the dark opening, the same for every identity
LIP_CLOSED = 0.18  # lips half-height / mouth_w of a closed mouth (the lips' half-width is mouth_w)
LIP_GAIN = 0.55  # added lips half-height / mouth_w per unit of mouth_open
MOUTH_INNER_WIDTH = 0.8  # opening half-width / mouth_w
MOUTH_INNER_CLOSED = 0.03  # opening half-height / mouth_w of a closed mouth
MOUTH_INNER_GAIN = 0.45  # added opening half-height / mouth_w per unit of mouth_open


def render_face(
    identity: Identity,
    size: int,
    mouth_open: float,
    offset: tuple[float, float] = (0.0, 0.0),
    tilt_deg: float = 0.0,
    blink: float = 0.0,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Draw one frame ``(size, size, 3)`` uint8 RGB. ``mouth_open`` and ``blink`` are in [0, 1]."""
    img = (background if background is not None else _background(identity, size)).copy()
    s = float(size)
    cx, cy = s / 2 + offset[0] * s, s / 2 + offset[1] * s
    tilt = math.radians(tilt_deg)

    def at(dx: float, dy: float) -> tuple[float, float]:
        # Rotate a face-relative offset (fractions of the frame) by the head tilt.
        x, y = dx * s, dy * s
        return (cx + x * math.cos(tilt) - y * math.sin(tilt), cy + x * math.sin(tilt) + y * math.cos(tilt))

    fw, fh = identity.face_w * s, identity.face_h * s
    _ellipse(img, at(0.0, -0.05), (fw * 1.08, fh * 0.95), tilt_deg, identity.hair)  # hair behind
    _ellipse(img, at(0.0, 0.0), (fw * 0.28, fh * 0.5), tilt_deg, identity.skin)  # neck
    _ellipse(img, at(0.0, 0.02), (fw, fh), tilt_deg, identity.skin)
    shade = tuple(int(c * 0.8) for c in identity.skin)
    socket = tuple(int(c * 0.55) for c in identity.skin)
    highlight = tuple(min(int(c * 1.15) + 12, 255) for c in identity.skin)
    # Eyebrows always darker than the skin: a face detector keys on the dark brow/eye band above
    # brighter cheeks, whatever the hair colour.
    brow = tuple(min(h, int(c * 0.35)) for h, c in zip(identity.hair, identity.skin, strict=True))
    _ellipse(img, at(0.0, 0.09), (fw * 0.7, fh * 0.3), tilt_deg, highlight)  # cheeks catch the light
    # Sclera only a little brighter than the cheeks (as in photos): a white eye on dark skin would
    # invert the dark-eyes/bright-cheeks contrast that face detectors rely on.
    sclera = tuple(
        min(int(0.5 * c + 0.5 * h) + 20, 255) for c, h in zip((235, 230, 225), highlight, strict=True)
    )
    for side in (-1.0, 1.0):
        eye_c = at(side * identity.eye_dx, -0.04)
        es = identity.eye_size * s
        open_frac = max(1.0 - blink, 0.08)
        _ellipse(img, at(side * identity.eye_dx, -0.085), (es * 1.4, es * 0.35), tilt_deg, brow)
        _ellipse(img, eye_c, (es * 1.3, es * 1.1), tilt_deg, socket)  # eye socket shadow
        _ellipse(img, eye_c, (es, es * 0.6 * open_frac), tilt_deg, sclera)
        if open_frac > 0.3:
            _ellipse(img, eye_c, (es * 0.6, es * 0.55 * open_frac), tilt_deg, identity.iris)
            _ellipse(img, eye_c, (es * 0.22, es * 0.22 * open_frac), tilt_deg, (10, 10, 10))
    # Nose bridge catches the light between the eye sockets (the brightest band of a lit face).
    _ellipse(img, at(0.0, -0.02), (0.02 * s, 0.07 * s), tilt_deg, highlight)
    _ellipse(img, at(0.0, 0.05), (0.018 * s, 0.04 * s), tilt_deg, shade)  # nose
    # Mouth: lips always visible; the dark opening grows with loudness.
    mouth_c = at(0.0, 0.16)
    mw = identity.mouth_w * s
    lips = tuple(int(c * f) for c, f in zip(identity.skin, LIP_TINT, strict=True))
    _ellipse(img, mouth_c, (mw, mw * (LIP_CLOSED + LIP_GAIN * mouth_open)), tilt_deg, lips)
    _ellipse(
        img,
        mouth_c,
        (mw * MOUTH_INNER_WIDTH, mw * (MOUTH_INNER_CLOSED + MOUTH_INNER_GAIN * mouth_open)),
        tilt_deg,
        MOUTH_INTERIOR_RGB,
    )
    return img


SWAY_X, SWAY_Y = 0.025, 0.015  # design choice: head sway amplitude, fractions of the frame side
SWAY_Y_RATE = 1.7  # vertical sway runs 1.7x faster than horizontal (a Lissajous path, never a line)
TILT_DEG, TILT_RATE = 4.0, 0.8  # head roll amplitude in degrees and its rate relative to the sway
BLINK_FRAMES = 3  # design choice: a blink closes the eyes for 3 frames (120 ms, a real blink's length)
BLINK_GAP_S = (1.0, 5.0)  # design choice: seconds between blink onsets, mean 3 s (~20 blinks a minute)


def head_pose(identity: Identity, frames: int, fps: int, start_frame: int = 0) -> np.ndarray:
    """Head pose ``(frames, 3)`` ``[offset_x, offset_y, tilt_deg]`` of frames ``start_frame + i``.

    ``start_frame`` is the pose phase: the sway is a function of time since the video's start, so a
    clip cut at frame s re-renders with ``start_frame=s``.
    """
    t = (start_frame + np.arange(frames)) / fps
    phase = 2.0 * math.pi * identity.sway_hz * t + identity.sway_phase
    return np.stack(
        [SWAY_X * np.sin(phase), SWAY_Y * np.sin(SWAY_Y_RATE * phase), TILT_DEG * np.sin(TILT_RATE * phase)],
        axis=1,
    )


def blink_track(blink_seed: int, frames: int, fps: int, start_frame: int = 0) -> np.ndarray:
    """Eyelid closure ``(frames,)`` in {0, 1} of frames ``start_frame + i``.

    Blink onsets are a renewal process drawn from ``blink_seed`` on the absolute frame axis, so any
    window of a video re-renders with the blinks the whole video had.
    """
    rng = np.random.default_rng([blink_seed, 0xB11C])
    closed = np.zeros(frames, dtype=np.float64)
    onset = rng.uniform(*BLINK_GAP_S) * fps
    stop = start_frame + frames
    while onset < stop:
        first = int(onset)
        lo, hi = max(first, start_frame), min(first + BLINK_FRAMES, stop)
        if hi > lo:  # a blink that ended before start_frame leaves no trace in this window
            closed[lo - start_frame : hi - start_frame] = 1.0
        onset += rng.uniform(*BLINK_GAP_S) * fps
    return closed


def render_frames(identity: Identity, size: int, tracks: FrameTracks) -> np.ndarray:
    """Render ``tracks`` for ``identity``: ``(T, size, size, 3)`` uint8 RGB, frame i from track row i."""
    background = _background(identity, size)
    frames = np.empty((len(tracks), size, size, 3), dtype=np.uint8)
    for i, (mouth, blink, (dx, dy, tilt)) in enumerate(
        zip(tracks.mouth, tracks.blink, tracks.pose, strict=True)
    ):
        frames[i] = render_face(
            identity,
            size,
            float(mouth),
            offset=(float(dx), float(dy)),
            tilt_deg=float(tilt),
            blink=float(blink),
            background=background,
        )
    return frames


def tracks_for_audio(
    identity: Identity,
    audio: np.ndarray,
    media: MediaSpec,
    start_frame: int = 0,
    blink_seed: int = 0,
    scale: float | None = None,
) -> FrameTracks:
    """The ground-truth tracks a face driven by ``audio`` ``(S,)`` has: one row per whole video frame.

    Mouth = ``mouth_opening_from_loudness(frame_loudness(audio), scale)``; pose and blinks are those of
    frames ``start_frame ..`` (pose phase and blink seed). With a video's ``loudness_scale``, its
    ``start_frame`` and its ``blink_seed``, this reproduces any window of a synthetic video.
    """
    mouth = mouth_opening_from_loudness(frame_loudness(audio, media.samples_per_frame), scale)
    frames = len(mouth)
    return FrameTracks(
        mouth=mouth,
        blink=blink_track(blink_seed, frames, media.fps, start_frame),
        pose=head_pose(identity, frames, media.fps, start_frame),
    )


def render_for_audio(
    identity: Identity,
    audio: np.ndarray,
    size: int,
    media: MediaSpec | None = None,
    start_frame: int = 0,
    blink_seed: int = 0,
    scale: float | None = None,
) -> np.ndarray:
    """What the face should look like for ``audio``: ``(S // spf, size, size, 3)`` uint8 RGB source frames.

    See ``tracks_for_audio`` for the arguments; ``data/synthtalk.py`` takes the frames through a clip's
    crop boxes.
    """
    media = media or MediaSpec()
    return render_frames(
        identity, size, tracks_for_audio(identity, audio, media, start_frame, blink_seed, scale)
    )


def synthesize_video(
    identity: Identity, seconds: float, size: int, seed: int, media: MediaSpec | None = None
) -> SyntheticVideo:
    """One talking-head video in memory, deterministic from (identity, seconds, size, seed).

    The audio comes from ``seed``; the blinks from ``blink_seed = seed`` on their own stream.
    """
    media = media or MediaSpec()
    rng = np.random.default_rng([seed, 0x5EED])
    frames_total = int(round(seconds * media.fps))
    audio = synthesize_speech(frames_total / media.fps, media.sample_rate, identity.base_f0, rng)[
        : media.audio_samples(frames_total)
    ]
    scale = loudness_scale(frame_loudness(audio, media.samples_per_frame))
    tracks = tracks_for_audio(identity, audio, media, start_frame=0, blink_seed=seed, scale=scale)
    return SyntheticVideo(
        identity=identity,
        frames=render_frames(identity, size, tracks),
        audio=audio,
        mouth_open=tracks.mouth,
        media=media,
        tracks=tracks,
        loudness_scale=scale,
        blink_seed=seed,
    )


def mouth_activity(frames: np.ndarray) -> np.ndarray:
    """Darkness of the mouth region per frame, ``(T, H, W, 3)`` uint8 -> ``(T,)`` float.

    The region is the lower-middle of a face-centred frame (where both the synthetic renderer and a
    face crop put the mouth); an open mouth is dark, so darkness rises with opening.
    """
    _, h, w, _ = frames.shape
    region = frames[:, int(0.58 * h) : int(0.82 * h), int(0.36 * w) : int(0.64 * w)]
    luma = region.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return 255.0 - luma.mean(axis=(1, 2))


def lip_audio_correlation(frames: np.ndarray, audio: np.ndarray, media: MediaSpec | None = None) -> float:
    """Pearson correlation between per-frame mouth darkness and per-frame audio loudness."""
    media = media or MediaSpec()
    loudness = frame_loudness(audio, media.samples_per_frame)
    n = min(len(loudness), len(frames))
    activity = mouth_activity(frames[:n])
    return float(np.corrcoef(activity, loudness[:n])[0, 1])


TRUTH_VERSION = 1  # version of the sidecar layout below; bumped when a field changes meaning


@dataclass(frozen=True)
class VideoTruth:
    """Ground truth of one synthetic video: the ``{video}.json`` sidecar ``rest-prep mode=synth`` writes.

    Everything needed to re-render the video (identity, blink seed, loudness scale, source size) and its
    per-frame tracks; ``rest-prep`` slices the tracks into each clip's ``json`` (``data/synthtalk.py``).
    """

    identity: Identity
    tracks: FrameTracks
    blink_seed: int
    loudness_scale: float
    size: int  # source frame side, px
    fps: int
    sample_rate: int

    @classmethod
    def of(cls, video: SyntheticVideo) -> VideoTruth:
        if video.tracks is None:
            raise ValueError("VideoTruth.of: the video has no tracks (build it with synthesize_video)")
        return cls(
            identity=video.identity,
            tracks=video.tracks,
            blink_seed=video.blink_seed,
            loudness_scale=video.loudness_scale,
            size=int(video.frames.shape[1]),
            fps=video.media.fps,
            sample_rate=video.media.sample_rate,
        )

    @property
    def media(self) -> MediaSpec:
        return MediaSpec(fps=self.fps, sample_rate=self.sample_rate)

    def to_json(self) -> str:
        # json writes float64 with repr precision, so tracks read back bit-exact and re-render exactly.
        return json.dumps(
            {
                "truth_version": TRUTH_VERSION,
                "identity": asdict(self.identity),
                "blink_seed": self.blink_seed,
                "loudness_scale": self.loudness_scale,
                "size": self.size,
                "fps": self.fps,
                "sample_rate": self.sample_rate,
                "gt": tracks_to_json(self.tracks),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> VideoTruth:
        data = json.loads(text)
        if data.get("truth_version") != TRUTH_VERSION:
            raise ValueError(
                f"synthetic ground-truth sidecar has truth_version {data.get('truth_version')!r}, this reader "
                f"knows {TRUTH_VERSION}: rewrite the corpus with rest-prep mode=synth"
            )
        return cls(
            identity=identity_from_json(data["identity"]),
            tracks=tracks_from_json(data["gt"]),
            blink_seed=int(data["blink_seed"]),
            loudness_scale=float(data["loudness_scale"]),
            size=int(data["size"]),
            fps=int(data["fps"]),
            sample_rate=int(data["sample_rate"]),
        )


def tracks_to_json(tracks: FrameTracks) -> dict[str, list]:
    """``{"mouth": [T], "blink": [T], "pose": [T][3]}`` plain lists (the ``gt`` object of sidecar and clip)."""
    return {"mouth": tracks.mouth.tolist(), "blink": tracks.blink.tolist(), "pose": tracks.pose.tolist()}


def tracks_from_json(data: dict[str, list]) -> FrameTracks:
    return FrameTracks(
        mouth=np.asarray(data["mouth"], dtype=np.float64),
        blink=np.asarray(data["blink"], dtype=np.float64),
        pose=np.asarray(data["pose"], dtype=np.float64).reshape(-1, POSE_DIMS),
    )


def identity_from_json(data: dict) -> Identity:
    """Inverse of ``asdict(identity)`` (json turns the colour tuples into lists)."""
    return Identity(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def sidecar_path(video_path: str | Path) -> Path:
    """Where a synthetic video's ground truth lives: ``{video}.json`` next to ``{video}.mp4``."""
    return Path(video_path).with_suffix(".json")


def write_synthetic_corpus(cfg: SynthConfig) -> list[Path]:
    """Write ``cfg.n_videos`` talking-head files to ``{cfg.output}/{speaker}/vid{i:04d}.{container}``, each
    with its ground truth (``VideoTruth``) in ``vid{i:04d}.json`` beside it.

    Video i uses identity ``i % n_speakers`` and seed ``(cfg.seed, i)``; files that already exist are
    overwritten so the corpus always matches the config. Returns the written paths in order.
    """
    if not cfg.output:
        raise ValueError("synth.output is empty: set synth.output=DIR")
    out = Path(cfg.output)
    ext = {"matroska": "mkv"}.get(cfg.container, cfg.container)
    paths = []
    for i in range(cfg.n_videos):
        identity = make_identity(i % cfg.n_speakers, cfg.seed)
        video = synthesize_video(
            identity, cfg.seconds, cfg.size, seed=cfg.seed * 1_000_003 + i, media=cfg.media
        )
        data = encode_mp4(
            video.frames,
            cfg.fps,
            H264Config(crf=cfg.crf),
            audio=video.audio,
            sample_rate=cfg.sample_rate,
            container_format=cfg.container,
            audio_codec=cfg.audio_codec,
        )
        path = out / identity.speaker / f"vid{i:04d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sidecar_path(path).write_text(VideoTruth.of(video).to_json(), encoding="ascii")
        paths.append(path)
    log.info("wrote %d synthetic videos (%d speakers) to %s", len(paths), cfg.n_speakers, out)
    return paths
