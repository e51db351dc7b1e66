"""`AudioBuffer`: the samples of a live audio stream that the next latent frames' features still need.

``AudioEncoder.encode_latent_frames(waveform, first, count)`` reads, for latent frame ``i``, the
fixed-length window ``AudioAlignment.window(i)`` of a waveform that starts at sample 0 (zeros outside
it). A stream cannot keep every sample forever, so the buffer keeps only the samples from a whole
number ``k`` of latent frames on: for ``i >= 1`` the windows shift by exactly ``frames_per_latent *
samples_per_video_frame`` samples per latent frame, so the window of frame ``i`` in the full waveform
equals the window of frame ``i - k`` in the waveform with its first ``k`` latent frames' samples
dropped, as long as that window starts at or after sample 0 (``i - k >= first_whole``, the first frame
whose window lies wholly after sample 0). The features are therefore exactly those of the whole
waveform (tested), in memory bounded by the window length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rest_lightning.models.audio import AudioAlignment, AudioEncoder


class AudioBuffer:
    """Received samples ``(B, S)`` float32 of one stream, trimmed as features are taken (module doc).

    Args:
        alignment: the audio encoder's sample arithmetic.
        batch: B.
        device: where samples are kept (the audio encoder's device).
    """

    def __init__(self, alignment: AudioAlignment, batch: int, device: torch.device) -> None:
        self.alignment = alignment
        self.batch = batch
        self.device = device
        self._samples = torch.zeros(batch, 0, device=device)
        self._dropped_latents = 0  # k: latent frames whose samples were dropped from the front
        self._received = 0
        self._first_whole = self._first_whole_window()

    @property
    def received(self) -> int:
        """Samples received since the stream started."""
        return self._received

    def append(self, samples: Tensor) -> None:
        """Add ``(S,)`` or ``(B, S)`` float samples in [-1, 1] at the encoder's sample rate (mono)."""
        samples = torch.as_tensor(samples)
        if samples.ndim == 1:
            samples = samples[None].expand(self.batch, -1)
        if samples.ndim != 2 or samples.shape[0] != self.batch:
            raise ValueError(
                f"audio chunks must be (S,) or (B={self.batch}, S) mono samples, got {tuple(samples.shape)}"
            )
        if not samples.is_floating_point():
            raise TypeError(
                f"audio chunks must be float samples in [-1, 1], got {samples.dtype}; convert PCM16 with "
                "rest_lightning.data.codecs.pcm16_to_float"
            )
        self._samples = torch.cat([self._samples, samples.to(self.device, torch.float32)], dim=1)
        self._received += samples.shape[1]

    def ready(self, latent_frame: int) -> bool:
        """Whether latent frame ``i``'s features are final (its window and look-ahead have arrived)."""
        return self._received >= self.alignment.samples_needed(latent_frame)

    def tokens(self, encoder: AudioEncoder, first: int, count: int) -> Tensor:
        """Audio tokens of latent frames ``first .. first + count - 1``: ``(B, count, A, token_dim)``.
        Samples not received read as zeros (the end of a stream). Then drops the samples no later
        frame needs: call with increasing ``first``."""
        shifted = first - self._dropped_latents
        if shifted < 0 or (self._dropped_latents and shifted < self._first_whole):
            raise ValueError(
                f"AudioBuffer.tokens: latent frame {first}'s samples were already dropped; take tokens in "
                "stream order"
            )
        tokens = encoder.encode_latent_frames(self._samples, shifted, count)
        self._drop_before(first + count)
        return tokens

    def _drop_before(self, next_latent: int) -> None:
        keep_from = max(0, next_latent - self._first_whole)  # latent frames that may be dropped
        drop = keep_from - self._dropped_latents
        if drop > 0:
            per_latent = self.alignment.frames_per_latent * self.alignment.samples_per_video_frame
            self._samples = self._samples[:, drop * per_latent :].clone()
            self._dropped_latents = keep_from

    def _first_whole_window(self) -> int:
        """The first latent frame ``j >= 1`` whose window starts at or after sample 0."""
        j = 1
        while self.alignment.window(j).start < 0:
            j += 1
        return j
