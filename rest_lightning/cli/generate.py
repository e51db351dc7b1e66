"""``rest-generate``: stream a talking-head video from a checkpoint (``conf/generate.yaml``).

Composes the config, builds the models (from ``ckpt=`` / ``vae_ckpt=``, or freshly initialised with a
loud warning), prepares the reference (face check, square crop, resize), and runs
``StreamingGenerator`` over the audio, writing each chunk's frames as soon as they come.

The output grows as fragmented MP4 at ``out.partial.mp4`` (a player can open it meanwhile) and is renamed
onto ``out`` when the input ends, or when SIGINT (Ctrl-C) or SIGTERM stops the stream: what was generated
so far is kept, a line on stderr says how much, and the exit status is 128 + the signal (130, 143). A
``kill -9`` leaves ``out.partial.mp4`` playable up to its last fragment (about a second). An error keeps
what was made at ``out.partial.mp4`` and says so; ``out`` is only ever a finished file.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError, check_int
from rest_lightning.sizes import SIZE_GROUPS, check_size, sizes_help, with_size_overrides

log = logging.getLogger(__name__)

SUMMARY = (
    "Stream a talking-head video: rest-generate ckpt=STUDENT.ckpt vae_ckpt=VAE.ckpt ref=face.png "
    "audio=speech.wav out=out.mp4. audio=- reads raw PCM s16le from stdin (stdin.sample_rate, "
    "stdin.channels) and writes frames as they come. The video grows at out.partial.mp4 (a player can open "
    "it meanwhile) and becomes out.mp4 when the input ends, or when Ctrl-C / SIGTERM stops it: what was made "
    "is kept (exit 130 / 143). Without ckpt= a freshly initialised model of size=tiny|small|rest runs "
    "(noise, for exercising the engine). Sizes: ")
MS_PER_S = 1000


# --- inputs ---------------------------------------------------------------------------------------------


def prepare_reference(path: str, side: int, detector: str, margin: float) -> np.ndarray:
    """Read the reference image, find the face (``detector``), crop a square around it and resize:
    ``(side, side, 3)`` uint8 RGB."""
    from data_prep.crop import crop_square, integer_box
    from data_prep.detect import CenterFaceDetector, HaarFaceDetector
    from rest_lightning.streaming.media import read_image

    image = read_image(path)
    if detector == "none":
        box = np.array([image.shape[1] / 2, image.shape[0] / 2, min(image.shape[:2])])
    elif detector in ("haar", "center"):
        finder = HaarFaceDetector() if detector == "haar" else CenterFaceDetector(margin)
        faces = finder.detect(image)
        if not faces:
            raise ConfigError(
                f"ref={path}: no face found (ref_detector={detector}). Use a frontal face photo, or "
                "ref_detector=center for an image that is already a face crop"
            )
        face = max(faces, key=lambda f: f.area)
        box = np.array([face.x + face.w / 2, face.y + face.h / 2, max(face.w, face.h) * (1 + 2 * margin)])
    else:
        raise ConfigError(f"ref_detector={detector!r} is not one of haar, center, none")
    return crop_square(image, integer_box(box), side)


def audio_pieces(cfg: DictConfig, sample_rate: int) -> Iterator[np.ndarray]:
    """The audio as mono float32 pieces at ``sample_rate``: from a file, or raw PCM on stdin."""
    from rest_lightning.streaming.media import iter_audio_file, iter_pcm_stream

    chunk = max(1, int(round(cfg.audio_chunk_ms * sample_rate / MS_PER_S)))
    if cfg.audio == "-":
        return iter_pcm_stream(sys.stdin.buffer, cfg.stdin.sample_rate, cfg.stdin.channels, sample_rate, chunk)
    return iter_audio_file(cfg.audio, sample_rate, chunk)


# --- stopping ---------------------------------------------------------------------------------------------


class StopRequested(BaseException):
    """Raised where the main thread is when SIGINT or SIGTERM arrives: stop generating, keep the output.
    A ``BaseException`` (like ``KeyboardInterrupt``): no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM as "stop and keep what was made", while installed (a ``with`` block).

    A signal is recorded; it raises ``StopRequested`` at once only inside ``interruptible()`` (a blocking read
    of stdin, the model's compute) and outside ``deferred()`` (muxing: an exception between two packets
    would leave a hole in the video), otherwise when the deferred block ends. Later signals are recorded
    only: finishing the file takes milliseconds. Handlers are installed only in the main thread (the only
    one Python delivers signals to).
    """

    def __init__(self, signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signums = signums
        self.received: int | None = None  # the first signal
        self._holds = 1  # > 0: record only
        self._raised = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.signums}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
        self._raise_if_due()

    def _raise_if_due(self) -> None:
        if self.received is not None and self._holds == 0 and not self._raised:
            self._raised = True
            raise StopRequested(self.received)

    @contextmanager
    def _holding(self, delta: int) -> Iterator[None]:
        self._holds += delta
        try:
            self._raise_if_due()
            yield
        finally:
            self._holds -= delta
        self._raise_if_due()

    def interruptible(self) -> AbstractContextManager[None]:
        """A block a stop signal interrupts (raising ``StopRequested``), also one that came before it."""
        return self._holding(-1)

    def deferred(self) -> AbstractContextManager[None]:
        """A block a stop signal does not interrupt: ``StopRequested`` is raised when it ends."""
        return self._holding(+1)


class GenerationStopped(Exception):
    """The stream was stopped by a signal after the output was finished; ``main`` prints this one-line
    message and exits with ``exit_status`` (128 + the signal, as a shell reports a process it killed)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_status = 128 + signum


