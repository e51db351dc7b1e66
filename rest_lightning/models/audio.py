"""Audio tokens per latent frame (DESIGN §4.2; issue 5): one feature function for training and streaming.

Alignment (``AudioAlignment``, exact sample arithmetic at 16 kHz / 25 fps = 640 samples per video
frame): latent frame 0 covers video frame 0, latent frame i >= 1 covers video frames
``1 + 8 (i - 1) .. 8 i`` (the causal VAE's 1 + 8k layout), so it ends at sample ``(1 + 8 i) * 640``.
Its audio window is the fixed-length span ``[end + lookahead - window, end + lookahead)``; samples
before 0 or past the end of the waveform read as zeros. Because a window depends only on those
samples, features of frame i computed from a whole clip equal those computed as soon as
``samples_needed(i)`` samples of a stream have arrived (tested).

Backbones, each mapping windows ``(N, window_samples)`` to features ``(N, T', C)``:

- ``log_mel`` (default, no weights): Whisper's log-mel recipe implemented in torch (slaney mel bank,
  Hann STFT, log10, 8-decade dynamic range, ``(x + 4) / 4``).
- ``whisper``: a Whisper encoder from a local folder. Whisper attends over its whole fixed-length
  input, so each window is zero-padded to the encoder's input length (30 s for released models, hence
  ~40x the window's compute) and the frames covering the window are kept.
- ``wav2vec2``: a wav2vec2 model from a local folder, each window normalised to zero mean and unit
  variance (wav2vec2-base-960h's feature extractor does the same).

A small trainable projector (the SpeechAE role of READ/REST) pools the features of a window to
``n_audio_tokens`` and maps them to ``token_dim`` (= ``DiTConfig.audio_dim``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

AUDIO_BACKENDS: tuple[str, ...] = ("log_mel", "whisper", "wav2vec2")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
LOG_MEL_FLOOR = 1e-10  # Whisper: clamp before log10
LOG_MEL_DYNAMIC_RANGE = 8.0  # Whisper: keep 8 decades below the window's maximum
LOG_MEL_OFFSET = 4.0  # Whisper: (log10 + 4) / 4 maps speech to about [-1, 1]
WAVEFORM_NORM_EPS = 1e-7  # wav2vec2 feature extractor's zero-mean unit-variance epsilon


@dataclass
class AudioConfig:
    """The audio encoder: alignment, window, backbone and projector."""

    backend: Literal["log_mel", "whisper", "wav2vec2"] = "log_mel"  # design choice: weight-free default
    sample_rate: int = 16000  # DESIGN §3: 16 kHz mono
    fps: int = 25  # DESIGN §3: 25 fps video
    frames_per_latent: int = 8  # VAE temporal compression (LTX-Video / DESIGN §3)
    window_video_frames: int = 16  # design choice: 0.64 s of audio per latent frame (two latent frames)
    lookahead_video_frames: int = 2  # design choice: 80 ms; MuseTalk/LatentSync pad +-2 frames of audio
    n_mels: int = 80  # Whisper; log_mel backend only (a Whisper backbone uses its own num_mel_bins)
    n_fft: int = 400  # Whisper: 25 ms
    hop_length: int = 160  # Whisper: 10 ms
    n_audio_tokens: int = 4  # design choice: audio tokens per latent frame
    token_dim: int = 768  # design choice; must equal DiTConfig.audio_dim
    pretrained: str | None = None  # local Whisper / wav2vec2 folder (model.audio.pretrained); required by those
    freeze_backbone: bool = True  # design choice: READ freezes Whisper and trains the SpeechAE

    def __post_init__(self) -> None:
        if self.backend not in AUDIO_BACKENDS:
            raise ValueError(
                f"AudioConfig.backend={self.backend!r} is not one of {', '.join(AUDIO_BACKENDS)}"
            )
        for key in (
            "sample_rate",
            "fps",
            "frames_per_latent",
            "window_video_frames",
            "n_mels",
            "n_fft",
            "hop_length",
            "n_audio_tokens",
            "token_dim",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AudioConfig.{key}={value!r}: expected a positive int")
        if not isinstance(self.lookahead_video_frames, int) or self.lookahead_video_frames < 0:
            raise ValueError(
                f"AudioConfig.lookahead_video_frames={self.lookahead_video_frames!r}: expected an int >= 0"
            )
        if self.sample_rate % self.fps:
            raise ValueError(
                f"AudioConfig.sample_rate={self.sample_rate} is not a whole number of samples per video frame at "
                f"fps={self.fps}; resample (16 kHz / 25 fps = 640 samples per frame)"
            )
    @property
    def samples_per_video_frame(self) -> int:
        return self.sample_rate // self.fps

    @property
    def window_samples(self) -> int:
        return self.window_video_frames * self.samples_per_video_frame

    @property
    def lookahead_samples(self) -> int:
        return self.lookahead_video_frames * self.samples_per_video_frame


@dataclass(frozen=True)
class AudioAlignment:
    """Sample arithmetic between audio, video frames and latent frames (module doc)."""

    samples_per_video_frame: int
    frames_per_latent: int
    window_samples: int
    lookahead_samples: int

    @classmethod
    def from_config(cls, config: AudioConfig) -> AudioAlignment:
        return cls(
            config.samples_per_video_frame,
            config.frames_per_latent,
            config.window_samples,
            config.lookahead_samples,
        )

    def num_latent_frames(self, num_video_frames: int) -> int:
        """``1 + (T - 1) // 8`` latent frames for ``T`` video frames (T = 1 + 8k for whole latents)."""
        if num_video_frames < 1:
            raise ValueError(f"need at least one video frame, got {num_video_frames}")
        return 1 + (num_video_frames - 1) // self.frames_per_latent

    def video_frames(self, latent_frame: int) -> range:
        """Video frames latent frame ``i`` covers: ``[0]`` for i = 0, else ``1 + 8 (i - 1) .. 8 i``."""
        if latent_frame == 0:
            return range(0, 1)
        return range(
            1 + self.frames_per_latent * (latent_frame - 1), 1 + self.frames_per_latent * latent_frame
        )

    def end_sample(self, latent_frame: int) -> int:
        """One past the last audio sample of latent frame ``i``'s video frames."""
        return self.video_frames(latent_frame).stop * self.samples_per_video_frame

    def window(self, latent_frame: int) -> range:
        """Sample span of latent frame ``i``'s audio window (may start below 0: zeros)."""
        stop = self.end_sample(latent_frame) + self.lookahead_samples
        return range(stop - self.window_samples, stop)

    def samples_needed(self, latent_frame: int) -> int:
        """Samples of a stream that must have arrived before latent frame ``i``'s features are final."""
        return self.window(latent_frame).stop

    def windows(self, waveform: Tensor, first: int, count: int) -> Tensor:
        """Windows of latent frames ``first .. first + count - 1``: ``(B, S)`` -> ``(B, count, window_samples)``,
        zeros outside ``[0, S)``."""
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be (B, S) mono samples, got {tuple(waveform.shape)}")
        if first < 0 or count < 1:
            raise ValueError(f"need first >= 0 and count >= 1 latent frames, got {first}, {count}")
        starts = torch.tensor(
            [self.window(i).start for i in range(first, first + count)], device=waveform.device
        )
        left = max(0, -int(starts.min()))
        right = max(0, int(starts.max()) + self.window_samples - waveform.shape[1])
        padded = F.pad(waveform, (left, right))
        index = starts[:, None] + left + torch.arange(self.window_samples, device=waveform.device)[None, :]
        return padded[:, index]  # (B, count, window_samples)


