"""The frozen teacher of stage 3 (DESIGN §4.3): a trained stage-2 ``AudioVideoDenoiser`` used as a fixed
function, like ``FrozenVAE``.

- Loaded weights-only from ``stage.teacher_checkpoint`` (a teacher-stage checkpoint or a ``rest-ckpt
  export`` file), its EMA weights (``ema.module.*``) preferred, else ``model.*``, else a bare
  ``AudioVideoDenoiser`` state dict (``dit.*`` / ``audio_encoder.*``), strictly.
- Not a submodule of the student stage: never trained, never in the student's checkpoints (so it is
  loaded again on resume, from the same path), never wrapped, sharded or partitioned by DDP / FSDP /
  DeepSpeed. Its parameters have ``requires_grad=False``, it stays in eval mode, and every call runs
  under ``torch.no_grad``: no gradient can reach it.
- ``dtype=bfloat16`` halves its memory on a GPU (on a CPU it runs in float32); ``offload=True`` keeps it in
  host memory and moves it to the GPU only for the calls of one training step (``on_device``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rest_lightning.conditioning import guided_denoiser
from rest_lightning.diffusion.guidance import GuidanceScales
from rest_lightning.diffusion.samplers import Denoiser
from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.audio import AudioConfig, AudioEncoder
from rest_lightning.models.denoiser import AudioVideoDenoiser
from rest_lightning.models.dit import DiTConfig
from rest_lightning.models.pretrained import build_dit
from rest_lightning.stored_models import DENOISER_PREFIXES, load_frozen_weights

log = logging.getLogger(__name__)

TEACHER_STAGE = "teacher"
TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class FrozenTeacherConfig:
    """``stage.teacher``: how the frozen teacher runs and guides."""

    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # on CUDA only; CPU runs float32
    offload: bool = False  # keep it in host memory between steps (design choice for one 80 GB GPU)
    guidance: GuidanceScales = field(default_factory=GuidanceScales)  # the guided target the student distils

    def __post_init__(self) -> None:
        if self.dtype not in TEACHER_DTYPES:
            raise ValueError(f"stage.teacher.dtype={self.dtype!r} is not one of {', '.join(TEACHER_DTYPES)}")


class FrozenTeacher:
    """The teacher as a fixed function (module doc)."""

    def __init__(self, model: AudioVideoDenoiser, config: FrozenTeacherConfig) -> None:
        self.model = model.requires_grad_(False).eval()
        self.config = config
        self.pattern = AttentionPattern.bidirectional()

    @classmethod
    def load(
        cls,
        dit: DiTConfig,
        audio: AudioConfig,
        checkpoint: str | Path | None,
        config: FrozenTeacherConfig,
    ) -> FrozenTeacher:
        """Build the teacher's architecture (the student's ``dit`` / ``audio`` configs, less any pretrained
        path) and load ``checkpoint`` strictly; ``None`` leaves it random (the caller decides whether that
        is allowed)."""
        from dataclasses import replace

        model = AudioVideoDenoiser(build_dit(replace(dit, pretrained=None)), AudioEncoder(audio))
        if checkpoint is None:
            rank_zero_warn(
                "stage.teacher_checkpoint is null: the frozen teacher is RANDOMLY INITIALISED, so the student "
                "distils noise. Fine for tests only; set stage.teacher_checkpoint=PATH (or init_from=PATH, which "
                "it defaults to)."
            )
            return cls(model, config)
        load_frozen_weights(model, checkpoint, key="stage.teacher_checkpoint", stage=TEACHER_STAGE,
                            prefixes=DENOISER_PREFIXES, experiments="teacher or tiny_teacher")
        return cls(model, config)

    def dtype_on(self, device: torch.device) -> torch.dtype:
        return TEACHER_DTYPES[self.config.dtype] if device.type == "cuda" else torch.float32

    @contextlib.contextmanager
    def on_device(self, device: torch.device) -> Iterator[FrozenTeacher]:
        """The teacher on ``device`` in its dtype for the body; with ``offload`` it returns to the host after."""
        self.model.to(device=device, dtype=self.dtype_on(device))
        try:
            yield self
        finally:
            if self.config.offload and device.type != "cpu":
                self.model.to("cpu")

    @torch.no_grad()
    def audio_tokens(self, waveform: Tensor, num_frames: int) -> Tensor:
        """The teacher's own audio tokens ``(B, F, A, audio_dim)`` for a ``(B, S)`` waveform (its audio
        encoder was trained with it and differs from the student's once the student trains)."""
        return self.model.audio_encoder(waveform, num_frames)

    def denoiser(self, audio: Tensor, ref: Tensor | None) -> Denoiser:
        """``(x_t, t) -> v`` float32: the teacher's guided velocity (``stage.teacher.guidance``) over a
        bidirectional window, without gradients. ``audio (B, Fw, A, audio_dim)``, ``ref (B, C, 1, h, w)``."""
        dtype = next(self.model.parameters()).dtype
        guided = guided_denoiser(
            self.model, audio.to(dtype), None if ref is None else ref.to(dtype), self.pattern, self.config.guidance
        )

        @torch.no_grad()
        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            return guided(x_t.to(dtype), t).float()

        return denoise
