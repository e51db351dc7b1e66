"""Media in and out of a stream: the reference image, audio from a file or raw PCM on a pipe (resampled
to the model's rate, mono), and an mp4 written frame by frame with the input audio muxed in.

PyAV (bundled FFmpeg) decodes and resamples audio and encodes H.264 + AAC; OpenCV reads images (the
project's codecs, ``rest_lightning.data.codecs``). File and pipe audio go through the same FFmpeg
resampler, so the same PCM gives the same samples whichever way it arrives.

The mp4 grows as fragmented MP4 at ``out.partial.mp4`` (playable while it grows, and after a crash up to its
last fragment) and is renamed onto ``out.mp4`` when finished; a run that fails leaves what it made under the
``.partial`` name only, never a file that looks like a complete video.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

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

AAC_FRAME_SAMPLES = 1024  # samples per AAC-LC frame (ISO/IEC 14496-3)
# Fragmented MP4 (ffmpeg's mov muxer, doc/muxers.texi "Fragmentation"): samples and their index are written
# together, fragment by fragment, so the file is readable while it grows and after a crash.
#   frag_keyframe: cut a fragment at each video keyframe (one per ``fragment_s``, from the encoder's GOP);
#   empty_moov: the header describes no samples, so nothing has to be patched in at the end;
#   delay_moov: write that header when the first fragment is cut, once the tracks' start times are known,
#     so it carries the AAC priming edit list (without it the muxer shifts both tracks by 1024 samples and
#     the video starts 64 ms late);
#   default_base_moof: sample offsets relative to each fragment (what Media Source Extensions expect).
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof"}
FLUSH_EACH_WRITE = {"flush_packets": "1"}  # a fragment reaches the file at once, not after 32 KiB of buffer


def partial_path(path: str | os.PathLike) -> Path:
    """Where ``Mp4StreamWriter`` grows ``path`` until it is finished: ``out.mp4`` -> ``out.partial.mp4``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


