"""Media in and out of a stream: the reference image, audio from a file or raw PCM on a pipe (resampled
to the model's rate, mono), and an mp4 written frame by frame with the input audio muxed in.

PyAV (bundled FFmpeg) decodes and resamples audio and encodes H.264 + AAC; OpenCV reads images (the
project's codecs, ``rest_lightning.data.codecs``). File and pipe audio go through the same FFmpeg
resampler, so the same PCM gives the same samples whichever way it arrives.

The mp4 is written to a hidden temporary file beside the output and renamed onto it only when complete:
an interrupted or failed run leaves no file that looks like a finished video.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import cv2
import numpy as np
import torch
from torch import Tensor

from rest_lightning.data.codecs import H264Config, float_to_pcm16

PCM16_BYTES = 2  # bytes per sample of s16le
READ_FORMAT = "flt"  # FFmpeg packed float32: the samples the audio encoder takes


class MediaError(ValueError):
    """An input that cannot be used (unreadable, empty, wrong layout); the message says which and why."""


# --- reference image ---------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> ``(H, W, 3)`` uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"reference image {str(path)!r} does not exist")
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"reference image {str(path)!r} cannot be read as an image (png, jpg, ...)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_to_tensor(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, 1, H, W)`` float32 in [-1, 1] (a one-frame video)."""
    return torch.from_numpy(image).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1.0


def frames_to_uint8(frames: Tensor) -> np.ndarray:
    """``(B, 3, T, H, W)`` float in [-1, 1] -> ``(B, T, H, W, 3)`` uint8 RGB (on the CPU)."""
    scaled = ((frames.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 4, 1).cpu().numpy()


# --- audio ---------------------------------------------------------------------------------------------


def _resampled(resampler: av.AudioResampler, frame: av.AudioFrame | None) -> np.ndarray:
    chunks = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def iter_audio_file(path: str | os.PathLike, sample_rate: int, chunk_samples: int) -> Iterator[np.ndarray]:
    """Decode an audio (or video) file's first audio stream, any rate and channel layout, to mono float32
    at ``sample_rate``, in pieces of ``chunk_samples`` (the last one shorter)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"audio file {str(path)!r} does not exist")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise MediaError(f"audio file {str(path)!r} cannot be opened ({err})") from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"{str(path)!r} has no audio stream")
        resampler = av.AudioResampler(format=READ_FORMAT, layout="mono", rate=sample_rate)
        pending = np.zeros(0, np.float32)
        try:
            for frame in container.decode(audio=0):
                pending = np.concatenate([pending, _resampled(resampler, frame)])
                while len(pending) >= chunk_samples:
                    yield pending[:chunk_samples]
                    pending = pending[chunk_samples:]
        except av.FFmpegError as err:
            raise MediaError(f"decoding the audio of {str(path)!r} failed ({err})") from None
        pending = np.concatenate([pending, _resampled(resampler, None)])
        for start in range(0, len(pending), chunk_samples):
            yield pending[start : start + chunk_samples]


def iter_pcm_stream(
    stream: BinaryIO, source_rate: int, channels: int, sample_rate: int, chunk_samples: int
) -> Iterator[np.ndarray]:
    """Raw PCM s16le (interleaved ``channels``) at ``source_rate`` from a pipe -> mono float32 at
    ``sample_rate``, yielded as it arrives: each read waits for ``chunk_samples`` frames of input or
    the end of the stream."""
    if source_rate < 1 or channels < 1:
        raise MediaError(f"raw PCM needs a positive sample rate and channel count, got {source_rate}, {channels}")
    layout = {1: "mono", 2: "stereo"}.get(channels)
    if layout is None:
        raise MediaError(f"raw PCM on stdin: {channels} channels are not supported (1 or 2)")
    resampler = av.AudioResampler(format=READ_FORMAT, layout="mono", rate=sample_rate)
    frame_bytes = PCM16_BYTES * channels
    read_bytes = max(1, chunk_samples * source_rate // sample_rate) * frame_bytes
    carry = b""
    pts = 0
    while True:
        data = stream.read(read_bytes)
        if not data:
            break
        data = carry + data
        usable = len(data) - len(data) % frame_bytes
        data, carry = data[:usable], data[usable:]
        if not data:
            continue
        pcm = np.frombuffer(data, dtype="<i2").reshape(1, -1)  # packed s16: (1, S * channels)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = source_rate
        frame.pts = pts
        frame.time_base = Fraction(1, source_rate)
        pts += pcm.shape[1] // channels
        out = _resampled(resampler, frame)
        if len(out):
            yield out
    tail = _resampled(resampler, None)
    if len(tail):
        yield tail


# --- mp4 out ---------------------------------------------------------------------------------------------


class Mp4StreamWriter:
    """Writes an H.264 mp4 frame by frame, with a mono AAC track fed as audio arrives.

    Use as a context manager: leaving it normally finishes the file and renames it onto ``path``;
    leaving it with an exception removes the temporary file (no half-written output).

    Args:
        path: the output file.
        fps: video frame rate.
        sample_rate: rate of the audio samples given to ``write_audio``.
        h264: encoder settings.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: int,
        width: int,
        height: int,
        sample_rate: int,
        h264: H264Config | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise MediaError(f"H.264 (yuv420p) needs an even frame size, got {width}x{height}")
        self.path = Path(path)
        self.fps = fps
        self.width, self.height = width, height
        self.sample_rate = sample_rate
        self.h264 = h264 or H264Config()
        self._tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self.frames_written = 0
        self.samples_written = 0

    def __enter__(self) -> Mp4StreamWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        # Both streams exist before the first packet: the mp4 header is written at the first mux.
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = self.width, self.height
        self._video.pix_fmt = self.h264.pix_fmt
        self._video.options = {"crf": str(self.h264.crf), "preset": self.h264.preset}
        self._audio = self._container.add_stream("aac", rate=self.sample_rate)
        self._audio.layout = "mono"
        return self

    def write_frames(self, frames: np.ndarray) -> None:
        """Append ``(T, H, W, 3)`` uint8 RGB frames of the writer's size."""
        assert self._container is not None and self._video is not None, "use Mp4StreamWriter in a with block"
        if frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise MediaError(
                f"frames must be uint8 (T, {self.height}, {self.width}, 3), got {frames.dtype} {frames.shape}"
            )
        for frame in frames:
            for packet in self._video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.frames_written += len(frames)

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float samples in [-1, 1] at ``sample_rate``."""
        assert self._container is not None and self._audio is not None
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not len(samples):
            return
        pcm = float_to_pcm16(samples)[None, :]  # (1, S) packed s16 mono
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        # pts from 0 lets the AAC encoder stamp its priming samples negative (an edit list), so the
        # decoded audio starts with frame 0 (as data.codecs.encode_mp4).
        frame.pts = self.samples_written
        frame.time_base = Fraction(1, self.sample_rate)
        for packet in self._audio.encode(frame):
            self._container.mux(packet)
        self.samples_written += len(samples)

    def __exit__(self, exc_type, exc, tb) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            if exc_type is None:
                if self.frames_written == 0:
                    raise MediaError("no video frames were generated; nothing written")
                for stream in (self._video, self._audio):
                    for packet in stream.encode(None):
                        container.mux(packet)
        except BaseException:
            container.close()
            self._tmp.unlink(missing_ok=True)
            raise
        container.close()
        if exc_type is not None:
            self._tmp.unlink(missing_ok=True)
            return
        os.replace(self._tmp, self.path)