def _hz_to_mel(freq: Tensor) -> Tensor:
    """Slaney mel scale (librosa default, Whisper): linear below 1 kHz, logarithmic above."""
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / math.log(6.4)
    mels = 3.0 * freq / 200.0
    return torch.where(freq >= min_log_hz, min_log_mel + torch.log(freq / min_log_hz) * logstep, mels)


def _mel_to_hz(mels: Tensor) -> Tensor:
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / math.log(6.4)
    freqs = 200.0 * mels / 3.0
    return torch.where(mels >= min_log_mel, min_log_hz * torch.exp((mels - min_log_mel) / logstep), freqs)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> Tensor:
    """Slaney-normalised triangular mel filters from 0 Hz to Nyquist: ``(n_fft // 2 + 1, n_mels)`` float32
    (librosa ``filters.mel(norm='slaney')``, what Whisper uses). Built in float64 on the CPU, whatever the
    default device (a model built on the meta device still gets real filters), cast at the end."""
    cpu = torch.device("cpu")
    n_bins = n_fft // 2 + 1
    fft_freqs = torch.linspace(0, sample_rate // 2, n_bins, dtype=torch.float64, device=cpu)
    mel_edges = torch.linspace(
        float(_hz_to_mel(torch.tensor(0.0, dtype=torch.float64, device=cpu))),
        float(_hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64, device=cpu))),
        n_mels + 2,
        dtype=torch.float64,
        device=cpu,
    )
    edges = _mel_to_hz(mel_edges)  # (n_mels + 2,) Hz
    widths = edges.diff()
    slopes = edges[None, :] - fft_freqs[:, None]  # (n_bins, n_mels + 2)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = torch.clamp(torch.minimum(down, up), min=0)
    filters = filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]  # slaney: constant energy per band
    return filters.float()


