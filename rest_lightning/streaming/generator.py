"""`StreamingGenerator`: reference image + live audio -> video, chunk by chunk (DESIGN §5).

For each chunk ``c`` (``chunk_frames`` latent frames; one latent frame = 8 video frames, 0.32 s):

1. wait until the chunk's audio, look-ahead included, has arrived (``AudioBuffer.ready``), or the
   stream has ended (missing samples then read as zeros);
2. audio tokens of its latent frames (``AudioEncoder.encode_latent_frames``, the training features);
3. few-step denoising of fresh noise (``FewStepSampler``, seeded by ``(seed, c)`` only) with
   ``DiT.forward_chunk`` reading the ``IDContextCache`` (ID-Sink + last W chunks);
4. causal VAE decode of the clean latent (``CausalVideoVAE.decode_step``): latent frame 0 gives one
   video frame, later ones 8 (``streaming/frames.py`` states the frame-count rule); the chunk is
   yielded here, so the first frames leave before the cache is written;
5. one pass of the DiT on the clean latent at t = 0 writes the chunk's keys/values into the cache,
   evicting the oldest chunk (CausVid / Self-Forcing style).

Steps 3 and 5 are ``ChunkRollout`` (``streaming/rollout.py``), the code the student's training rolls its
context chunks out with: the stream builds its cache exactly as training did.

Every model call runs under ``torch.inference_mode`` (a generator function cannot hold it across a
``yield`` without leaking it into the caller, so each step enters it itself).

Noise depends only on ``(seed, chunk index)``, so a stream's output does not depend on how its audio
was cut into pieces (a file read whole and the same audio piped in 10 ms at a time give the same video).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rest_lightning.diffusion.guidance import GuidanceScales
from rest_lightning.diffusion.samplers import FewStepSampler
from rest_lightning.models.attention import AttentionPattern, WindowKV
from rest_lightning.models.audio import AudioEncoder
from rest_lightning.models.dit import DiT
from rest_lightning.models.pairing import check_pairing
from rest_lightning.models.vae import CausalVideoVAE, VAEStreamState
from rest_lightning.streaming.audio_buffer import AudioBuffer
from rest_lightning.streaming.cache import CacheConfig, IDContextCache
from rest_lightning.streaming.frames import FrameRule
from rest_lightning.streaming.rollout import ChunkRollout, cache_shape, chunk_noise

logger = logging.getLogger(__name__)

CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class StreamConfig:
    """How a stream is generated.

    Fields:
        window: W, context chunks each chunk sees (must be the student's training window; DESIGN §3
            default 4 is a design choice).
        chunk_frames: latent frames per chunk (DESIGN §3: 1 latent frame = 8 video frames).
        timesteps: the few-step sampler's levels (CausVid / Self-Forcing 4-step list).
        use_id_sink, use_context_cache: the paper's ablation switches (``CacheConfig``).
        audio_guidance: classifier-free guidance on the audio (1 = none: a distilled student has the
            guidance baked in; > 1 doubles the DiT calls per step).
        seed: noise seed; chunk ``c``'s noise depends only on ``(seed, c)``.
        compile: ``torch.compile`` mode of the per-chunk DiT call, CUDA only (``reduce-overhead``
            captures CUDA graphs); ``none`` runs eagerly.
    """

    window: int = 4  # design choice (DESIGN §3)
    chunk_frames: int = 1  # design choice (DESIGN §3)
    timesteps: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)  # CausVid / Self-Forcing 4 steps
    use_id_sink: bool = True
    use_context_cache: bool = True
    audio_guidance: float = 1.0  # design choice: the ASD student is distilled from the guided teacher
    seed: int = 0
    compile: CompileMode = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "timesteps", tuple(float(t) for t in self.timesteps))
        self.cache_config()  # validates window
        self.pattern()  # validates chunk_frames
        FewStepSampler(self.timesteps)  # validates the levels
        if self.audio_guidance <= 0:
            raise ValueError(f"StreamConfig.audio_guidance={self.audio_guidance}: expected > 0 (1 = no guidance)")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"StreamConfig.compile={self.compile!r} is not one of {', '.join(COMPILE_MODES)}")

    def cache_config(self) -> CacheConfig:
        return CacheConfig(self.window, self.use_id_sink, self.use_context_cache)

    def pattern(self) -> AttentionPattern:
        return AttentionPattern.block_causal(self.window, self.chunk_frames)


@dataclass(frozen=True)
class VideoChunk:
    """What the stream yields per chunk.

    Fields:
        index: chunk index c.
        first_frame: index in the video of ``frames[:, :, 0]``.
        frames: ``(B, 3, n, H, W)`` float in [-1, 1] on the generator's device (n per ``FrameRule``,
            trimmed at the end of the stream).
        latent: the clean latent ``(B, C, chunk_frames, h, w)`` float32.
        audio_tokens: the chunk's audio tokens ``(B, chunk_frames, A, audio_dim)``.
    """

    index: int
    first_frame: int
    frames: Tensor
    latent: Tensor
    audio_tokens: Tensor


@dataclass(frozen=True)
class DenoiseStep:
    """One model evaluation of the few-step sampler, for tracing (tests, debugging).

    Fields:
        chunk, step: indices.
        latents: the noisy input ``(B, C, chunk_frames, h, w)`` float32.
        timesteps: ``(B, chunk_frames)``.
        velocity: the (guided) velocity the sampler used, float32, same shape as ``latents``.
        num_context_chunks: context chunks the step read from the cache.
    """

    chunk: int
    step: int
    latents: Tensor
    timesteps: Tensor
    velocity: Tensor
    num_context_chunks: int


StepTrace = Callable[[DenoiseStep], None]


@dataclass(frozen=True)
class _PendingWrite:
    """A yielded chunk whose clean pass has not run yet: what ``_write_cache`` needs, as data. (A closure
    over the stream stored in the stream was a reference cycle: a stream closed between a chunk's yield
    and its write kept the generator and its cache alive until a full garbage collection.)"""

    latent: Tensor
    tokens: Tensor
    windows: list[WindowKV]


@dataclass
class _Stream:
    """The state of one stream (internal): what ``generate`` advances chunk by chunk."""

    cache: IDContextCache
    vae_state: VAEStreamState
    audio: AudioBuffer
    ref_latent: Tensor | None
    latent_grid: tuple[int, int]
    chunk: int = 0
    ended: bool = False
    total_frames: int | None = None  # known once the audio has ended
    pending_write: _PendingWrite | None = field(default=None, repr=False)


class StreamingGenerator:
    """Generates a talking-head video from a reference image and an audio stream (module doc).

    Args:
        dit: a block-causal DiT (the ASD student; any DiT runs, e.g. a freshly initialised one).
        vae: the causal video VAE (``config.causal_decoder`` must be true).
        audio_encoder: the audio encoder the DiT was trained with (kept in float32).
        config: ``StreamConfig``.
        device: where everything runs (default: the DiT's device).
        dtype: DiT and VAE dtype (default: the DiT's); bf16/fp16 on a GPU.
    """

    def __init__(
        self,
        dit: DiT,
        vae: CausalVideoVAE,
        audio_encoder: AudioEncoder,
        config: StreamConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.config = config
        first_param = next(dit.parameters())
        self.device = torch.device(device) if device is not None else first_param.device
        self.dtype = dtype if dtype is not None else first_param.dtype
        self._check_models(dit, vae, audio_encoder)
        self.dit = dit.to(self.device, self.dtype).eval()
        self.vae = vae.to(self.device, self.dtype).eval()
        # The audio front end works in float32 (log-mel / STFT); its tokens are cast to the DiT's dtype.
        self.audio_encoder = audio_encoder.to(self.device, torch.float32).eval()
        self.pattern = config.pattern()
        self.sampler = FewStepSampler(config.timesteps)
        self.guidance = GuidanceScales(audio=config.audio_guidance, ref=1.0)
        self._forward_chunk = self._compiled_forward_chunk()
        self.rollout = ChunkRollout(self._forward_chunk, self.sampler, self.pattern, config.use_context_cache,
                                    self.guidance, self.dtype)
        audio_config = audio_encoder.config
        self.frame_rule = FrameRule(
            audio_config.samples_per_video_frame, vae.config.temporal_compression, config.chunk_frames
        )
        self._cache: IDContextCache | None = None

    # --- public ---------------------------------------------------------------------------------------

    @property
    def spatial_compression(self) -> int:
        return self.vae.config.spatial_compression

    def generate(
        self,
        ref: Tensor | None,
        audio_chunks: Iterable[Tensor | np.ndarray],
        resolution: tuple[int, int] | None = None,
        trace: StepTrace | None = None,
    ) -> Iterator[VideoChunk]:
        """Stream a video.

        Args:
            ref: the reference image ``(B, 3, 1, H, W)`` float in [-1, 1] (H, W multiples of the VAE's
                spatial compression), or ``None`` for no reference at all (then give ``resolution``).
            audio_chunks: pieces of the audio stream, each ``(S_k,)`` or ``(B, S_k)`` float in [-1, 1],
                mono at the audio encoder's rate (16 kHz); any sizes (e.g. 320 ms = 5120 samples).
            resolution: ``(H, W)`` of the video when ``ref`` is ``None``; must match ``ref`` otherwise.
            trace: called with every ``DenoiseStep`` (tests).

        Yields:
            ``VideoChunk`` per chunk, as soon as its audio has arrived; ``T = ceil(S / 640)`` frames in all
            for ``S`` samples (``FrameRule``).

        Raises:
            ValueError: empty audio, a resolution that does not fit the VAE, bad shapes.
        """
        stream = self._open(ref, resolution)
        for samples in audio_chunks:
            stream.audio.append(torch.as_tensor(samples))
            while self._next_ready(stream):
                yield from self._advance(stream, trace)
        stream.ended = True
        stream.total_frames = self.frame_rule.video_frames(stream.audio.received)  # raises on empty audio
        while self._next_ready(stream):
            yield from self._advance(stream, trace)
        self._write_pending(stream)

    def new_cache(self, batch: int, latent_grid: tuple[int, int]) -> IDContextCache:
        """An empty ``IDContextCache`` for this DiT, window and resolution (reused across streams)."""
        shape = cache_shape(self.dit.config, batch, latent_grid, self.config.chunk_frames)
        if self._cache is None or self._cache.shape != shape:
            self._cache = IDContextCache(self.config.cache_config(), shape, self.dtype, self.device)
        self._cache.reset()
        return self._cache

    # --- one chunk --------------------------------------------------------------------------------------

    def _advance(self, stream: _Stream, trace: StepTrace | None) -> Iterator[VideoChunk]:
        chunk = self._denoise_and_decode(stream, trace)
        yield chunk
        self._write_pending(stream)

    @torch.inference_mode()
    def _denoise_and_decode(self, stream: _Stream, trace: StepTrace | None) -> VideoChunk:
        c, cf = stream.chunk, self.config.chunk_frames
        batch = stream.audio.batch
        tokens = stream.audio.tokens(self.audio_encoder, c * cf, cf).to(self.dtype)
        windows = stream.cache.read()
        height, width = stream.latent_grid
        shape = (batch, self.dit.config.latent_channels, cf, height, width)
        # The sampler works in the noise's dtype: float32 under a bf16/fp16 model, the model's own above it (fp64)
        noise, generator = chunk_noise(self.config.seed, c, shape, self.device, torch.promote_types(self.dtype, torch.float32))
        on_step = None
        if trace is not None:
            steps = iter(range(len(self.config.timesteps)))
            context = windows[0].num_context_chunks

            def on_step(x: Tensor, t: Tensor, velocity: Tensor) -> None:
                trace(DenoiseStep(c, next(steps), x.clone(), t.clone(), velocity.clone(), context))

        latent = self.rollout.sample(noise, tokens, windows, generator, on_step)
        frames = self.vae.decode_step(latent.to(self.dtype), stream.vae_state).clamp(-1.0, 1.0)
        first = self.frame_rule.first_video_frame(c)
        if stream.total_frames is not None:
            frames = frames[:, :, : stream.total_frames - first]
        stream.pending_write = _PendingWrite(latent, tokens, windows)
        stream.chunk += 1
        return VideoChunk(c, first, frames, latent, tokens)

    @torch.inference_mode()
    def _write_cache(self, stream: _Stream, latent: Tensor, tokens: Tensor, windows: list[WindowKV]) -> None:
        """The clean pass: the chunk's keys/values at t = 0 go into the cache (``ChunkRollout.write``)."""
        self.rollout.write(stream.cache, latent, tokens, windows)

    def _write_pending(self, stream: _Stream) -> None:
        if stream.pending_write is not None:
            pending, stream.pending_write = stream.pending_write, None
            self._write_cache(stream, pending.latent, pending.tokens, pending.windows)

    # --- stream set-up -------------------------------------------------------------------------------

    def _next_ready(self, stream: _Stream) -> bool:
        c, cf = stream.chunk, self.config.chunk_frames
        if stream.ended:
            assert stream.total_frames is not None
            return c < self.frame_rule.num_chunks(stream.total_frames)
        return stream.audio.ready((c + 1) * cf - 1)

    @torch.inference_mode()
    def _open(self, ref: Tensor | None, resolution: tuple[int, int] | None) -> _Stream:
        if ref is None:
            if resolution is None:
                raise ValueError("generate(ref=None) needs resolution=(H, W): there is no image to take it from")
            batch, (height, width) = 1, resolution
        else:
            if ref.ndim != 5 or ref.shape[1] != 3 or ref.shape[2] != 1:
                raise ValueError(f"ref must be an image (B, 3, 1, H, W) in [-1, 1], got {tuple(ref.shape)}")
            batch, (height, width) = ref.shape[0], ref.shape[3:]
            if resolution is not None and tuple(resolution) != (height, width):
                raise ValueError(f"resolution={tuple(resolution)} differs from the reference's {(height, width)}")
        ratio = self.spatial_compression
        if height % ratio or width % ratio or height < ratio or width < ratio:
            raise ValueError(
                f"video size {height}x{width} must be a positive multiple of the VAE's spatial compression "
                f"{ratio}; resize the reference (rest-generate resolution=...)"
            )
        latent_grid = (height // ratio, width // ratio)
        cache = self.new_cache(batch, latent_grid)
        ref_latent = None
        if ref is not None:
            ref_latent = self.vae.encode(ref.to(self.device, self.dtype))  # (B, C, 1, h, w)
            if self.config.use_id_sink:
                cache.set_id_sink(self.dit.encode_id_sink(ref_latent))
        return _Stream(
            cache=cache,
            vae_state=self.vae.new_decode_state(),
            audio=AudioBuffer(self.audio_encoder.alignment, batch, self.device),
            ref_latent=ref_latent,
            latent_grid=latent_grid,
        )

    def _check_models(self, dit: DiT, vae: CausalVideoVAE, audio_encoder: AudioEncoder) -> None:
        # Trained models keep the rotary scales they were trained with: a mismatch only warns here.
        check_pairing(dit.config, vae.config, audio_encoder.config, rope="warn")
        if not vae.config.causal_decoder:
            raise ValueError(
                "streaming decodes chunk by chunk and needs a causal VAE decoder (model.vae.causal_decoder=true)"
            )

    def _compiled_forward_chunk(self) -> Callable[..., object]:
        mode = self.config.compile
        if mode == "none":
            return self.dit.forward_chunk
        if self.device.type != "cuda":
            raise ValueError(
                f"StreamConfig.compile={mode!r} is for CUDA; on {self.device.type} set compile=none"
            )
        return torch.compile(self.dit.forward_chunk, mode=None if mode == "default" else mode)