class _Tee:
    """Passes audio pieces to the generator and, on the way, to the mp4's audio track."""

    def __init__(self, pieces: Iterator[np.ndarray], writer, stops: StopSignals) -> None:
        self.pieces, self.writer, self.stops = pieces, writer, stops

    def __iter__(self) -> Iterator[np.ndarray]:
        for piece in self.pieces:
            with self.stops.deferred():
                self.writer.write_audio(piece)
            yield piece


# --- the command ------------------------------------------------------------------------------------------


def generate(cfg: DictConfig) -> Path:
    """What ``rest-generate`` runs; returns the written file."""
    from rest_lightning.data.codecs import H264Config
    from rest_lightning.generation import build_generator, build_models, resolution_of
    from rest_lightning.streaming.media import MediaError, Mp4StreamWriter, frames_to_uint8, image_to_tensor

    check_size(cfg)
    check_int(cfg, "crf")  # an untyped YAML key takes any string; H264Config checks the range
    for key in ("ref", "audio"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise ConfigError(f"{key}=... is required (rest-generate --help)")
    out = Path(cfg.out)
    if out.suffix.lower() != ".mp4":
        raise ConfigError(f"out={cfg.out!r}: rest-generate writes mp4 files; name it *.mp4")
    models = build_models(cfg)
    generator = build_generator(cfg, models)
    side = resolution_of(cfg, generator, models)
    if models.stored is not None and models.stored.resolution not in (None, side):
        log.warning("resolution=%d differs from the %d px %s trained at", side, models.stored.resolution, cfg.ckpt)
    audio_config = generator.audio_encoder.config
    fps = audio_config.fps
    writer: Mp4StreamWriter | None = None
    stops = StopSignals()
    try:
        ref_image = prepare_reference(cfg.ref, side, cfg.ref_detector, cfg.ref_margin)
        ref = image_to_tensor(ref_image)
        writer = Mp4StreamWriter(out, fps, side, side, audio_config.sample_rate, H264Config(crf=cfg.crf))
        # Signals first: the writer finishes (in its __exit__) while a signal is only recorded.
        with stops, writer:
            source = _Tee(audio_pieces(cfg, audio_config.sample_rate), writer, stops)
            try:
                with stops.interruptible():
                    for chunk in generator.generate(ref, source):
                        with stops.deferred():
                            writer.write_frames(frames_to_uint8(chunk.frames)[0])
                        last = writer.frames_written - 1
                        log.debug("chunk %d: frames %d..%d", chunk.index, chunk.first_frame, last)
            except StopRequested:
                if writer.frames_written == 0:
                    writer.keep_partial()  # nothing made: removes the file
    except (MediaError, ValueError) as err:
        kept = _kept_note(writer)
        raise ConfigError(f"{err}; {kept}" if kept else str(err)) from None
    except BaseException:
        kept = _kept_note(writer)
        if kept:
            log.error("generation failed; %s", kept)
        raise
    made = f"{writer.seconds_written:.2f} s ({writer.frames_written} frames at {fps} fps)"
    if stops.received is not None:
        name = signal.Signals(stops.received).name
        if writer.frames_written == 0:
            raise GenerationStopped(stops.received, f"stopped by {name} before any frame: nothing saved")
        raise GenerationStopped(stops.received, f"stopped by {name}; saved {made} in {out}")
    audio_s = writer.samples_written / audio_config.sample_rate
    print(f"rest-generate: wrote {out} ({made}, {audio_s:.2f} s of audio)")
    return out


def _kept_note(writer) -> str:
    """What an error leaves behind, for its message: the video made before it, if any ("" if none)."""
    if writer is None or writer.kept is None:
        return ""
    made = f"{writer.seconds_written:.2f} s ({writer.frames_written} frames)"
    return f"the {made} made before it are kept in {writer.kept}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return run_cli(
            "rest-generate",
            "generate",
            SUMMARY + sizes_help() + ".",
            generate,
            with_size_overrides(args),
            groups=tuple(SIZE_GROUPS),
        )
    except GenerationStopped as stopped:
        print(f"rest-generate: {stopped}", file=sys.stderr)
        return stopped.exit_status


if __name__ == "__main__":
    sys.exit(main())
