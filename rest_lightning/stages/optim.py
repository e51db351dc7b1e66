"""One AdamW with linear warm-up then cosine decay: the optimizer of the diffusion stages (teacher, student).

A single optimizer, so every strategy accepts the stage (Lightning's DeepSpeed takes exactly one).
Gradient clipping is the Trainer's (``trainer.gradient_clip_val``): these stages optimize automatically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DiffusionOptimConfig:
    """``stage.optim``: AdamW, warm-up/cosine learning rate, EMA."""

    lr: float = 1e-4  # design choice (LTX-Video-Trainer full fine-tuning learning rate)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults (Loshchilov & Hutter)
    weight_decay: float = 0.01  # AdamW default (torch)
    eps: float = 1e-8  # AdamW default
    warmup_steps: int = 1000  # design choice: linear warm-up from 0
    decay_steps: int | None = None  # cosine length after warm-up; None = trainer.max_steps - warmup_steps
    min_lr_ratio: float = 0.1  # design choice: the cosine ends at lr * min_lr_ratio
    ema_decay: float | None = 0.9999  # design choice (DiT / LTX-Video-Trainer EMA range); None disables it

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.lr <= 0:
            raise ValueError(f"stage.optim.lr={self.lr} must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"stage.optim.warmup_steps={self.warmup_steps} must be >= 0")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(f"stage.optim.decay_steps={self.decay_steps} must be >= 1 or null")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"stage.optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"stage.optim.ema_decay={self.ema_decay} must be in [0, 1) or null")


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor at optimizer step ``step``: ``(step + 1) / warmup`` during warm-up, then a
    half cosine from 1 to ``min_lr_ratio`` over ``decay_steps``, then ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, decay_steps: int | None, min_lr_ratio: float, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``warmup_cosine`` as a per-step scheduler; ``decay_steps=None`` spans ``max_steps - warmup_steps``."""
    decay = decay_steps if decay_steps is not None else max(1, max_steps - warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, decay, min_lr_ratio)
    )


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: DiffusionOptimConfig, max_steps: int
) -> dict[str, Any]:
    """``configure_optimizers``' return value: AdamW over the trainable ``params`` and the per-step
    warm-up/cosine schedule (``max_steps`` sets the cosine length when ``cfg.decay_steps`` is null)."""
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scheduler = warmup_cosine_scheduler(optimizer, cfg.warmup_steps, cfg.decay_steps, cfg.min_lr_ratio, max_steps)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }
