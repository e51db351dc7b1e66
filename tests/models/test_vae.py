"""Properties of the causal video VAE (issue 4; DESIGN §4.1, §5, §10).

Tiny configs, float32 on CPU, fixed seeds. Streaming and chunked results are compared to whole-clip
results at atol 1e-5: the same maths, but convs over different time lengths may sum in another order.
Parity with diffusers is checked on random weights written with `save_pretrained` into tmp dirs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rest_lightning.models.discriminator import DiscriminatorConfig, PatchDiscriminator3D
from rest_lightning.models.ltx_vae_keymap import (
    LTXKeyMapError,
    from_ltx_state_dict,
    load_ltx_vae,
    to_ltx_state_dict,
    vae_config_from_diffusers,
)
from rest_lightning.models.vae import (
    CausalVideoVAE,
    DecoderStageConfig,
    DiagonalGaussian,
    Downsample,
    EncoderStageConfig,
    LatentStatistics,
    MidConfig,
    Upsample,
    VAEConfig,
    vae_rest,
    vae_tiny,
)
from rest_lightning.models.vae_losses import (
    adaptive_generator_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
    kl_per_video_value,
    motion_weights,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model" / "vae"
STREAM_ATOL = 1e-5  # float32, different conv lengths
PARITY_ATOL = 1e-5  # float32, same ops as diffusers


def _ltx090_tiny() -> VAEConfig:
    """LTX-Video 0.9.0 kinds of layers (strided-conv downsample, width-change resnets) at toy width."""
    return VAEConfig(
        latent_channels=8,
        patch_size=2,
        encoder_stages=(
            EncoderStageConfig(8, 1, Downsample.CONV),
            EncoderStageConfig(16, 1, Downsample.CONV),
            EncoderStageConfig(16, 1, Downsample.CONV),
            EncoderStageConfig(32, 1, Downsample.NONE),
        ),
        encoder_mid=MidConfig(32, 1),
        decoder_mid=MidConfig(32, 1),
        decoder_stages=(
            DecoderStageConfig(32, 1, Upsample.NONE),
            DecoderStageConfig(16, 1, Upsample.SPACE_TIME),
            DecoderStageConfig(16, 1, Upsample.SPACE_TIME),
            DecoderStageConfig(8, 1, Upsample.SPACE_TIME),
        ),
    )


def _split_axes_tiny() -> VAEConfig:
    """Space and time resampled in separate stages, temporal ratio 4, patch 1."""
    return VAEConfig(
        latent_channels=4,
        patch_size=1,
        encoder_stages=(
            EncoderStageConfig(4, 1, Downsample.SPACE),
            EncoderStageConfig(8, 1, Downsample.TIME),
            EncoderStageConfig(8, 0, Downsample.SPACE_TIME),
        ),
        encoder_mid=MidConfig(16, 1),
        decoder_mid=MidConfig(16, 1),
        decoder_stages=(
            DecoderStageConfig(8, 1, Upsample.SPACE_TIME, upsample_residual=True, upsample_channel_factor=2),
            DecoderStageConfig(8, 0, Upsample.TIME, upsample_residual=True),
            DecoderStageConfig(4, 1, Upsample.SPACE),
        ),
    )


CONFIGS = {"vae_tiny": vae_tiny, "ltx090_tiny": _ltx090_tiny, "split_axes_tiny": _split_axes_tiny}


def _model(name: str, seed: int = 0) -> CausalVideoVAE:
    torch.manual_seed(seed)
    return CausalVideoVAE(CONFIGS[name]()).eval()


def _video(config: VAEConfig, latent_frames: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    size = 2 * config.spatial_compression
    generator = torch.Generator().manual_seed(seed)
    frames = config.video_frames(latent_frames)
    return torch.rand(batch, 3, frames, size, size, generator=generator) * 2 - 1


# ---------------------------------------------------------------- shapes and configs


@pytest.mark.parametrize(
    ("name", "spatial", "temporal"),
    [("vae_tiny", 8, 8), ("ltx090_tiny", 16, 8), ("split_axes_tiny", 4, 4)],
)
def test_encode_decode_shapes_follow_compression(name: str, spatial: int, temporal: int) -> None:
    model = _model(name)
    config = model.config
    assert (config.spatial_compression, config.temporal_compression) == (spatial, temporal)
    video = _video(config, latent_frames=3, batch=2)
    with torch.no_grad():
        latent = model.encode(video)
        assert latent.shape == (2, *config.latent_shape(*video.shape[2:]))
        assert latent.shape[2] == 1 + (video.shape[2] - 1) // temporal
        assert model.decode(latent).shape == video.shape


def test_vae_rest_on_meta_is_ltx_video_090_layout() -> None:
    from diffusers import AutoencoderKLLTXVideo

    with torch.device("meta"):
        model = CausalVideoVAE(vae_rest())
        ltx = AutoencoderKLLTXVideo()  # diffusers defaults are LTX-Video 0.9.0's VAE
    assert (model.config.spatial_compression, model.config.temporal_compression) == (32, 8)
    count = sum(parameter.numel() for parameter in model.parameters())
    assert count == sum(parameter.numel() for parameter in ltx.parameters())
    from_ltx_state_dict(model, ltx.state_dict())  # every key and shape fits
    video = torch.empty(1, 3, 33, 512, 512, device="meta")
    latent = model.encode(video)
    assert latent.shape == (1, 128, 5, 16, 16)
    assert model.decode(latent).shape == video.shape


@pytest.mark.parametrize("name", ["vae_tiny", "vae_rest"])
def test_yaml_config_instantiates_the_preset(name: str) -> None:
    config = instantiate(OmegaConf.load(CONF_DIR / f"{name}.yaml"))
    assert isinstance(config, VAEConfig)
    assert config == {"vae_tiny": vae_tiny, "vae_rest": vae_rest}[name]()


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="decoder_stages"):
        VAEConfig(decoder_stages=(DecoderStageConfig(128, 1, Upsample.SPACE_TIME),))  # 2x, encoder 8x
    with pytest.raises(ValueError, match="downsample"):
        EncoderStageConfig(8, 1, "sideways")
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        vae_tiny().latent_frames(12)
    with pytest.raises(ValueError, match="upsample_channel_factor"):
        VAEConfig(decoder_stages=(DecoderStageConfig(64, 1, Upsample.SPACE_TIME, upsample_channel_factor=2),))


def test_public_calls_reject_bad_clips() -> None:
    model = _model("vae_tiny")
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        model.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="spatial compression"):
        model.encode(torch.zeros(1, 3, 9, 12, 16))
    with pytest.raises(ValueError, match="latent must be"):
        model.decode(torch.zeros(1, 3, 2, 2, 2))


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefix_encode_equals_prefix_of_full_encode(name: str) -> None:
    model = _model(name)
    video = _video(model.config, latent_frames=4)
    with torch.no_grad():
        full = model.encode(video)
        for latent_frames in (1, 2, 3):
            prefix = video[:, :, : model.config.video_frames(latent_frames)]
            torch.testing.assert_close(
                model.encode(prefix), full[:, :, :latent_frames], atol=STREAM_ATOL, rtol=0
            )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_perturbing_a_frame_changes_no_earlier_latent(name: str) -> None:
    model = _model(name)
    config = model.config
    video = _video(config, latent_frames=4)
    frame = config.video_frames(2)  # first frame of latent frame 2
    perturbed = video.clone()
    perturbed[:, :, frame] += 0.5
    with torch.no_grad():
        before, after = model.encode(video), model.encode(perturbed)
    torch.testing.assert_close(after[:, :, :2], before[:, :, :2], atol=1e-6, rtol=0)
    assert (after[:, :, 2] - before[:, :, 2]).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_decoder_frames_do_not_see_later_latents(name: str) -> None:
    model = _model(name)
    with torch.no_grad():
        latent = model.encode(_video(model.config, latent_frames=4))
        perturbed = latent.clone()
        perturbed[:, :, 2] += 1.0
        before, after = model.decode(latent), model.decode(perturbed)
    earlier = model.config.video_frames(2)  # frames decoded from latent frames 0 and 1
    torch.testing.assert_close(after[:, :, :earlier], before[:, :, :earlier], atol=1e-6, rtol=0)
    assert (after[:, :, earlier:] - before[:, :, earlier:]).abs().max() > 1e-4


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("chunks", [(1, 1, 1, 1, 1), (2, 1, 2)], ids=["frame_by_frame", "uneven"])
def test_streaming_decode_equals_full_decode(name: str, chunks: tuple[int, ...]) -> None:
    model = _model(name)
    with torch.no_grad():
        latent = model.encode(_video(model.config, latent_frames=sum(chunks)))
        full = model.decode(latent)
        state = model.new_decode_state()
        pieces, start = [], 0
        for size in chunks:
            pieces.append(model.decode_step(latent[:, :, start : start + size], state))
            start += size
    assert [piece.shape[2] for piece in pieces][1:] == [
        size * model.config.temporal_compression for size in chunks[1:]
    ]
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=STREAM_ATOL, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunked_encode_equals_full_encode(name: str) -> None:
    model = _model(name)
    step = model.config.temporal_compression
    video = _video(model.config, latent_frames=5)
    with torch.no_grad():
        full = model.encode(video)
        state = model.new_encode_state()
        bounds = [0, 1, 1 + step, 1 + 3 * step, 1 + 4 * step]  # chunks of 1, 1, 2, 1 latent frames
        pieces = [
            model.encode_step(video[:, :, a:b], state) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=STREAM_ATOL, rtol=0)


def test_stream_state_is_constant_size_and_resets() -> None:
    model = _model("vae_tiny")
    with torch.no_grad():
        latent = model.encode(_video(model.config, latent_frames=5))
        state = model.new_decode_state()
        first = model.decode_step(latent[:, :, :1], state)
        sizes = []
        for index in range(1, 5):
            model.decode_step(latent[:, :, index : index + 1], state)
            sizes.append(state.nbytes())
        assert len(set(sizes)) == 1 and sizes[0] > 0  # memory per step does not grow with the stream
        state.reset()
        assert state.nbytes() == 0 and not state.started
        torch.testing.assert_close(model.decode_step(latent[:, :, :1], state), first, atol=0, rtol=0)


def test_streaming_refuses_what_would_break_equality() -> None:
    model = _model("vae_tiny")
    state = model.new_encode_state()
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        model.encode_step(torch.zeros(1, 3, 4, 16, 16), state)
    model.encode_step(torch.zeros(1, 3, 1, 16, 16), state)
    with pytest.raises(ValueError, match="8k frames"):
        model.encode_step(torch.zeros(1, 3, 9, 16, 16), state)
    with pytest.raises(ValueError, match="another"):
        model.decode_step(torch.zeros(1, 8, 1, 2, 2), _model("vae_tiny").new_decode_state())
    config = vae_tiny()
    config.causal_decoder = False
    with pytest.raises(ValueError, match="causal_decoder"):
        CausalVideoVAE(config).decode_step(torch.zeros(1, 8, 1, 2, 2), model.new_decode_state())


# ---------------------------------------------------------------- posterior, latent statistics, training pass


def test_posterior_kl_sample_and_mode() -> None:
    zeros = torch.zeros(2, 4, 1, 2, 2)
    standard = DiagonalGaussian(mean=zeros, logvar=torch.zeros(2, 1, 1, 2, 2))
    torch.testing.assert_close(standard.kl(), torch.zeros(2))
    shifted = DiagonalGaussian(mean=zeros + 1.0, logvar=torch.zeros(2, 1, 1, 2, 2))
    torch.testing.assert_close(shifted.kl(), torch.full((2,), 0.5 * zeros[0].numel()))  # 0.5 * sum(mean^2)
    draw = [shifted.sample(torch.Generator().manual_seed(3)) for _ in range(2)]
    torch.testing.assert_close(draw[0], draw[1], atol=0, rtol=0)
    assert not torch.equal(draw[0], shifted.mode())


def test_forward_mode_reconstruction_equals_decode_of_encode() -> None:
    model = _model("vae_tiny")
    model.latent_norm.set_stats(torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8))
    video = _video(model.config, latent_frames=2)
    with torch.no_grad():
        output = model(video, sample_posterior=False)
        torch.testing.assert_close(output.video, model.decode(model.encode(video)), atol=1e-5, rtol=1e-5)


def test_latent_statistics_normalise_to_zero_mean_unit_std() -> None:
    model = _model("vae_tiny")
    statistics = LatentStatistics(model.config.latent_channels)
    with torch.no_grad():
        for seed in range(2):
            statistics.update(model.encode_posterior(_video(model.config, 2, seed=seed, batch=2)).mode())
        model.latent_norm.set_stats(*statistics.mean_std())
        latents = torch.cat([model.encode(_video(model.config, 2, seed=seed, batch=2)) for seed in range(2)])
    per_channel = latents.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(dim=1), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(dim=1, correction=0), torch.ones(8), atol=1e-4, rtol=0)


def test_latent_statistics_round_trip_through_the_state_dict(tmp_path: Path) -> None:
    model = _model("vae_tiny")
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    model.latent_norm.set_stats(mean, std)
    torch.save(model.state_dict(), tmp_path / "vae.pt")
    restored = _model("vae_tiny", seed=1)
    restored.load_state_dict(torch.load(tmp_path / "vae.pt", weights_only=True))
    torch.testing.assert_close(restored.latent_norm.mean, mean, atol=0, rtol=0)
    torch.testing.assert_close(restored.latent_norm.std, std, atol=0, rtol=0)
    video = _video(model.config, latent_frames=2)
    with torch.no_grad():
        torch.testing.assert_close(restored.encode(video), model.encode(video), atol=0, rtol=0)
    with pytest.raises(ValueError, match="> 0"):
        model.latent_norm.set_stats(mean, -std)


def test_activation_checkpointing_keeps_outputs_and_gradients() -> None:
    video = _video(vae_tiny(), latent_frames=2)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        config = vae_tiny()
        config.activation_checkpointing = checkpointing
        model = CausalVideoVAE(config)
        output = model(video, sample_posterior=False)
        output.video.square().mean().backward()
        results.append((output.video.detach(), model.last_decoder_layer.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-5)
    assert results[0][1].abs().sum() > 0


# ---------------------------------------------------------------- LTX-Video / diffusers parity and key map

LTX_LAYOUTS = {
    # LTX-Video 0.9.0 kinds of blocks: strided-conv downsample, width-change resnets.
    "ltx090": dict(
        latent_channels=8,
        block_out_channels=(8, 16, 16, 32),
        decoder_block_out_channels=(8, 16, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        patch_size=2,
    ),
    # LTX-Video 0.9.5 kinds: space-to-depth downsamples, residual channel-halving upsamples.
    "ltx095": dict(
        latent_channels=8,
        block_out_channels=(8, 16, 16, 32, 32),
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        down_block_types=("LTXVideo095DownBlock3D",) * 4,
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        decoder_inject_noise=(False,) * 4,
        patch_size=2,
        scaling_factor=2.0,
    ),
}


@pytest.fixture(scope="module", params=list(LTX_LAYOUTS))
def ltx_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(diffusers model, folder) of a tiny random AutoencoderKLLTXVideo with random latent statistics."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(0)
    ltx = AutoencoderKLLTXVideo(**LTX_LAYOUTS[request.param]).eval()
    ltx.latents_mean.copy_(torch.randn(8))
    ltx.latents_std.copy_(torch.rand(8) + 0.5)
    folder = tmp_path_factory.mktemp(request.param)
    ltx.save_pretrained(folder)
    return ltx, folder


@pytest.mark.parametrize("causal_decoder", [False, True], ids=["ltx_decoder", "causal_decoder"])
def test_parity_with_diffusers(ltx_folder, causal_decoder: bool) -> None:
    ltx, folder = ltx_folder
    for module in ltx.decoder.modules():  # diffusers fixes causality per conv at construction
        if hasattr(module, "is_causal"):
            module.is_causal = causal_decoder
    model = load_ltx_vae(folder, causal_decoder=causal_decoder).eval()
    assert model.config.causal_decoder is causal_decoder
    video = _video(model.config, latent_frames=3)
    scaling = ltx.config.scaling_factor
    with torch.no_grad():
        theirs = ltx.encode(video).latent_dist
        ours = model.encode_posterior(video)
        torch.testing.assert_close(ours.mean, theirs.mean, atol=PARITY_ATOL, rtol=0)
        torch.testing.assert_close(ours.logvar.expand_as(ours.mean), theirs.logvar, atol=PARITY_ATOL, rtol=0)
        # diffusers' LTX pipeline normalisation: (z - mean) * scaling_factor / std
        mean, std = ltx.latents_mean.view(-1, 1, 1, 1), ltx.latents_std.view(-1, 1, 1, 1)
        expected_latent = (theirs.mean - mean) * scaling / std
        torch.testing.assert_close(model.encode(video), expected_latent, atol=PARITY_ATOL, rtol=1e-5)
        torch.testing.assert_close(
            model.decode(expected_latent), ltx.decode(theirs.mean).sample, atol=PARITY_ATOL, rtol=1e-5
        )


def test_key_map_round_trip_preserves_every_tensor(ltx_folder) -> None:
    ltx, _ = ltx_folder
    state = ltx.state_dict()
    model = CausalVideoVAE(vae_config_from_diffusers(dict(ltx.config)))
    model.load_state_dict(from_ltx_state_dict(model, state))
    back = to_ltx_state_dict(model)
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key


def test_key_map_failure_lists_missing_unused_and_misshaped_keys(ltx_folder) -> None:
    ltx, _ = ltx_folder
    state = dict(ltx.state_dict())
    model = CausalVideoVAE(vae_config_from_diffusers(dict(ltx.config)))
    del state["encoder.conv_in.conv.weight"]
    state["decoder.extra_head.weight"] = torch.zeros(1)
    state["decoder.conv_out.conv.bias"] = torch.zeros(5)
    with pytest.raises(LTXKeyMapError) as error:
        from_ltx_state_dict(model, state)
    message = str(error.value)
    for key in (
        "missing (1): encoder.conv_in.conv.weight",
        "unused (1): decoder.extra_head.weight",
        "mis-shaped (1): decoder.conv_out.conv.bias",
    ):
        assert key in message


def test_unsupported_diffusers_options_are_refused_by_name() -> None:
    config = dict(LTX_LAYOUTS["ltx090"], timestep_conditioning=True)
    with pytest.raises(ValueError, match="timestep_conditioning"):
        vae_config_from_diffusers(config)
    with pytest.raises(ValueError, match="down_block_types"):
        vae_config_from_diffusers(dict(LTX_LAYOUTS["ltx090"], down_block_types=("Other",) * 4))


# ---------------------------------------------------------------- discriminator and GAN losses


def test_discriminator_gives_patch_logits_for_short_clips() -> None:
    torch.manual_seed(0)
    discriminator = PatchDiscriminator3D(DiscriminatorConfig(base_channels=8, num_layers=3, norm_groups=4))
    logits = discriminator(torch.rand(2, 3, 9, 32, 32) * 2 - 1)
    # T: ceil(9/2)=5 -> 3 -> 2, stride-1 layers keep it; H: 32 -> 16 -> 8 -> 4 -> 3 -> 2.
    assert logits.shape == (2, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="norm_groups"):
        DiscriminatorConfig(base_channels=6, norm_groups=8)


def test_hinge_losses() -> None:
    confident_real, confident_fake = torch.full((4,), 2.0), torch.full((4,), -3.0)
    assert hinge_discriminator_loss(confident_real, confident_fake) == 0
    torch.testing.assert_close(hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)), torch.tensor(1.0))
    torch.testing.assert_close(hinge_generator_loss(confident_fake), torch.tensor(3.0))


def test_kl_weighs_against_the_pixel_loss_as_stable_diffusion_does() -> None:
    """LDM's loss sum|x - x'| / B + w * sum KL / B is our mean|x - x'| + w * kl_per_video_value, times
    the values per sample, for every clip size: the KL weight means the same at 32 px as at 512 px."""
    generator = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 9, 16, 16), (3, 3, 17, 32, 32)]:
        video, recon = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        kl = torch.rand(shape[0], generator=generator) * 1e3
        ldm = (video - recon).abs().sum() / shape[0] + 1e-6 * kl.sum() / shape[0]
        ours = (video - recon).abs().mean() + 1e-6 * kl_per_video_value(kl, video)
        torch.testing.assert_close(ours * video[0].numel(), ldm)


def test_motion_weights_favour_pixels_that_change_and_keep_the_loss_scale() -> None:
    video = torch.zeros(2, 3, 9, 8, 8)
    video[:, :, ::2, 2:4, 2:4] = 1.0  # a blinking patch; everything else static
    weights = motion_weights(video, 20.0)
    assert weights.shape == (2, 1, 9, 8, 8)
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    assert weights[:, :, :, 2:4, 2:4].min() > 5 * weights[:, :, :, 5:, 5:].max()
    torch.testing.assert_close(motion_weights(torch.rand(1, 3, 5, 4, 4), 0.0), torch.ones(1, 1, 5, 4, 4))


def test_adaptive_weight_is_the_gradient_norm_ratio() -> None:
    weight = torch.randn(4, 4, requires_grad=True)
    inputs = torch.randn(3, 4)
    reconstruction = (inputs @ weight).abs().mean()
    generator = -(inputs @ weight).mean()
    ratio = adaptive_generator_weight(reconstruction, generator, weight)
    grad_rec = torch.autograd.grad(reconstruction, weight, retain_graph=True)[0].norm()
    grad_gen = torch.autograd.grad(generator, weight, retain_graph=True)[0].norm()
    torch.testing.assert_close(ratio, grad_rec / (grad_gen + 1e-4))
    doubled = adaptive_generator_weight(reconstruction, 2 * generator, weight)
    assert math.isclose(float(doubled), float(ratio) / 2, rel_tol=1e-3)  # scales the GAN gradient to match
    assert not ratio.requires_grad