class LogMelFrontEnd(nn.Module):
    """Whisper's log-mel spectrogram in torch: windows ``(N, S)`` -> ``(N, S // hop, n_mels)``."""

    def __init__(self, n_mels: int, n_fft: int, hop_length: int, sample_rate: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.feature_dim = n_mels
        # Non-persistent: derived from the config, never part of a checkpoint.
        self.register_buffer("mel_filters", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)
        self.register_buffer("stft_window", torch.hann_window(n_fft), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        stft = torch.stft(
            waveform.float(), self.n_fft, self.hop_length, window=self.stft_window, return_complex=True
        )
        power = stft[..., :-1].abs().square()  # (N, bins, frames); Whisper drops the last frame
        mel = torch.einsum("bf,nbt->nft", self.mel_filters, power)  # (N, n_mels, frames)
        log_mel = torch.clamp(mel, min=LOG_MEL_FLOOR).log10()
        peak = log_mel.amax(dim=(1, 2), keepdim=True)
        log_mel = torch.maximum(log_mel, peak - LOG_MEL_DYNAMIC_RANGE)
        return ((log_mel + LOG_MEL_OFFSET) / LOG_MEL_OFFSET).transpose(1, 2)


def _check_local_folder(path: str | None, backend: str) -> Path:
    if path is None:
        raise ValueError(
            f"AudioConfig.backend={backend!r} needs AudioConfig.pretrained, a local folder with the backbone's "
            "config.json and weights (set model.audio.pretrained=PATH, or model/audio=log_mel)"
        )
    folder = Path(path)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise FileNotFoundError(
            f"the {backend} audio backbone folder {folder} lacks {', '.join(missing)}. Set model.audio.pretrained "
            f"to a local {backend} folder (save_pretrained / a downloaded snapshot); nothing is downloaded."
        )
    return folder


class WhisperBackbone(nn.Module):
    """A Whisper encoder from a local folder: windows ``(N, S)`` -> ``(N, frames covering S, d_model)``.
    ``n_fft``, ``hop_length``, ``sample_rate`` must be Whisper's (400, 160, 16 kHz: ``AudioConfig`` defaults)."""

    def __init__(self, path: str | None, window_samples: int, n_fft: int, hop_length: int, sample_rate: int) -> None:
        super().__init__()
        from transformers import WhisperModel

        folder = _check_local_folder(path, "whisper")
        model = WhisperModel.from_pretrained(folder, local_files_only=True)
        self.encoder = model.get_encoder()
        config = self.encoder.config
        self.front_end = LogMelFrontEnd(config.num_mel_bins, n_fft, hop_length, sample_rate)
        stride = self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]
        self.input_samples = config.max_source_positions * stride * self.front_end.hop_length
        if window_samples > self.input_samples:
            raise ValueError(
                f"an audio window of {window_samples} samples exceeds the Whisper encoder's input of "
                f"{self.input_samples}; lower AudioConfig.window_video_frames"
            )
        self.output_frames = math.ceil(window_samples / (stride * self.front_end.hop_length))
        self.feature_dim = config.d_model

    def forward(self, windows: Tensor) -> Tensor:
        padded = F.pad(windows, (0, self.input_samples - windows.shape[1]))
        mel = (
            self.front_end(padded).transpose(1, 2).to(self.encoder.conv1.weight.dtype)
        )  # (N, n_mels, frames)
        hidden = self.encoder(input_features=mel).last_hidden_state
        return hidden[:, : self.output_frames]


class Wav2Vec2Backbone(nn.Module):
    """A wav2vec2 model from a local folder: windows ``(N, S)`` -> ``(N, S / 320, hidden)``."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        from transformers import Wav2Vec2Model

        folder = _check_local_folder(path, "wav2vec2")
        self.model = Wav2Vec2Model.from_pretrained(folder, local_files_only=True)
        self.feature_dim = self.model.config.hidden_size

    def forward(self, windows: Tensor) -> Tensor:
        windows = windows.float()
        mean = windows.mean(dim=1, keepdim=True)
        var = windows.var(dim=1, keepdim=True, unbiased=False)
        normalised = (windows - mean) / torch.sqrt(var + WAVEFORM_NORM_EPS)
        return self.model(normalised.to(self.model.dtype)).last_hidden_state


class AudioProjector(nn.Module):
    """Features of a window ``(N, T', C)`` -> ``(N, n_audio_tokens, token_dim)``: average-pool time into
    ``n_audio_tokens`` bins, ``linear_1`` -> GELU -> ``linear_2`` (the SpeechAE role), plus a learned
    embedding of each token's place in the window.

    The place embedding is what tells the DiT *when* a token's sound happens: its cross-attention treats a
    latent frame's tokens as a set, so without it the 8 video frames a latent frame covers could only see
    the window's sound as an unordered bag, never which frame it belongs to (issue 12: the SynthTalk
    teacher's mouth did not follow the audio frame by frame)."""

    def __init__(self, feature_dim: int, n_audio_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.n_audio_tokens = n_audio_tokens
        self.linear_1 = nn.Linear(feature_dim, token_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(token_dim, token_dim)
        # The scale of the null-token embedding in the DiT: distinct places from the first step.
        self.place = nn.Parameter(torch.randn(n_audio_tokens, token_dim) / token_dim**0.5)

    def forward(self, features: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool1d(features.transpose(1, 2), self.n_audio_tokens).transpose(1, 2)
        return self.linear_2(self.act(self.linear_1(pooled))) + self.place.to(pooled.dtype)


class AudioEncoder(nn.Module):
    """Waveform -> audio tokens per latent frame (module doc). The same ``encode_latent_frames`` serves a
    whole training clip and a live stream."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        self.alignment = AudioAlignment.from_config(config)
        if config.backend == "log_mel":
            self.backbone: nn.Module = LogMelFrontEnd(
                config.n_mels, config.n_fft, config.hop_length, config.sample_rate
            )
        elif config.backend == "whisper":
            self.backbone = WhisperBackbone(
                config.pretrained, config.window_samples, config.n_fft, config.hop_length, config.sample_rate
            )
        else:
            self.backbone = Wav2Vec2Backbone(config.pretrained)
        self.frozen = config.freeze_backbone and config.backend != "log_mel"
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.projector = AudioProjector(self.backbone.feature_dim, config.n_audio_tokens, config.token_dim)

    def train(self, mode: bool = True) -> AudioEncoder:
        super().train(mode)
        if self.frozen:  # a frozen backbone stays in eval mode (no dropout / SpecAugment)
            self.backbone.eval()
        return self

    def encode_latent_frames(self, waveform: Tensor, first: int, count: int) -> Tensor:
        """Tokens of latent frames ``first .. first + count - 1``.

        Args:
            waveform: ``(B, S)`` float mono samples at ``sample_rate`` in [-1, 1], sample 0 = video frame 0's
                start; in a stream, everything received so far (call once ``S >=
                alignment.samples_needed(first + count - 1)``, or at the end of the stream).
        Returns:
            ``(B, count, n_audio_tokens, token_dim)``.
        """
        windows = self.alignment.windows(waveform, first, count)  # (B, count, window_samples)
        batch = windows.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.backbone(windows.flatten(0, 1))  # (B * count, T', C)
        tokens = self.projector(features)
        return tokens.unflatten(0, (batch, count))

    def forward(self, waveform: Tensor, num_latent_frames: int) -> Tensor:
        """Whole clip: ``(B, S)`` -> ``(B, num_latent_frames, n_audio_tokens, token_dim)``."""
        return self.encode_latent_frames(waveform, 0, num_latent_frames)
