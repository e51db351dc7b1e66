"""Probe and decode one input with PyAV, resampled to the pipeline's time base.

Video is brought to ``fps`` by taking, for every output time ``t0 + j / fps``, the source frame
nearest in time (``t0`` = first video frame), which handles 24/30/60 fps and variable-frame-rate
sources alike. Audio is resampled by FFmpeg to ``sample_rate`` mono PCM16 and aligned so that
output sample 0 is at ``t0`` (leading silence padded, earlier audio dropped): frame ``j`` covers
samples ``[j * spf, (j + 1) * spf)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from rest_lightning.data.codecs import frame_to_rgb

_TIME_EPS = 1e-6  # seconds; float pts arithmetic tolerance when matching output times to frames


class MediaError(Exception):
    """An input that cannot be used; ``stage`` and ``reason`` go to rejected.jsonl."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Probe:
    """What one pass over an input learned: usable 25 fps frame count and aligned 16 kHz audio."""

    frames: int  # output frames covered by both video and audio
    audio: np.ndarray  # (frames * spf,) int16 mono, sample 0 at the first video frame
    source_fps: float
    width: int
    height: int
    duration_s: float


def _open(path: str | bytes):
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise MediaError("probe", f"cannot stat file: {err}") from err
    if size == 0:
        raise MediaError("probe", "zero-length file")
    try:
        return av.open(os.fsdecode(path) if isinstance(path, bytes) else path, mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise MediaError("probe", f"not a readable media file ({type(err).__name__}: {err})") from err


def _streams(container):
    if not container.streams.video:
        raise MediaError("probe", "no video stream")
    if not container.streams.audio:
        raise MediaError("probe", "no audio stream")
    return container.streams.video[0], container.streams.audio[0]


def _frame_time(frame, fallback: float) -> float:
    return float(frame.time) if frame.time is not None else fallback


def resample_video(frames: Iterator, fps: int) -> Iterator[tuple[int, object]]:
    """Yield ``(j, frame)`` for output frames ``j = 0, 1, ...`` at ``fps``: the source frame nearest
    to ``t0 + j / fps`` (the earlier one on a tie). ``frames`` yields PyAV frames in display order."""
    prev = None
    prev_t = t0 = 0.0
    j = 0
    for frame in frames:
        t = _frame_time(frame, prev_t + 1.0 / fps if prev is not None else 0.0)
        if prev is None:
            prev, prev_t, t0 = frame, t, t
            continue
        if t <= prev_t:  # out-of-order or duplicate timestamp: keep the first frame seen
            continue
        while t0 + j / fps <= t + _TIME_EPS:
            target = t0 + j / fps
            yield j, (prev if target - prev_t <= t - target else frame)
            j += 1
        prev, prev_t = frame, t
    if prev is not None and j == 0:
        yield 0, prev  # a single-frame video still yields its frame


def probe_and_decode_audio(path: str | bytes, fps: int, sample_rate: int) -> Probe:
    """First pass: decode all audio (resampled, aligned) and count the output video frames."""
    container = _open(path)
    try:
        video, audio = _streams(container)
        video.thread_type = "AUTO"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        audio_start: float | None = None
        video_times: list[float] = []
        try:
            for packet in container.demux(video, audio):
                for frame in packet.decode():
                    if packet.stream.type == "video":
                        fallback = video_times[-1] + 1.0 / fps if video_times else 0.0
                        video_times.append(_frame_time(frame, fallback))
                    else:
                        if audio_start is None:
                            audio_start = _frame_time(frame, 0.0)
                        for out in resampler.resample(frame):
                            chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as err:
            raise MediaError("decode", f"decoding failed ({type(err).__name__}: {err})") from err
        if not video_times:
            raise MediaError("decode", "no decodable video frames")
        if not chunks:
            raise MediaError("decode", "no decodable audio samples")
        width, height = video.codec_context.width, video.codec_context.height
    finally:
        container.close()
    times = np.sort(np.asarray(video_times))
    t0 = float(times[0])
    n_out = int(np.floor((times[-1] - t0) * fps + _TIME_EPS)) + 1
    pcm = np.concatenate(chunks).astype(np.int16)
    offset = int(round(((audio_start or 0.0) - t0) * sample_rate))
    if offset > 0:  # audio starts after the first frame: the gap is silence
        pcm = np.concatenate([np.zeros(offset, np.int16), pcm])
    elif offset < 0:
        pcm = pcm[-offset:]
    spf = sample_rate // fps
    frames = min(n_out, len(pcm) // spf)
    span = times[-1] - t0
    source_fps = (len(times) - 1) / span if span > 0 else float(fps)
    return Probe(
        frames=frames,
        audio=pcm[: frames * spf],
        source_fps=float(source_fps),
        width=int(width),
        height=int(height),
        duration_s=float(span + 1.0 / max(source_fps, 1e-6)),
    )


def iter_video(path: str | bytes, fps: int, frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """Second pass: ``(j, (H, W, 3) uint8 RGB)`` for output frames ``j < frames`` at ``fps``."""
    container = _open(path)
    try:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        try:
            for j, frame in resample_video(container.decode(video), fps):
                if j >= frames:
                    break
                yield j, frame_to_rgb(frame)
        except av.FFmpegError as err:
            raise MediaError("decode", f"decoding failed ({type(err).__name__}: {err})") from err
    finally:
        container.close()
