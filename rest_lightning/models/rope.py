"""3D rotary positions of the DiT (LTX-Video layout), applied to queries and keys at read time.

A token's coordinate is ``(t, h, w)`` in latent units: ``t`` its time position (in latent frames,
*within the attention window*, see ``models/dit.py``), ``h, w`` its row and column in the latent grid.
LTX-Video normalises each axis to a fraction of a base extent (``t * time_scale / base_frames`` with
``time_scale`` = seconds per latent frame, ``h * space_scale / base_height`` with ``space_scale`` =
pixels per latent) and rotates pairs of channels of the *whole* width (before the head split) by
``freq * pi/2 * (2 * fraction - 1)``, with ``width // 6`` log-spaced frequencies per axis interleaved
``(t, h, w, t, h, w, ...)``; ``width % 6`` leading channels are left unrotated. We reproduce that
layout exactly so LTX-Video weights keep their meaning.

Because the rotation angle is affine in the coordinate, the score ``<R(a) q, R(b) k>`` depends only on
``a - b`` on every axis (tested): which absolute origin a window uses does not matter, only distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NUM_AXES = 3  # (t, h, w)
PAIR = 2  # a rotation acts on a pair of channels


@dataclass(frozen=True)
class Rotary:
    """cos/sin tables for a set of token coordinates; ``apply`` rotates a tensor whose last two dims
    are ``(N, D)`` (leading dims broadcast).

    Fields:
        cos, sin: ``(..., N, D)`` float32.
    """

    cos: Tensor
    sin: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """Rotate ``x`` ``(..., N, D)``; computed in float32 and cast back (bf16 angles drift)."""
        x_even, x_odd = x.unflatten(-1, (-1, PAIR)).unbind(-1)
        rotated = torch.stack([-x_odd, x_even], dim=-1).flatten(-2)
        return (x.float() * self.cos + rotated.float() * self.sin).to(x.dtype)

    @property
    def num_tokens(self) -> int:
        return self.cos.shape[-2]


class RotaryEmbedding(nn.Module):
    """cos/sin tables from ``(t, h, w)`` coordinates, LTX-Video's ``LTXVideoRotaryPosEmbed`` layout.

    Args:
        width: channels rotated (the model width D; heads are split after rotation, as in LTX-Video).
        theta: largest frequency ratio.
        base_frames, base_height, base_width: extents the scaled coordinates are divided by.
        time_scale: multiplies ``t`` (seconds per latent frame in LTX-Video's pipeline).
        space_scale: multiplies ``h`` and ``w`` (pixels per latent in LTX-Video's pipeline).
    """

    def __init__(
        self,
        width: int,
        theta: float,
        base_frames: float,
        base_height: float,
        base_width: float,
        time_scale: float,
        space_scale: float,
    ) -> None:
        super().__init__()
        self.width = width
        self.theta = theta
        self.base_frames = base_frames
        self.base_height = base_height
        self.base_width = base_width
        self.time_scale = time_scale
        self.space_scale = space_scale

    def forward(self, coords: Tensor) -> Rotary:
        """Tables for coordinates ``(..., N, 3)`` (float, latent units) -> ``Rotary`` of ``(..., N, D)``."""
        coords = coords.float()
        # Same operation order as diffusers (coordinate * scale / base), so parity is to rounding.
        fractions = torch.stack(
            [
                coords[..., 0] * self.time_scale / self.base_frames,
                coords[..., 1] * self.space_scale / self.base_height,
                coords[..., 2] * self.space_scale / self.base_width,
            ],
            dim=-1,
        )
        num_freqs = self.width // (NUM_AXES * PAIR)
        freqs = self.theta ** torch.linspace(
            math.log(1.0, self.theta),
            math.log(self.theta, self.theta),
            num_freqs,
            device=coords.device,
            dtype=torch.float32,
        )
        freqs = freqs * math.pi / 2.0
        angles = freqs * (fractions.unsqueeze(-1) * 2 - 1)  # (..., N, 3, num_freqs)
        angles = angles.transpose(-1, -2).flatten(-2)  # (..., N, num_freqs * 3): axes interleaved
        cos = angles.cos().repeat_interleave(PAIR, dim=-1)
        sin = angles.sin().repeat_interleave(PAIR, dim=-1)
        unrotated = self.width % (NUM_AXES * PAIR)
        if unrotated:
            cos = torch.cat([torch.ones_like(cos[..., :unrotated]), cos], dim=-1)
            sin = torch.cat([torch.zeros_like(sin[..., :unrotated]), sin], dim=-1)
        return Rotary(cos=cos, sin=sin)


def grid_coords(time_positions: Tensor, height: int, width: int) -> Tensor:
    """Coordinates of every token of frames at ``time_positions`` ``(..., F)`` on an ``height x width``
    latent grid -> ``(..., F * height * width, 3)`` float32, token order (frame, row, column)."""
    device = time_positions.device
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    t = time_positions.float()[..., :, None, None].expand(*time_positions.shape, height, width)
    h = rows[:, None].expand(height, width).expand_as(t)
    w = cols[None, :].expand(height, width).expand_as(t)
    coords = torch.stack([t, h, w], dim=-1)  # (..., F, H, W, 3)
    return coords.flatten(-4, -2)