class Mp4StreamWriter:
    """Writes an H.264 + AAC mp4 frame by frame as the video is generated, with the input audio muxed in.

    The file grows at ``partial_path`` (``out.partial.mp4`` beside ``out.mp4``) as fragmented MP4: a
    player can open it while it grows, and a process killed outright (``kill -9``, power loss) leaves a
    playable prefix that lacks at most the fragment in progress and the audio encoder's delay
    (``max_unsaved_frames``). Video is encoded without look-ahead (x264 ``tune=zerolatency``) so no
    frames wait inside the encoder.

    Use as a context manager. Leaving it normally finishes the file and renames it onto ``path``
    (``MediaError`` if no frame was written). Leaving it with an exception finishes what was made and keeps
    it at ``partial_path`` (``kept``), never at ``path``, where it would look like a complete video; with
    no frame written the file is removed.

    Audio is muxed only up to the end of the video written so far, so a stream stopped part-way has as much
    sound as picture; at the end of the input the video covers all the audio (``FrameRule``).

    Args:
        path: the finished output file (``.mp4``).
        fps: video frame rate.
        width, height: frame size in pixels (even: yuv420p).
        sample_rate: rate of the audio samples given to ``write_audio``.
        h264: encoder settings.
        fragment_s: seconds between keyframes, hence the longest fragment: what a ``kill -9`` can lose.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: int,
        width: int,
        height: int,
        sample_rate: int,
        h264: H264Config | None = None,
        fragment_s: float = 1.0,  # issue 15: an interrupted live stream loses at most about a second
    ) -> None:
        if width % 2 or height % 2:
            raise MediaError(f"H.264 (yuv420p) needs an even frame size, got {width}x{height}")
        if fragment_s * fps < 1:
            raise MediaError(f"fragment_s={fragment_s} is shorter than one frame at {fps} fps")
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.fps = fps
        self.width, self.height = width, height
        self.sample_rate = sample_rate
        self.h264 = h264 or H264Config()
        self.keyframe_interval = int(fragment_s * fps)  # frames per fragment (x264's maximum GOP)
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._pending_audio = np.zeros(0, np.float32)  # received, not yet covered by video
        self.frames_written = 0
        self.samples_written = 0  # audio samples muxed
        self.kept: Path | None = None  # the unfinished file left at partial_path after an exception

    @property
    def max_unsaved_frames(self) -> int:
        """Frames written that may not be in the file yet (what a ``kill -9`` can lose): the fragment in
        progress, plus the video the muxer holds back to interleave it with audio not yet muxed. That audio
        is under four AAC frames: the samples short of a whole frame, the encoder's priming frame and its
        one-frame look-ahead, and the last packet, which the interleaver keeps until a later one arrives
        (measured: at most 7 frames behind with a keyframe on every frame, 30 with one a second)."""
        audio_held_frames = -(-4 * AAC_FRAME_SAMPLES * self.fps // self.sample_rate)  # ceil: 7 at 25 fps
        return self.keyframe_interval + audio_held_frames

    @property
    def seconds_written(self) -> float:
        return self.frames_written / self.fps

    def __enter__(self) -> Mp4StreamWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial_path.exists():
            log.warning("replacing %s, left unfinished by an earlier run", self.partial_path)
        options = FRAGMENTED_MP4 | FLUSH_EACH_WRITE
        self._container = av.open(str(self.partial_path), mode="w", format="mp4", options=options)
        # Both streams exist before the first packet: the mp4 header is written at the first fragment.
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = self.width, self.height
        self._video.pix_fmt = self.h264.pix_fmt
        self._video.options = {
            "crf": str(self.h264.crf),
            "preset": self.h264.preset,
            "tune": "zerolatency",  # no B-frames, no look-ahead: a frame's packet leaves the encoder at once
            "g": str(self.keyframe_interval),
        }
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
        self._mux_audio()

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float samples in [-1, 1] at ``sample_rate`` (muxed once video covers them)."""
        assert self._container is not None, "use Mp4StreamWriter in a with block"
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._pending_audio = np.concatenate([self._pending_audio, samples])
        self._mux_audio()

    def _mux_audio(self) -> None:
        """Encode the pending audio up to the end of the video written so far."""
        video_samples = self.frames_written * self.sample_rate // self.fps
        take = min(len(self._pending_audio), video_samples - self.samples_written)
        if take <= 0:
            return
        samples, self._pending_audio = self._pending_audio[:take], self._pending_audio[take:]
        pcm = float_to_pcm16(samples)[None, :]  # (1, S) packed s16 mono
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        # pts from 0 lets the AAC encoder stamp its priming samples negative (an edit list, written thanks to
        # delay_moov), so the decoded audio starts with frame 0 (as data.codecs.encode_mp4).
        frame.pts = self.samples_written
        frame.time_base = Fraction(1, self.sample_rate)
        for packet in self._audio.encode(frame):
            self._container.mux(packet)
        self.samples_written += take

    def _close(self) -> None:
        """Flush both encoders and write the last fragment; audio beyond the video's end is dropped."""
        container, self._container = self._container, None
        try:
            for stream in (self._video, self._audio):
                for packet in stream.encode(None):
                    container.mux(packet)
        finally:
            container.close()

    def finish(self) -> Path:
        """Complete the file and move it onto ``path``; returns ``path``."""
        self._close()
        if self.frames_written == 0:
            self.partial_path.unlink(missing_ok=True)
            raise MediaError("no video frames were generated; nothing written")
        os.replace(self.partial_path, self.path)
        return self.path

    def keep_partial(self) -> Path | None:
        """Complete what was made and leave it at ``partial_path`` (returned, also as ``kept``); with no
        frame written, remove it and return ``None``."""
        try:
            self._close()
        except Exception:
            self.partial_path.unlink(missing_ok=True)
            raise
        if self.frames_written == 0:
            self.partial_path.unlink(missing_ok=True)
            return None
        self.kept = self.partial_path
        return self.kept

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._container is None:  # finished or kept already
            return
        if exc_type is None:
            self.finish()
            return
        try:
            self.keep_partial()
        except Exception:  # the error that got us here is the one to report
            log.exception("finishing %s after an error failed; removed it", self.partial_path)
