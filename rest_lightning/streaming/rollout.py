"""The block-causal rollout, written once (DESIGN §5): how a chunk is made and how it enters the cache.

Per chunk: few-step denoising of noise with ``DiT.forward_chunk`` reading the ``IDContextCache`` windows
(``ChunkRollout.sample``), then one pass over the clean chunk at ``CLEAN_TIME`` that writes its keys/values
into the cache (``ChunkRollout.write``). Two callers run this same code:

- ``StreamingGenerator`` streams with it live (guided or not, a VAE decode between the two halves so the
  frames leave before the cache write);
- ``StudentStage.asd_loss`` rolls a clip's context chunks out with it, so the cache the student's current
  chunk reads in training is built exactly as the stream builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from rest_lightning.diffusion.guidance import GuidanceScales, guided_velocity
from rest_lightning.diffusion.samplers import FewStepSampler
from rest_lightning.models.attention import AttentionPattern, WindowKV
from rest_lightning.models.dit import DiTConfig
from rest_lightning.streaming.cache import CacheShape, IDContextCache

CLEAN_TIME = 0.0  # the clean pass writes a chunk's keys/values at flow time 0 (CausVid / Self-Forcing)

# DiT.forward_chunk(latents, timesteps, audio, windows, pattern) -> ChunkOutput (.velocity, .kv), or its
# torch.compile'd version.
ForwardChunk = Callable[..., object]
OnStep = Callable[[Tensor, Tensor, Tensor], None]  # (noisy latents, times, velocity) of each model call


def chunk_seed(seed: int, chunk: int) -> int:
    """A 63-bit seed for chunk ``c``'s noise from ``(seed, c)`` alone (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def chunk_noise(
    seed: int, chunk: int, shape: Sequence[int], device: torch.device | str, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, torch.Generator]:
    """Chunk ``c``'s starting noise and the generator its sampler re-noises from, a function of
    ``(seed, c)`` alone: a stream and a training rollout with the same seed draw the same numbers."""
    generator = torch.Generator(device).manual_seed(chunk_seed(seed, chunk))
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype), generator


def cache_shape(config: DiTConfig, batch: int, latent_grid: tuple[int, int], chunk_frames: int) -> CacheShape:
    """The ``IDContextCache`` shape of a DiT streaming ``chunk_frames`` latent frames of ``latent_grid``:
    the ID-Sink holds one latent frame's tokens, each context chunk ``chunk_frames`` frames' worth."""
    height, width = latent_grid
    return CacheShape(
        num_layers=config.num_layers,
        batch=batch,
        sink_tokens=height * width,
        chunk_tokens=chunk_frames * height * width,
        width=config.width,
    )


@dataclass
class ChunkRollout:
    """One chunk of the rollout: ``sample`` against the cache, then ``write`` its clean pass (module doc).

    Fields:
        forward: ``DiT.forward_chunk`` (or a compiled version of it).
        sampler: the few-step sampler.
        pattern: the block-causal attention pattern (window, chunk frames).
        use_context_cache: false for the no-Context-Cache ablation: nothing is written, the pass is skipped.
        guidance: audio classifier-free guidance (1 = none, one DiT call per step).
        dtype: the DiT's dtype, which its inputs are cast to (None: as given); the sampler works in the
            noise's dtype.
    """

    forward: ForwardChunk
    sampler: FewStepSampler
    pattern: AttentionPattern
    use_context_cache: bool = True
    guidance: GuidanceScales = field(default_factory=lambda: GuidanceScales(audio=1.0, ref=1.0))
    dtype: torch.dtype | None = None

    def _cast(self, x: Tensor) -> Tensor:
        return x if self.dtype is None else x.to(self.dtype)

    def velocity(self, x: Tensor, t: Tensor, audio: Tensor, windows: Sequence[WindowKV]) -> Tensor:
        """The (guided) velocity of chunk latents ``x`` at frame times ``t (B, chunk_frames)``, in ``x``'s dtype."""

        def conditional(drop_audio: bool, drop_ref: bool) -> Tensor:
            assert not drop_ref, "the rollout guides audio only (GuidanceScales.ref = 1)"
            out = self.forward(self._cast(x), t, None if drop_audio else audio, windows, self.pattern)
            return out.velocity

        return guided_velocity(conditional, self.guidance).to(x.dtype)

    def sample(
        self,
        noise: Tensor,
        audio: Tensor,
        windows: Sequence[WindowKV],
        generator: torch.Generator | None,
        on_step: OnStep | None = None,
        stop_at: int | None = None,
    ) -> Tensor:
        """Few-step denoising of ``noise (B, C, chunk_frames, h, w)`` reading ``windows``; draws the
        sampler's re-noising from ``generator``. ``on_step`` sees every model call. ``stop_at`` = i returns
        the noisy input of level i instead of the clean chunk (``FewStepSampler.sample``)."""

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            v = self.velocity(x, t, audio, windows)
            if on_step is not None:
                on_step(x, t, v)
            return v

        return self.sampler.sample(denoise, noise, generator, stop_at)

    def write(self, cache: IDContextCache, latent: Tensor, audio: Tensor, windows: Sequence[WindowKV]) -> None:
        """The clean pass: ``latent``'s keys/values at ``CLEAN_TIME``, read against ``windows`` (what the chunk
        was sampled with), go into ``cache``."""
        if not self.use_context_cache:
            return  # nothing would be kept: skip the pass (the no-Context-Cache ablation)
        times = torch.full(latent.shape[:1] + latent.shape[2:3], CLEAN_TIME, device=latent.device)
        out = self.forward(self._cast(latent), times, audio, windows, self.pattern)
        cache.write(out.kv)
