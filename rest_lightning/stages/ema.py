"""Exponential moving average of a module's parameters, kept as a frozen copy.

The copy is a submodule of the stage, so it is saved and restored with the stage's state dict (resume
keeps it) and exported by ``rest-ckpt export``. Its parameters have ``requires_grad=False``: no optimizer
sees them and DDP does not all-reduce them (each rank updates it from identical, already synced weights).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in [0, 1)")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def train(self, mode: bool = True) -> EMA:
        # The average is never in training mode (no dropout, frozen norms), whatever its parent does.
        return super().train(False)
