"""Deterministic random video clips held in memory: the foundation's wiring test data.

Each clip is a smooth pattern drawn from a generator seeded by (seed, index), so any rank, worker or
relaunch reads the same clip for the same index. Superseded by the synthetic talking-head corpus and
``VideoDataModule`` (issue 3); kept only while the wiring stage exists.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class RandomClips(Dataset):
    """``num_clips`` clips, each ``(3, frames, size, size)`` float32 in [-1, 1]."""

    def __init__(self, num_clips: int, frames: int, size: int, seed: int) -> None:
        if min(num_clips, frames, size) < 1:
            raise ValueError(f"num_clips={num_clips}, frames={frames}, size={size} must all be >= 1")
        self.num_clips, self.frames, self.size, self.seed = num_clips, frames, size, seed

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        coarse = torch.rand(3, self.frames, 2, 2, generator=g) * 2 - 1
        # Upsample a 2x2 pattern to the full size: smooth clips a tiny autoencoder can fit.
        return torch.nn.functional.interpolate(
            coarse[None], size=(self.frames, self.size, self.size), mode="trilinear", align_corners=True
        )[0]


class RandomClipDataModule(L.LightningDataModule):
    def __init__(self, num_clips: int = 16, frames: int = 9, size: int = 16, batch_size: int = 4,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set = RandomClips(num_clips, frames, size, seed)
        self.val_set = RandomClips(max(1, num_clips // 4), frames, size, seed + 1)
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers)
