"""Byte-level codecs for the shard sample format (``rest_lightning.data.schema``).

PyAV (bundled FFmpeg with libx264) for H.264 mp4, soundfile for PCM16 wav, OpenCV for png: these
run offline on the CPU builds we support (torchaudio / torchcodec do not load there, see
reference/environment.md). Everything works on in-memory ``bytes`` so that loader workers decode
tar members without temporary files.

Arrays: video ``(T, H, W, 3)`` uint8 RGB; audio ``(S,)`` float32 in [-1, 1] (mono); image
``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
import soundfile as sf

PCM16_FULL_SCALE = 32768  # int16 full scale: float in [-1, 1) maps to [-32768, 32767]


@dataclass(frozen=True)
class H264Config:
    """Settings of the H.264 encoder used for clips in shards and the synthetic corpus."""

    crf: int = 18  # design choice: visually lossless for 512x512 faces at ~100 kB/s, keeps shards small
    preset: str = "veryfast"  # design choice: prep is encode-bound; veryfast is ~3x faster than medium
    pix_fmt: str = "yuv420p"  # the pixel format every H.264 decoder accepts

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ValueError(f"h264.crf must be in [0, 51] (libx264 range), got {self.crf}")


def _check_video(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"video must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("video must have at least one frame")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"H.264 with yuv420p needs even height and width, got {frames.shape[1]}x{frames.shape[2]}"
        )


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    """``(S,)`` float in [-1, 1] -> int16, clipped (the inverse of ``pcm16_to_float`` on int16 input)."""
    scaled = np.round(np.asarray(audio, dtype=np.float64) * PCM16_FULL_SCALE)
    return np.clip(scaled, -PCM16_FULL_SCALE, PCM16_FULL_SCALE - 1).astype(np.int16)


def pcm16_to_float(audio: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1)."""
    return audio.astype(np.float32) / PCM16_FULL_SCALE


def encode_mp4(
    frames: np.ndarray,
    fps: int,
    h264: H264Config | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    container_format: str = "mp4",
    audio_codec: str = "aac",
) -> bytes:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (and optionally mono audio) to container bytes.

    Shard clips carry no audio track (audio lives losslessly in ``audio.wav``); the synthetic corpus
    and test fixtures pass ``audio`` to get a real talking-head file with an AAC (or PCM) track.
    """
    _check_video(frames)
    h264 = h264 or H264Config()
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = h264.pix_fmt
        stream.options = {"crf": str(h264.crf), "preset": h264.preset}
        audio_stream = None
        if audio is not None:
            if sample_rate is None:
                raise ValueError("encode_mp4: sample_rate is required when audio is given")
            audio_stream = container.add_stream(audio_codec, rate=sample_rate)
            audio_stream.layout = "mono"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            pcm = float_to_pcm16(audio)[None, :]  # (1, S) packed s16 mono
            audio_frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            audio_frame.sample_rate = sample_rate
            # pts 0 lets the encoder stamp its priming samples (AAC: 1024) with negative pts, so
            # the muxer writes an edit list and decoders drop them: audio stays aligned to frame 0.
            audio_frame.pts = 0
            audio_frame.time_base = Fraction(1, sample_rate)
            for packet in audio_stream.encode(audio_frame):
                container.mux(packet)
            for packet in audio_stream.encode(None):
                container.mux(packet)
    return buf.getvalue()


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded video frame as ``(H, W, 3)`` uint8 RGB, converted by swscale on the calling thread.

    ``threads=1``: PyAV (>= 17) converts with a pool of swscale slice threads by default, and PyAV 18.1.1
    reuses that converter in a forked child, whose copy of the pool has no threads: a DataLoader worker forked
    after the parent process decoded a video waited for ever (``test_two_ranks_read_disjoint_val_samples...``
    hung in CI). One thread costs nothing at these frame sizes and gives the same pixels. 18.1.1 still
    segfaulted in a worker after that, so constraints.txt pins av 18.1.0; this keeps a later version from hanging.
    """
    return frame.to_ndarray(format="rgb24", threads=1)


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode every frame of the first video stream: ``(T, H, W, 3)`` uint8 RGB.

    Raises ``ValueError`` on bytes FFmpeg cannot decode or that hold no video frames.
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [frame_to_rgb(f) for f in container.decode(stream)]
    except av.FFmpegError as err:
        raise ValueError(f"cannot decode mp4 bytes: {err}") from err
    if not frames:
        raise ValueError("mp4 holds no decodable video frames")
    return np.stack(frames)


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """``(S,)`` float in [-1, 1] or int16 mono -> PCM16 wav bytes (int16 input is stored bit-exact)."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"wav audio must be mono (S,), got shape {audio.shape}")
    pcm = audio if audio.dtype == np.int16 else float_to_pcm16(audio)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM wav bytes -> (``(S,)`` float32 in [-1, 1), sample rate); multi-channel input is refused."""
    try:
        audio, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"cannot decode wav bytes: {err}") from err
    if audio.shape[1] != 1:
        raise ValueError(f"expected mono wav, got {audio.shape[1]} channels")
    return audio[:, 0], int(sample_rate)


def encode_png(image: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> png bytes (lossless)."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV failed to encode png")
    return data.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """png bytes -> ``(H, W, 3)`` uint8 RGB."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode png bytes")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
