"""``rest-generate``: stream a talking-head video from a checkpoint (``conf/generate.yaml``).

Composes the config, builds the models (from ``ckpt=`` / ``vae_ckpt=``, or freshly initialised with a
loud warning), prepares the reference (face check, square crop, resize), and runs
``StreamingGenerator`` over the audio, writing each chunk's frames as soon as they come. The output is
written to a temporary file and renamed when complete.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError, check_int
from rest_lightning.sizes import SIZE_GROUPS, check_size, sizes_help, with_size_overrides

log = logging.getLogger(__name__)

SUMMARY = (
    "Stream a talking-head video: rest-generate ckpt=STUDENT.ckpt vae_ckpt=VAE.ckpt ref=face.png "
    "audio=speech.wav out=out.mp4. audio=- reads raw PCM s16le from stdin (stdin.sample_rate, stdin.channels) "
    "and writes frames as they come. Without ckpt= a freshly initialised model of size=tiny|small|rest runs "
    "(noise, for exercising the engine). Sizes: "
)
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


class _Tee:
    """Passes audio pieces to the generator and, on the way, to the mp4's audio track."""

    def __init__(self, pieces: Iterator[np.ndarray], writer) -> None:
        self.pieces, self.writer = pieces, writer

    def __iter__(self) -> Iterator[np.ndarray]:
        for piece in self.pieces:
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
    try:
        ref_image = prepare_reference(cfg.ref, side, cfg.ref_detector, cfg.ref_margin)
        ref = image_to_tensor(ref_image)
        with Mp4StreamWriter(out, audio_config.fps, side, side, audio_config.sample_rate, H264Config(crf=cfg.crf)) as writer:
            source = _Tee(audio_pieces(cfg, audio_config.sample_rate), writer)
            for chunk in generator.generate(ref, source):
                writer.write_frames(frames_to_uint8(chunk.frames)[0])
                log.debug("chunk %d: frames %d..%d", chunk.index, chunk.first_frame, writer.frames_written - 1)
    except (MediaError, ValueError) as err:
        raise ConfigError(str(err)) from None
    print(
        f"rest-generate: wrote {out} ({writer.frames_written} frames at {audio_config.fps} fps, "
        f"{writer.samples_written / audio_config.sample_rate:.2f} s of audio)"
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return run_cli(
        "rest-generate",
        "generate",
        SUMMARY + sizes_help() + ".",
        generate,
        with_size_overrides(args),
        groups=tuple(SIZE_GROUPS),
    )


if __name__ == "__main__":
    sys.exit(main())
