"""Audio tokens per latent frame: exact alignment, Whisper-compatible log-mel, offline == streaming for
every backend (tiny random Whisper / wav2vec2 saved to tmp_path), errors for missing local files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rest_lightning.models.audio import AudioAlignment, AudioConfig, AudioEncoder, LogMelFrontEnd

CONF_AUDIO = Path(__file__).resolve().parents[2] / "conf" / "model" / "audio"
SPF = 640  # samples per video frame at 16 kHz / 25 fps


def tiny_config(**overrides) -> AudioConfig:
    return dataclasses.replace(instantiate(OmegaConf.load(CONF_AUDIO / "log_mel_tiny.yaml")), **overrides)


@pytest.mark.parametrize("path", sorted(CONF_AUDIO.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_audio_yaml_builds_a_validated_config(path: Path) -> None:
    config = instantiate(OmegaConf.load(path))
    assert isinstance(config, AudioConfig) and config.samples_per_video_frame == SPF


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        AudioEncoder(AudioConfig(backend="whisper"))
    with pytest.raises(ValueError, match="sample_rate"):
        AudioConfig(sample_rate=16001)


def test_alignment_is_exact_sample_arithmetic() -> None:
    align = AudioAlignment.from_config(tiny_config(window_video_frames=10, lookahead_video_frames=2))
    assert list(align.video_frames(0)) == [0]
    assert list(align.video_frames(1)) == list(range(1, 9))
    assert list(align.video_frames(3)) == list(range(17, 25))
    assert align.end_sample(0) == SPF and align.end_sample(2) == 17 * SPF
    assert align.window(2) == range((17 + 2 - 10) * SPF, (17 + 2) * SPF)
    assert align.num_latent_frames(1 + 8 * 4) == 5
    waveform = torch.arange(1, 40 * SPF + 1, dtype=torch.float32)[None]
    windows = align.windows(waveform, 0, 5)
    assert windows.shape == (1, 5, 10 * SPF)
    # Frame 0's window starts 7 video frames before the clip: zeros, then samples 0 .. 3 * SPF - 1.
    assert float(windows[0, 0, : 7 * SPF].abs().max()) == 0.0
    torch.testing.assert_close(windows[0, 0, 7 * SPF :], waveform[0, : 3 * SPF])
    torch.testing.assert_close(windows[0, 4], waveform[0, align.window(4).start : align.window(4).stop])


def test_log_mel_matches_whisper_feature_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(
        feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=1, n_fft=400
    )
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    expected = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]  # (80, 100)
    ours = LogMelFrontEnd(80, 400, 160, 16000)(torch.from_numpy(audio)[None])[0].T
    torch.testing.assert_close(ours, torch.from_numpy(expected), rtol=0, atol=1e-4)


def _stream_equals_offline(encoder: AudioEncoder, seed: int = 0) -> None:
    """Features from the whole clip == features computed as the stream arrives, in uneven pieces."""
    frames = 5
    g = torch.Generator().manual_seed(seed)
    waveform = torch.randn(2, (1 + 8 * (frames - 1)) * SPF, generator=g) * 0.1
    encoder.eval()
    with torch.no_grad():
        offline = encoder(waveform, frames)
        streamed, next_frame, received = [], 0, 0
        for piece in (1000, 3333, 5000, 777, 9000, 4000, 10**6):
            received = min(received + piece, waveform.shape[1])
            ready = next_frame
            while ready < frames and encoder.alignment.samples_needed(ready) <= received:
                ready += 1
            if ready > next_frame:
                streamed.append(
                    encoder.encode_latent_frames(waveform[:, :received], next_frame, ready - next_frame)
                )
                next_frame = ready
        if next_frame < frames:  # end of stream: the look-ahead of the last frames reads zeros, as offline
            streamed.append(encoder.encode_latent_frames(waveform, next_frame, frames - next_frame))
    assert len(streamed) > 2
    cfg = encoder.config
    assert offline.shape == (2, frames, cfg.n_audio_tokens, cfg.token_dim)
    torch.testing.assert_close(torch.cat(streamed, dim=1), offline, rtol=1e-5, atol=1e-5)


def test_log_mel_encoder_streams_like_offline() -> None:
    torch.manual_seed(0)
    _stream_equals_offline(AudioEncoder(tiny_config()))


def test_tokens_of_a_frame_depend_only_on_its_window() -> None:
    torch.manual_seed(0)
    encoder = AudioEncoder(tiny_config(window_video_frames=8, lookahead_video_frames=0)).eval()
    waveform = torch.randn(1, 33 * SPF) * 0.1
    changed = waveform.clone()
    changed[:, 17 * SPF : 25 * SPF] += 0.5  # exactly latent frame 3's window
    a, b = encoder(waveform, 5), encoder(changed, 5)
    torch.testing.assert_close(a[:, [0, 1, 2, 4]], b[:, [0, 1, 2, 4]], rtol=0, atol=0)
    assert not torch.allclose(a[:, 3], b[:, 3])


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        encoder_attention_heads=2,
        decoder_layers=1,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=40,
        max_target_positions=8,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    folder = tmp_path_factory.mktemp("whisper")
    WhisperModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        vocab_size=8,
    )
    folder = tmp_path_factory.mktemp("wav2vec2")
    Wav2Vec2Model(config).save_pretrained(folder)
    return folder


def test_whisper_backbone_streams_like_offline(whisper_folder: Path) -> None:
    torch.manual_seed(0)
    encoder = AudioEncoder(tiny_config(backend="whisper", pretrained=str(whisper_folder)))
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    assert all(p.requires_grad for p in encoder.projector.parameters())
    _stream_equals_offline(encoder)


def test_wav2vec2_backbone_streams_like_offline(wav2vec2_folder: Path) -> None:
    torch.manual_seed(0)
    encoder = AudioEncoder(tiny_config(backend="wav2vec2", pretrained=str(wav2vec2_folder)))
    encoder.train()
    assert not encoder.backbone.training  # frozen backbone stays in eval mode
    _stream_equals_offline(encoder)


def test_missing_backbone_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*model\.audio\.pretrained"):
        AudioEncoder(tiny_config(backend="whisper", pretrained=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="config.json"):
        AudioEncoder(tiny_config(backend="wav2vec2", pretrained=str(tmp_path / "absent")))


def test_tokens_tell_the_dit_where_in_the_window_each_sound_is() -> None:
    """The DiT's audio cross-attention reads a latent frame's tokens as a set, so the order of sounds in a
    window reaches it only through the projector's place embedding (issue 12). Reversing time in the
    features reverses the pooled bins exactly (4 bins of 10 frames): without places the DiT would see
    the same set of tokens, and the mouth could not follow the sound frame by frame."""
    from rest_lightning.models.dit import DiT, DiTConfig

    torch.manual_seed(0)
    encoder = AudioEncoder(tiny_config(n_audio_tokens=4, token_dim=16))
    dit = DiT(DiTConfig(latent_channels=8, width=32, num_layers=1, num_heads=2, audio_dim=16)).eval()
    features = torch.randn(2, 40, encoder.backbone.feature_dim)
    reversed_in_time = features.flip(1)
    queries = torch.randn(2, 1, 12, 32)  # (B, frames, tokens of the frame, width)

    def cross_attention(tokens: torch.Tensor) -> torch.Tensor:
        return dit.transformer_blocks[0].attn2(queries, dit.audio_projection(tokens)[:, None])

    with torch.no_grad():
        tokens = encoder.projector(features)
        order_blind = (cross_attention(tokens) - cross_attention(tokens.flip(1))).abs().max()
        gap = (cross_attention(tokens) - cross_attention(encoder.projector(reversed_in_time))).abs().max()
    assert order_blind < 1e-6, "a set: reordering the tokens leaves the cross-attention as it was (float32)"
    # Small at initialisation (near-uniform attention averages the places away), but not rounding.
    assert gap > 100 * 1e-6, f"reversing the sounds in time moved the DiT's cross-attention by only {gap:.2e}"
