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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError, check_int
from rest_lightning.stored_models import (
    StoredDenoiser,
    StoredModelError,
    build_vae,
    denoiser_from_state,
    has_stored_config,
    stream_config,
    vae_from_state,
)

log = logging.getLogger(__name__)

SUMMARY = (
    "Stream a talking-head video: rest-generate ckpt=STUDENT.ckpt vae_ckpt=VAE.ckpt ref=face.png "
    "audio=speech.wav out=out.mp4. audio=- reads raw PCM s16le from stdin (stdin.sample_rate, stdin.channels) "
    "and writes frames as they come. Without ckpt= a freshly initialised model of size=tiny|small|rest runs "
    "(noise, for exercising the engine). Sizes: "
)


@dataclass(frozen=True)
class SizePreset:
    """The model configs and default resolution ``size=NAME`` stands for."""

    dit: str
    vae: str
    audio: str
    resolution: int


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset("dit_tiny", "vae_tiny", "log_mel_tiny", 64),  # CPU tests and demo
    "small": SizePreset("dit_small", "vae_rest", "log_mel", 512),  # one GPU (DESIGN §3 small)
    "rest": SizePreset("dit_rest", "vae_rest", "log_mel", 512),  # the paper's scale (DESIGN §3)
}
SIZE_GROUPS = {"model/dit": "dit", "model/vae": "vae", "model/audio": "audio"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MS_PER_S = 1000


def sizes_help() -> str:
    return "; ".join(f"{name} = {p.dit} + {p.vae} + {p.audio} at {p.resolution}px" for name, p in SIZES.items())


def with_size_overrides(args: Sequence[str]) -> list[str]:
    """Expand ``size=NAME`` into the ``model/*`` group overrides it stands for (explicit ones win)."""
    args = list(args)
    sizes = [a.split("=", 1)[1] for a in args if a.startswith("size=")]
    name = sizes[-1] if sizes else "tiny"
    if name not in SIZES:
        return args  # refused with the allowed values after compose (check_size)
    given = {a.split("=", 1)[0] for a in args if "=" in a}
    preset = SIZES[name]
    extra = [f"{group}={getattr(preset, attr)}" for group, attr in SIZE_GROUPS.items() if group not in given]
    return args + extra


def check_size(cfg: DictConfig) -> SizePreset:
    if cfg.size not in SIZES:
        raise ConfigError(f"size={cfg.size!r} is not one of {', '.join(SIZES)}")
    return SIZES[cfg.size]


# --- devices and models ----------------------------------------------------------------------------------


def pick_device_dtype(cfg: DictConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except RuntimeError as err:
            raise ConfigError(f"device={cfg.device!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={cfg.device!r} but CUDA is not available here; use device=cpu")
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif cfg.dtype in DTYPES:
        dtype = DTYPES[cfg.dtype]
    else:
        raise ConfigError(f"dtype={cfg.dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return device, dtype


def _read_checkpoint(path: str, key: str, stages: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict]:
    from rest_lightning.checkpoint import CheckpointMismatchError, load_user_state

    try:
        state, meta = load_user_state(path, key=key)
    except CheckpointMismatchError as err:
        raise ConfigError(str(err)) from None
    except FileNotFoundError:
        raise ConfigError(f"{key}={path!r} does not exist") from None
    stage = meta.get("stage")
    if stage is not None and stage not in stages:
        hint = " (a VAE checkpoint goes in vae_ckpt=)" if stage == "vae" and key == "ckpt" else ""
        raise ConfigError(
            f"{key}={path} is a '{stage}' checkpoint; rest-generate needs {' or '.join(repr(s) for s in stages)} "
            f"there{hint}"
        )
    return state, meta


@dataclass
class StreamingModels:
    """The modules to stream with; ``stored`` is what ``ckpt=`` stored about them (it decides the cache and
    the default resolution), None for a plain state dict or a fresh initialisation."""

    dit: torch.nn.Module
    vae: torch.nn.Module
    audio: torch.nn.Module
    stored: StoredDenoiser | None = None


def build_models(cfg: DictConfig) -> StreamingModels:
    """The DiT, VAE and audio encoder to stream with.

    A teacher / student checkpoint written by ``rest-train`` (or ``rest-ckpt export``) stores its
    architectures: ``ckpt=`` then decides the DiT and audio encoder, and the VAE's architecture unless
    ``vae_ckpt=`` is a VAE checkpoint with its own (``size=`` and ``model/*`` do not apply to them). A plain
    state dict, or no ``ckpt=``, takes the ``model/*`` groups."""
    state, meta = _read_checkpoint(cfg.ckpt, "ckpt", tuple(cfg.ckpt_stages)) if cfg.ckpt else (None, {})
    if has_stored_config(meta):
        return _stored_models(cfg, state, meta)
    return _models_from_groups(cfg, state)


def _load_vae_weights(cfg: DictConfig, vae: torch.nn.Module, ckpt_state: dict | None, vae_state: dict | None) -> bool:
    """VAE weights from ``vae_ckpt=`` (it must hold them), else from a complete set inside ``ckpt=``; False
    when neither gives any (the VAE stays freshly initialised)."""
    from rest_lightning.streaming.weights import find_prefix, load_module

    prefixes = tuple(cfg.weights.vae)
    if vae_state is not None:
        prefix = find_prefix(vae_state, prefixes, vae)
        if prefix is None:
            raise ConfigError(f"vae_ckpt={cfg.vae_ckpt} holds no VAE weights under {list(prefixes)}")
        load_module(vae, vae_state, prefix, f"vae_ckpt={cfg.vae_ckpt}")
        return True
    if ckpt_state is not None:
        # A teacher / student checkpoint may carry the VAE too (complete sets only: its DiT keys also start
        # with "ema.module.").
        prefix = find_prefix(ckpt_state, prefixes, vae, complete_only=True)
        if prefix is not None:
            load_module(vae, ckpt_state, prefix, f"ckpt={cfg.ckpt}")
            return True
    return False


def _stored_models(cfg: DictConfig, state: dict[str, torch.Tensor], meta: dict) -> StreamingModels:
    """``ckpt=`` rebuilt from its stored config; the VAE from ``vae_ckpt=``, else from ``ckpt=`` itself."""
    from rest_lightning.models.vae import CausalVideoVAE
    from rest_lightning.streaming.weights import WeightsError

    try:
        stored = denoiser_from_state(state, meta, f"ckpt={cfg.ckpt}")
        vae_state, vae_meta = _read_checkpoint(cfg.vae_ckpt, "vae_ckpt", ("vae",)) if cfg.vae_ckpt else (None, {})
        if (vae_meta.get("config") or {}).get("vae") is not None:
            vae = vae_from_state(vae_state, vae_meta, f"vae_ckpt={cfg.vae_ckpt}")
        else:  # a plain VAE state dict, or none: the architecture ckpt= trained on
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.stream.seed)
                vae = (build_vae(stored.vae_config, f"ckpt={cfg.ckpt}") if stored.vae_config
                       else CausalVideoVAE(instantiate(cfg.model.vae, _convert_="object")))
            if not _load_vae_weights(cfg, vae, state, vae_state):
                _warn_random("VAE (no vae_ckpt=, and ckpt= holds none)")
    except (StoredModelError, WeightsError, ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    log.info("models from %s's stored config (%s, trained at %s px); size= and model/* do not apply to them",
             cfg.ckpt, stored.stage, stored.resolution or "an unrecorded resolution")
    return StreamingModels(stored.dit, vae.eval(), stored.audio, stored)


def _warn_random(parts: str) -> None:
    log.warning(
        "\n" + "!" * 78 + "\n!! FRESHLY INITIALISED %s: the output is noise, not a face.\n"
        "!! This exercises and benchmarks the engine only; pass ckpt=... vae_ckpt=... to generate.\n"
        + "!" * 78,
        parts,
    )


def _models_from_groups(cfg: DictConfig, state: dict[str, torch.Tensor] | None) -> StreamingModels:
    """The DiT, VAE and audio encoder of ``cfg.model``, with weights from ``ckpt=`` (already read: ``state``,
    None without one) and ``vae_ckpt=``."""
    from rest_lightning.models.audio import AudioEncoder
    from rest_lightning.models.dit import DiT
    from rest_lightning.models.vae import CausalVideoVAE
    from rest_lightning.streaming.weights import ModulePrefixes, WeightsError, find_prefix, load_module

    try:
        # A fresh initialisation is seeded (stream.seed): the same command gives the same video.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.stream.seed)
            dit = DiT(instantiate(cfg.model.dit, _convert_="object"))
            vae = CausalVideoVAE(instantiate(cfg.model.vae, _convert_="object"))
            audio = AudioEncoder(instantiate(cfg.model.audio, _convert_="object"))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model config: {err}") from None
    prefixes = ModulePrefixes(
        dit=tuple(cfg.weights.dit), audio=tuple(cfg.weights.audio), vae=tuple(cfg.weights.vae)
    )
    random_parts = []
    try:
        if state is not None:
            for name, module, options in (("dit", dit, prefixes.dit), ("audio", audio, prefixes.audio)):
                prefix = find_prefix(state, options, module)
                if prefix is None:
                    raise ConfigError(
                        f"ckpt={cfg.ckpt} holds no {name} weights under {list(options)} (weights.{name} sets "
                        "the prefixes)"
                    )
                load_module(module, state, prefix, f"ckpt={cfg.ckpt}")
        else:
            random_parts.append("DiT and audio encoder (no ckpt=)")
        vae_state = _read_checkpoint(cfg.vae_ckpt, "vae_ckpt", ("vae",))[0] if cfg.vae_ckpt else None
        if not _load_vae_weights(cfg, vae, state, vae_state):
            random_parts.append("VAE (no vae_ckpt=)")
    except WeightsError as err:
        raise ConfigError(str(err)) from None
    if random_parts:
        _warn_random(" and ".join(random_parts))
    return StreamingModels(dit, vae, audio)


def build_generator(cfg: DictConfig, models: StreamingModels):
    """The engine with ``cfg.stream``: its null keys come from the checkpoint (``stored_models.stream_config``:
    an explicit value that contradicts a student's trained cache is refused), or StreamConfig's defaults."""
    from rest_lightning.streaming import StreamConfig, StreamingGenerator

    device, dtype = pick_device_dtype(cfg)
    explicit = {k: v for k, v in OmegaConf.to_container(cfg.stream).items() if v is not None}
    try:
        config = stream_config(models.stored, **explicit) if models.stored else StreamConfig(**explicit)
        return StreamingGenerator(models.dit, models.vae, models.audio, config, device, dtype)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"stream: {err}") from None


def resolution_of(cfg: DictConfig, generator, models: StreamingModels | None = None) -> int:
    """``resolution=``, else the resolution ``ckpt=`` trained at, else the size's default."""
    trained = models.stored.resolution if models is not None and models.stored is not None else None
    if cfg.resolution is not None:
        side = cfg.resolution
    elif trained is not None:
        side = trained
    else:
        side = check_size(cfg).resolution
    ratio = generator.spatial_compression
    if not isinstance(side, int) or side < ratio or side % ratio or side % 2:
        raise ConfigError(
            f"resolution={side!r} must be a positive multiple of the VAE's spatial compression {ratio} "
            f"(model.vae), e.g. {ratio * max(1, 64 // ratio)}"
        )
    return side


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
