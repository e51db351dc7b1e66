"""Load LTX-Video VAE weights (diffusers `AutoencoderKLLTXVideo` layout) into `CausalVideoVAE`, strictly.

REST's predecessor used LTX-Video's 32x32x8 VAE; starting from it saves weeks of GPU time (DESIGN
§4.1). Three pieces:

- `vae_config_from_diffusers`: a diffusers `config.json` dict -> `VAEConfig` (LTX-Video 0.9.0 and 0.9.5
  layouts; decoder timestep conditioning and noise injection are refused, naming the key).
- `ltx_key_map(model)`: our state-dict key -> diffusers key, built from explicit renames. Loading
  (`load_ltx_weights`) fails listing every missing, unused and mis-shaped key (STYLE rule 17);
  `to_ltx_state_dict` goes back, so weights round-trip.
- `load_ltx_vae(path)`: a local folder (config.json + *.safetensors) -> a ready `CausalVideoVAE`.
  Nothing is downloaded.

diffusers normalises latents as (z - latents_mean) * scaling_factor / latents_std; we keep
(z - mean) / std, so the loader folds `scaling_factor` into std (std / scaling_factor).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from safetensors.torch import load_file

from rest_lightning.models.vae import CausalVideoVAE
from rest_lightning.models.vae_config import (
    DecoderStageConfig,
    Downsample,
    EncoderStageConfig,
    MidConfig,
    Upsample,
    VAEConfig,
)

logger = logging.getLogger(__name__)

# Ours -> diffusers, applied in order to every key (later rules see earlier rules' output).
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^(encoder|decoder)\.mid\.", r"\1.mid_block."),
    (r"^encoder\.stages\.(\d+)\.width_change\.", r"encoder.down_blocks.\1.conv_out."),
    (r"^decoder\.stages\.(\d+)\.width_change\.", r"decoder.up_blocks.\1.conv_in."),
    (r"^encoder\.stages\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^decoder\.stages\.(\d+)\.upsample\.", r"decoder.up_blocks.\1.upsamplers.0."),
    (r"^encoder\.stages\.", "encoder.down_blocks."),
    (r"^decoder\.stages\.", "decoder.up_blocks."),
    (r"^latent_norm\.mean$", "latents_mean"),
    (r"^latent_norm\.std$", "latents_std"),
)

_LTX_090_BLOCK = "LTXVideoDownBlock3D"
_LTX_095_BLOCK = "LTXVideo095DownBlock3D"
_LTX_DOWNSAMPLE = {
    "conv": Downsample.CONV,
    "spatial": Downsample.SPACE,
    "temporal": Downsample.TIME,
    "spatiotemporal": Downsample.SPACE_TIME,
}
_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"


class LTXKeyMapError(ValueError):
    """Weights and model disagree; the message lists every missing, unused and mis-shaped key."""


def ltx_key_map(model: CausalVideoVAE) -> dict[str, str]:
    """Our state-dict key -> diffusers `AutoencoderKLLTXVideo` key, for every tensor of `model`."""
    mapping = {}
    for key in model.state_dict():
        mapped = key
        for pattern, replacement in _RENAMES:
            mapped = re.sub(pattern, replacement, mapped)
        mapping[key] = mapped
    return mapping


def from_ltx_state_dict(model: CausalVideoVAE, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers-layout `state` -> our state dict for `model`; raises `LTXKeyMapError` listing all problems."""
    mapping = ltx_key_map(model)
    ours = model.state_dict()
    missing = sorted(theirs for theirs in mapping.values() if theirs not in state)
    known = set(mapping.values())
    unused = sorted(key for key in state if key not in known)
    misshaped = sorted(
        f"{theirs}: weights {tuple(state[theirs].shape)} vs model {tuple(ours[key].shape)}"
        for key, theirs in mapping.items()
        if theirs in state and tuple(state[theirs].shape) != tuple(ours[key].shape)
    )
    if missing or unused or misshaped:
        lines = ["LTX-Video VAE weights do not fit this VAEConfig (model.vae):"]
        for title, keys in (("missing", missing), ("unused", unused), ("mis-shaped", misshaped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        lines.append("Build the config with vae_config_from_diffusers(config.json) or load_ltx_vae(path).")
        raise LTXKeyMapError("\n".join(lines))
    return {key: state[theirs] for key, theirs in mapping.items()}


def to_ltx_state_dict(model: CausalVideoVAE) -> dict[str, torch.Tensor]:
    """Our weights in diffusers `AutoencoderKLLTXVideo` layout (the inverse of `from_ltx_state_dict`)."""
    mapping = ltx_key_map(model)
    return {mapping[key]: value for key, value in model.state_dict().items()}


def load_ltx_weights(model: CausalVideoVAE, state: Mapping[str, torch.Tensor]) -> None:
    """Copy diffusers-layout weights into `model` in place; strict (see `from_ltx_state_dict`)."""
    model.load_state_dict(from_ltx_state_dict(model, state), strict=True)


def vae_config_from_diffusers(config: Mapping, causal_decoder: bool | None = None) -> VAEConfig:
    """A diffusers `AutoencoderKLLTXVideo` config dict -> `VAEConfig`.

    `causal_decoder=None` keeps the config's `decoder_causal`; True re-pads the decoder causally.
    """
    _refuse(config, "patch_size_t", lambda value: value != 1, "temporal patchify is not supported")
    _refuse(config, "timestep_conditioning", bool, "decoder timestep conditioning is not supported")
    _refuse(config, "decoder_inject_noise", any, "decoder noise injection is not supported")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise ValueError("diffusers config in_channels != out_channels; a VAE reconstructs its input")

    block_types = set(config.get("down_block_types", [_LTX_090_BLOCK]))
    if len(block_types) != 1 or not block_types <= {_LTX_090_BLOCK, _LTX_095_BLOCK}:
        raise ValueError(
            f"diffusers config down_block_types={sorted(block_types)}: expected all {_LTX_090_BLOCK} "
            f"(LTX-Video 0.9.0) or all {_LTX_095_BLOCK} (0.9.5)"
        )
    is_095 = block_types == {_LTX_095_BLOCK}
    widths = list(config["block_out_channels"])
    layers = list(config["layers_per_block"])
    scaling = list(config["spatio_temporal_scaling"])
    downsample_types = list(config.get("downsample_type", ["conv"] * len(widths)))
    num_stages = len(widths) - 1 if is_095 else len(widths)
    encoder_stages = []
    for index in range(num_stages):
        kind = Downsample.NONE
        if scaling[index]:
            kind = _LTX_DOWNSAMPLE[downsample_types[index]] if is_095 else Downsample.CONV
        if is_095 and not kind.pixel_shuffle and widths[index] != widths[index + 1]:
            raise ValueError(
                f"diffusers 0.9.5 block {index} changes width without a space-to-depth downsample; "
                "diffusers itself cannot run this config"
            )
        encoder_stages.append(EncoderStageConfig(widths[index], layers[index], kind))

    decoder_widths = list(reversed(config["decoder_block_out_channels"]))
    decoder_layers = list(reversed(config["decoder_layers_per_block"]))
    decoder_scaling = list(reversed(config["decoder_spatio_temporal_scaling"]))
    residual = list(reversed(config.get("upsample_residual", [False] * len(decoder_widths))))
    factors = list(reversed(config.get("upsample_factor", [1] * len(decoder_widths))))
    decoder_stages = [
        DecoderStageConfig(
            channels=decoder_widths[index] // factors[index],
            num_layers=decoder_layers[index + 1],
            upsample=Upsample.SPACE_TIME if decoder_scaling[index] else Upsample.NONE,
            upsample_residual=bool(residual[index]) and bool(decoder_scaling[index]),
            upsample_channel_factor=factors[index] if decoder_scaling[index] else 1,
        )
        for index in range(len(decoder_widths))
    ]
    return VAEConfig(
        video_channels=config.get("in_channels", 3),
        latent_channels=config["latent_channels"],
        patch_size=config["patch_size"],
        encoder_stages=tuple(encoder_stages),
        encoder_mid=MidConfig(widths[-1], layers[-1]),
        decoder_mid=MidConfig(decoder_widths[0], decoder_layers[0]),
        decoder_stages=tuple(decoder_stages),
        causal_encoder=bool(config.get("encoder_causal", True)),
        causal_decoder=bool(config.get("decoder_causal", False))
        if causal_decoder is None
        else causal_decoder,
        shortcut_norm_eps=float(config.get("resnet_norm_eps", VAEConfig.shortcut_norm_eps)),
    )


def read_ltx_folder(path: str | PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, diffusers-layout state dict) of a local diffusers VAE folder; safetensors only."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: model.vae.pretrained must be a local diffusers AutoencoderKLLTXVideo "
            "folder (e.g. the `vae/` folder of an LTX-Video download)"
        )
    config = json.loads(config_file.read_text())
    if (folder / _WEIGHTS_FILE).is_file():
        state = load_file(folder / _WEIGHTS_FILE)
    elif (folder / _WEIGHTS_INDEX).is_file():
        shards = sorted(set(json.loads((folder / _WEIGHTS_INDEX).read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(folder / shard))
    else:
        raise FileNotFoundError(
            f"no {_WEIGHTS_FILE} (or its index) in {folder}; only safetensors weights are loaded"
        )
    return config, state


def load_ltx_vae(path: str | PathLike, causal_decoder: bool | None = None) -> CausalVideoVAE:
    """A `CausalVideoVAE` with the architecture and weights of a local diffusers LTX-Video VAE folder."""
    diffusers_config, state = read_ltx_folder(path)
    model = CausalVideoVAE(vae_config_from_diffusers(diffusers_config, causal_decoder=causal_decoder))
    load_ltx_weights(model, state)
    scaling_factor = float(diffusers_config.get("scaling_factor", 1.0))
    if scaling_factor != 1.0:
        model.latent_norm.set_stats(model.latent_norm.mean, model.latent_norm.std / scaling_factor)
    logger.info("loaded LTX-Video VAE from %s (causal_decoder=%s)", path, model.config.causal_decoder)
    return model


def _refuse(config: Mapping, key: str, is_bad, why: str) -> None:
    if key in config and is_bad(config[key]):
        raise ValueError(f"diffusers config {key}={config[key]!r}: {why} by CausalVideoVAE")
