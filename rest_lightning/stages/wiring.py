"""The foundation's wiring stage: the smallest real LightningModule that exercises run directories,
checkpoints, resume, EMA and init_from. A two-layer 3D conv autoencoder with an L1 loss.

To be deleted when the VAE stage lands (issue 4); nothing else depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rest_lightning.stages.base import RestStage
from rest_lightning.stages.ema import EMA


@dataclass
class WiringConfig:
    channels: int = 8
    ema_decay: float | None = 0.9
    lr: float = 1e-2
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"stage.config.channels={self.channels} must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"stage.config.lr={self.lr} must be > 0")


class WiringStage(RestStage):
    stage_name = "wiring"

    def __init__(self, config: WiringConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.net = nn.Sequential(nn.Conv3d(3, c, 3, padding=1), nn.SiLU(), nn.Conv3d(c, 3, 3, padding=1))
        self.ema = EMA(self.net, config.ema_decay) if config.ema_decay is not None else None

    def identity_config(self) -> dict[str, Any]:
        return {"channels": self.config.channels, "ema": self.config.ema_decay is not None}

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, T, H, W) in [-1, 1] -> reconstruction of the same shape."""
        return self.net(video)

    def training_step(self, video: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = (self(video) - video).abs().mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net)

    def validation_step(self, video: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", (self(video) - video).abs().mean(), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        total = max(1, self.trainer.max_steps) if self.trainer is not None else 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
