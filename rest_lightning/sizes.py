"""``size=NAME`` of ``rest-generate`` / ``rest-bench`` / ``rest-eval``: the model configs and resolution each
preset stands for. Plain Python (no torch), so the commands' ``--help`` stays fast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from rest_lightning.config import ConfigError


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
