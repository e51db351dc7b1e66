"""How many video frames a stream of audio gives, and which of them each chunk decodes (DESIGN §5).

The rule, for a stream of ``S > 0`` audio samples at ``sample_rate`` and video at ``fps``
(``spf = sample_rate / fps`` samples per video frame, 640 at 16 kHz / 25 fps):

- the video has ``T = ceil(S / spf)`` frames: every sample is covered by a frame, the video is at most
  one frame (40 ms) longer than the audio, and an ``S`` that is a whole number of frames gives exactly
  ``S / spf`` frames;
- the causal VAE decodes latent frame 0 to 1 video frame and every later latent frame to
  ``frames_per_latent`` (8) frames, so ``T`` frames need ``L = 1 + ceil((T - 1) / 8)`` latent frames;
- the stream denoises chunks of ``chunk_frames`` latent frames: ``ceil(L / chunk_frames)`` chunks; chunk
  ``c`` decodes video frames ``[first(c), first(c + 1))`` with ``first(0) = 0``, ``first(c) = 1 + 8 (c
  chunk_frames - 1)`` for ``c >= 1``, and the last chunk's frames past ``T`` are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameRule:
    """The frame-count rule of the module doc.

    Fields:
        samples_per_video_frame: ``sample_rate / fps`` (640).
        frames_per_latent: VAE temporal compression (8).
        chunk_frames: latent frames per chunk (1).
    """

    samples_per_video_frame: int
    frames_per_latent: int
    chunk_frames: int

    def __post_init__(self) -> None:
        for name in ("samples_per_video_frame", "frames_per_latent", "chunk_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FrameRule.{name}={value!r}: expected a positive int")

    def video_frames(self, num_samples: int) -> int:
        """``T = ceil(S / spf)`` video frames for ``S`` samples; ``S = 0`` is refused (no audio, no video)."""
        if num_samples < 1:
            raise ValueError(
                f"the audio stream is empty ({num_samples} samples): nothing to animate; give at least one "
                "sample of speech"
            )
        return -(-num_samples // self.samples_per_video_frame)

    def latent_frames(self, video_frames: int) -> int:
        """``L = 1 + ceil((T - 1) / 8)``: the fewest latent frames that decode to at least ``T`` frames."""
        if video_frames < 1:
            raise ValueError(f"need at least one video frame, got {video_frames}")
        return 1 + -(-(video_frames - 1) // self.frames_per_latent)

    def num_chunks(self, video_frames: int) -> int:
        """Chunks the stream denoises for ``T`` video frames."""
        return -(-self.latent_frames(video_frames) // self.chunk_frames)

    def first_video_frame(self, chunk: int) -> int:
        """Index of the first video frame chunk ``c`` decodes."""
        if chunk < 0:
            raise ValueError(f"chunk index must be >= 0, got {chunk}")
        if chunk == 0:
            return 0
        return 1 + self.frames_per_latent * (chunk * self.chunk_frames - 1)

    def chunk_video_frames(self, chunk: int) -> int:
        """Video frames the VAE decodes from chunk ``c`` before trimming: ``1 + 8 (chunk_frames - 1)``
        for the first chunk, ``8 chunk_frames`` after it."""
        return self.first_video_frame(chunk + 1) - self.first_video_frame(chunk)
