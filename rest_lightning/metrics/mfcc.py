"""MFCC front end of SyncNet: ``python_speech_features.mfcc`` (0.6) with its defaults, in torch float64.

Steps (jameslyons/python_speech_features ``base.py``/``sigproc.py``; metrics.md §4.2): pre-emphasis,
framing into 25 ms windows every 10 ms (zero-padded at the end, rectangular window), power spectrum
of a 512-point FFT, 26 triangular mel filters, log, orthonormal DCT-II keeping 13 coefficients,
sinusoidal lifter 22, and c0 replaced by the log frame energy. Zeros are floored at float64 eps
before the logs, as the reference does. Audio is expected at int16 scale (not [-1, 1]): scaling the
wave by c shifts c0 by 2·ln c and leaves the rest unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import torch
from torch import Tensor


@dataclass(frozen=True)
class MFCCConfig:
    """python_speech_features.mfcc defaults (the call in syncnet_python passes only the rate)."""

    sample_rate: int = 16000  # syncnet_python extracts audio with ffmpeg -ar 16000
    window_s: float = 0.025  # winlen
    step_s: float = 0.01  # winstep: 100 frames per second
    num_coeffs: int = 13  # numcep
    num_filters: int = 26  # nfilt
    fft_size: int = 512  # nfft
    preemphasis: float = 0.97  # preemph
    lifter: int = 22  # ceplifter
    append_energy: bool = True  # appendEnergy: c0 := log frame energy

    @property
    def window_samples(self) -> int:
        return _round_half_up(self.window_s * self.sample_rate)

    @property
    def step_samples(self) -> int:
        return _round_half_up(self.step_s * self.sample_rate)


def _round_half_up(value: float) -> int:
    # sigproc.round_half_up: decimal rounding, so 0.5 goes up (Python's round() would go to even).
    return int(Decimal(value).quantize(Decimal("1"), rounding=ROUND_HALF_UP))


def num_mfcc_frames(num_samples: int, config: MFCCConfig = MFCCConfig()) -> int:
    """Frames for ``num_samples``: 1 if the signal fits one window, else 1 + ceil((N - win) / step)."""
    window, step = config.window_samples, config.step_samples
    if num_samples <= window:
        return 1
    return 1 + math.ceil((num_samples - window) / step)


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 2595 * torch.log10(1 + hz / 700.0)  # the HTK mel scale used by python_speech_features


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700 * (10 ** (mel / 2595.0) - 1)


def mel_filterbank(config: MFCCConfig = MFCCConfig(), device: torch.device | None = None) -> Tensor:
    """Triangular filters ``(num_filters, fft_size // 2 + 1)`` from 0 Hz to Nyquist, float64, with
    band edges snapped to FFT bins as ``floor((nfft + 1) * hz / rate)`` (get_filterbanks)."""
    nyquist = torch.tensor(config.sample_rate / 2, dtype=torch.float64)
    mel_points = torch.linspace(0.0, float(_hz_to_mel(nyquist)), config.num_filters + 2, dtype=torch.float64)
    bins = torch.floor((config.fft_size + 1) * _mel_to_hz(mel_points) / config.sample_rate).tolist()
    bank = torch.zeros(config.num_filters, config.fft_size // 2 + 1, dtype=torch.float64)
    for j in range(config.num_filters):
        left, centre, right = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(left, centre):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(centre, right):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank.to(device)


def _dct2_ortho(num: int, keep: int, device: torch.device | None) -> Tensor:
    """Orthonormal DCT-II matrix ``(num, keep)``: ``x @ M`` = scipy ``dct(x, type=2, norm='ortho')[:keep]``."""
    n = torch.arange(num, dtype=torch.float64, device=device)
    k = torch.arange(keep, dtype=torch.float64, device=device)
    basis = torch.cos(math.pi * k[None, :] * (2 * n[:, None] + 1) / (2 * num))
    scale = torch.full((keep,), math.sqrt(2.0 / num), dtype=torch.float64, device=device)
    scale[0] = math.sqrt(1.0 / num)
    return basis * scale


def mfcc(signal: Tensor, config: MFCCConfig = MFCCConfig()) -> Tensor:
    """MFCCs of a mono signal.

    Args:
        signal: ``(S,)`` samples at ``config.sample_rate``, int16 scale (any real dtype).

    Returns:
        ``(num_mfcc_frames(S), num_coeffs)`` float64, one row per 10 ms frame (python_speech_features layout).
    """
    if signal.ndim != 1 or signal.numel() == 0:
        raise ValueError(f"mfcc expects a non-empty mono signal (S,), got shape {tuple(signal.shape)}")
    x = signal.to(torch.float64)
    x = torch.cat([x[:1], x[1:] - config.preemphasis * x[:-1]])
    window, step = config.window_samples, config.step_samples
    frames = num_mfcc_frames(x.numel(), config)
    padded_length = (frames - 1) * step + window
    x = torch.nn.functional.pad(x, (0, padded_length - x.numel()))
    framed = x.unfold(0, window, step)  # (frames, window); rectangular window = no weighting
    power = torch.fft.rfft(framed, n=config.fft_size).abs().square() / config.fft_size  # (frames, nfft/2+1)
    eps = torch.finfo(torch.float64).eps
    energy = power.sum(dim=1)
    energy = torch.where(energy == 0, torch.full_like(energy, eps), energy)
    feat = power @ mel_filterbank(config, x.device).T  # (frames, num_filters)
    feat = torch.where(feat == 0, torch.full_like(feat, eps), feat)
    cepstra = torch.log(feat) @ _dct2_ortho(config.num_filters, config.num_coeffs, x.device)
    if config.lifter > 0:
        n = torch.arange(config.num_coeffs, dtype=torch.float64, device=x.device)
        cepstra = cepstra * (1 + (config.lifter / 2.0) * torch.sin(math.pi * n / config.lifter))
    if config.append_energy:
        cepstra[:, 0] = torch.log(energy)
    return cepstra
