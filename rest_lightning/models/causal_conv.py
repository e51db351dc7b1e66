"""Causal 3-D convolution in time, and the per-conv state that makes it stream.

A video VAE is causal in time when output frame t depends only on input frames <= t. LTX-Video gets
this by padding the time axis on the left with copies of the first frame (never zeros, so a clip's
first frame is encoded exactly as a still image would be). Space is padded inside the conv.

Streaming (DESIGN §5): instead of padding, each conv keeps the input frames its next window still
needs (`CausalConvState.past`). Feeding a clip chunk by chunk through `forward(x, stream)` then gives
the same frames as one `forward(x)` over the whole clip, for any stride, because the state holds
exactly the frames from the start of the next temporal window onwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_TIME_DIM = 2  # (B, C, T, H, W)


@dataclass
class CausalConvState:
    """What one causal temporal conv remembers between streaming steps.

    `past` is None before the first step (the stream has not started: the first step pads with copies
    of its first frame, as the full-clip forward does); afterwards it holds the input frames, shaped
    (B, C_in, K, H, W), that the conv's next temporal window starts with (K may be 0).
    """

    past: torch.Tensor | None = None

    @property
    def started(self) -> bool:
        """Whether a step has run since the last reset."""
        return self.past is not None

    def reset(self) -> None:
        """Forget the past: the next step starts a new stream."""
        self.past = None

    def nbytes(self) -> int:
        """Bytes held by this state."""
        return 0 if self.past is None else self.past.numel() * self.past.element_size()


class VAEStreamState:
    """The temporal conv states of one encoder or decoder, so it can run chunk by chunk.

    Built by `CausalVideoVAE.new_encode_state()` / `new_decode_state()` for exactly the convs of that
    part. A conv asks for its own view with `state.of(conv)`; no layer does index arithmetic, and a
    state built for another model is refused.
    """

    def __init__(self, module: nn.Module) -> None:
        self._convs: dict[CausalConv3d, CausalConvState] = {
            conv: CausalConvState() for conv in module.modules() if isinstance(conv, CausalConv3d)
        }
        # Frames (video frames for the encoder, latent frames for the decoder) fed since the last reset.
        self.frames_in = 0

    def of(self, conv: CausalConv3d) -> CausalConvState:
        """The state of `conv`; raises if this stream state was built for a different model."""
        state = self._convs.get(conv)
        if state is None:
            raise ValueError(
                "this VAEStreamState was made for another encoder/decoder; build it from the model you "
                "step with (CausalVideoVAE.new_encode_state() / new_decode_state())"
            )
        return state

    @property
    def started(self) -> bool:
        """Whether any step has run since the last reset."""
        return self.frames_in > 0

    def reset(self) -> None:
        """Start a new stream: every conv forgets its past."""
        for state in self._convs.values():
            state.reset()
        self.frames_in = 0

    def nbytes(self) -> int:
        """Bytes held by all conv states (constant per step once the stream runs)."""
        return sum(state.nbytes() for state in self._convs.values())


class CausalConv3d(nn.Module):
    """3-D conv padded in time by repeating the edge frame; causal (left only) or centred.

    Args:
        in_channels, out_channels: widths.
        kernel_size: cube kernel side K (LTX-Video uses 3, and 1 for shortcuts).
        stride: (t, h, w) stride.
        causal: left-pad K-1 copies of the first frame (causal) or (K-1)/2 of the first and last
            frame on each side (LTX-Video's non-causal decoder). Only causal convs can stream.

    Submodule `conv` is a plain `nn.Conv3d` padded (0, K//2, K//2), as in diffusers'
    `LTXVideoCausalConv3d`, so the weight layout is the same.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: tuple[int, int, int] = (1, 1, 1),
        causal: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"CausalConv3d kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.time_stride = stride[0]
        self.causal = causal
        space_pad = kernel_size // 2
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(0, space_pad, space_pad)
        )

    def forward(self, x: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W').

        Without `stream`, `x` is a whole clip. With it, `x` is the next chunk of a stream and the
        result is the chunk of the output those frames complete.
        """
        if stream is None:
            return self.conv(self._pad_clip(x))
        if not self.causal:
            raise ValueError(
                "streaming needs causal temporal convs, but this conv is centred in time; set "
                "causal_decoder=true (model.vae.causal_decoder) or causal_encoder=true"
            )
        state = stream.of(self)
        past = state.past if state.started else self._first_frame_pad(x)
        x = torch.cat([past, x], dim=_TIME_DIM)
        frames = x.shape[_TIME_DIM]
        windows = (frames - self.kernel_size) // self.time_stride + 1 if frames >= self.kernel_size else 0
        # Keep every frame from the start of the first window not yet computed.
        state.past = x[:, :, windows * self.time_stride :]
        if windows == 0:
            return self._empty_output(x)
        used = (windows - 1) * self.time_stride + self.kernel_size
        return self.conv(x[:, :, :used])

    def _first_frame_pad(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :1].repeat(1, 1, self.kernel_size - 1, 1, 1)

    def _pad_clip(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            return torch.cat([self._first_frame_pad(x), x], dim=_TIME_DIM)
        half = (self.kernel_size - 1) // 2
        left = x[:, :, :1].repeat(1, 1, half, 1, 1)
        right = x[:, :, -1:].repeat(1, 1, half, 1, 1)
        return torch.cat([left, x, right], dim=_TIME_DIM)

    def _empty_output(self, x: torch.Tensor) -> torch.Tensor:
        # Too few frames for a window yet: run the conv on a zero-length time axis of the right shape.
        batch, _, _, height, width = x.shape
        probe = x.new_zeros(batch, x.shape[1], self.kernel_size, height, width)
        return F.conv3d(probe, self.conv.weight, self.conv.bias, self.conv.stride, self.conv.padding)[
            :, :, :0
        ]
