"""Taking the streaming models (DiT, audio encoder, VAE) out of stage checkpoints.

A stage checkpoint keeps its modules under prefixes: the VAE stage holds ``vae.*`` and its EMA copy
``ema.module.*``; a teacher / student stage holds ``dit.*``, ``audio.*`` and EMA copies. Which prefixes
to try, in order, is data (``ModulePrefixes``: ``stored_models.MODULE_PREFIXES``, or the ``weights.*`` keys of
``conf/generate.yaml``), so a
stage that names things differently needs a config line, not code. A module loads strictly: every
parameter present with its shape, no key under its prefix left over; otherwise the error lists them.

Pure functions over a state dict already read (the CLI reads files with
``rest_lightning.checkpoint.load_user_state``, weights only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from rest_lightning.checkpoint import CheckpointMismatchError as WeightsError  # noqa: F401  (the one loader's error)


@dataclass(frozen=True)
class ModulePrefixes:
    """Key prefixes tried in order for each streaming module; the first one present in a checkpoint wins
    (put the EMA copy first to generate with EMA weights). The stages' own are
    ``stored_models.MODULE_PREFIXES``, spelled there once; the ``weights.*`` keys override them.

    Fields:
        dit, audio: in a teacher / student checkpoint.
        vae: in a VAE stage checkpoint (or a teacher / student checkpoint that carries the VAE).
    """

    dit: tuple[str, ...]
    audio: tuple[str, ...]
    vae: tuple[str, ...]


def find_prefix(
    state: Mapping[str, Tensor], prefixes: Sequence[str], module: nn.Module, complete_only: bool = False
) -> str | None:
    """The first of ``prefixes`` under which ``state`` holds all of ``module``'s state names; failing
    that (unless ``complete_only``), the first under which it holds any key (so that ``load_module``
    can say what does not fit); else ``None``."""
    names = set(module.state_dict())
    for prefix in prefixes:
        if names and all(prefix + name in state for name in names):
            return prefix
    if complete_only:
        return None
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in state):
            return prefix
    return None


def load_module(module: nn.Module, state: Mapping[str, Tensor], prefix: str, source: str) -> None:
    """Load ``state``'s keys under ``prefix`` into ``module`` strictly (keys and shapes), through
    ``checkpoint.load_weights_into``: one loader, one error format (``WeightsError`` is its error)."""
    from rest_lightning.checkpoint import load_weights_into

    sub = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    load_weights_into(module, sub, strict=True, source=f"{source} (the weights under {prefix!r})",
                      hint="Is the model config (model/dit, model/vae, model/audio or size=) the one it was trained with?")
