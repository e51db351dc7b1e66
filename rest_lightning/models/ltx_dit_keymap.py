"""LTX-Video transformer weights (diffusers ``LTXVideoTransformer3DModel`` folder) -> our ``DiT``.

Self-attention, MLP, AdaLN tables, timestep embedding, input/output projections map one to one. LTX's
text cross-attention (``attn2``) becomes our frame-level audio cross-attention (same shapes, because
LTX projects captions to the model width first): reused when ``DiTConfig.pretrained_cross_attention``,
else re-initialised. LTX's ``caption_projection`` (4096-d T5 features) is ignored unless
``DiTConfig.pretrained_audio_projection`` and ``audio_dim`` equals its input width. The load is strict
(STYLE rule 17): any source key that maps nowhere, any model key neither loaded nor expected to be
re-initialised, and any shape mismatch fails with the full list.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from rest_lightning.models.dit import DiT

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
TORCH_FILE = "diffusion_pytorch_model.bin"

# (pattern, replacement) applied in order; diffusers name -> ours.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^time_embed\.emb\.timestep_embedder\.", "time_embed.timestep_embedder."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.proj_in."),
    (r"\.ff\.net\.2\.", ".ff.proj_out."),
    (r"^caption_projection\.", "audio_projection."),
)
_CROSS_ATTENTION = re.compile(r"^transformer_blocks\.\d+\.attn2\.")
_AUDIO_PROJECTION = re.compile(r"^audio_projection\.")
_ALWAYS_NEW = ("null_audio", "null_ref")  # no LTX counterpart: classifier-free-guidance stand-ins


class LTXWeightsError(ValueError):
    """LTX-Video weights that cannot initialise this DiT; the message lists every offending key."""


@dataclass
class LoadReport:
    """What a load did. ``loaded``/``reinitialised`` are our keys; ``ignored`` are source keys."""

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def group(keys: list[str]) -> str:
            prefixes = sorted(
                {
                    re.sub(r"^transformer_blocks\.\d+\.", "transformer_blocks.*.", k).rsplit(".", 1)[0]
                    for k in keys
                }
            )
            return ", ".join(prefixes) if prefixes else "-"

        return (
            f"loaded {len(self.loaded)} tensors; re-initialised {len(self.reinitialised)} "
            f"({group(self.reinitialised)}); ignored {len(self.ignored)} ({group(self.ignored)})"
        )


def ltx_key_to_ours(key: str) -> str:
    """Rename one diffusers ``LTXVideoTransformer3DModel`` key to our ``DiT`` naming."""
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _transformer_folder(path: Path) -> Path:
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / "transformer" / CONFIG_FILE).is_file():  # a whole LTX-Video pipeline folder
        return path / "transformer"
    raise FileNotFoundError(
        f"no LTX-Video transformer at {path}: expected {CONFIG_FILE} and {SAFETENSORS_FILE} (or the sharded "
        f"{SAFETENSORS_INDEX}) there or under {path / 'transformer'}. Set model.dit.pretrained to a local "
        "diffusers LTXVideoTransformer3DModel folder (save_pretrained / a downloaded snapshot)."
    )


def read_ltx_state_dict(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """``(config, state_dict)`` of a local diffusers LTX-Video transformer folder (never the network)."""
    folder = _transformer_folder(Path(path))
    config = json.loads((folder / CONFIG_FILE).read_text())
    if (folder / SAFETENSORS_FILE).is_file():
        from safetensors.torch import load_file

        return config, load_file(folder / SAFETENSORS_FILE)
    if (folder / SAFETENSORS_INDEX).is_file():
        from safetensors.torch import load_file

        shards = sorted(set(json.loads((folder / SAFETENSORS_INDEX).read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: shards listed in {SAFETENSORS_INDEX} are missing: {missing}")
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return config, state
    if (folder / TORCH_FILE).is_file():
        return config, torch.load(folder / TORCH_FILE, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{folder} has {CONFIG_FILE} but no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {TORCH_FILE}"
    )


def check_ltx_config(model: DiT, ltx: dict) -> None:
    """Refuse an LTX-Video config whose architecture differs from ``model.config``; names both keys."""
    cfg = model.config
    expected = {
        "in_channels": ("latent_channels", cfg.latent_channels),
        "out_channels": ("latent_channels", cfg.latent_channels),
        "num_layers": ("num_layers", cfg.num_layers),
        "num_attention_heads": ("num_heads", cfg.num_heads),
        "attention_head_dim": ("width / num_heads", cfg.head_dim),
        "cross_attention_dim": ("width", cfg.width),
        "norm_eps": ("norm_eps", cfg.norm_eps),
    }
    fixed = {
        "patch_size": 1,
        "patch_size_t": 1,
        "activation_fn": "gelu-approximate",
        "qk_norm": "rms_norm_across_heads",
        "norm_elementwise_affine": False,
        "attention_bias": True,
        "attention_out_bias": True,
    }
    problems = []
    for key, (ours, value) in expected.items():
        if key in ltx and ltx[key] != value:
            problems.append(f"{key}={ltx[key]!r} but DiTConfig.{ours}={value!r}")
    for key, value in fixed.items():
        if key in ltx and ltx[key] != value:
            problems.append(f"{key}={ltx[key]!r} but this DiT implements {key}={value!r} only")
    if cfg.pretrained_audio_projection and ltx.get("caption_channels") != cfg.audio_dim:
        problems.append(
            f"caption_channels={ltx.get('caption_channels')!r} but DiTConfig.audio_dim={cfg.audio_dim}: set "
            "DiTConfig.pretrained_audio_projection=false or audio_dim to the caption width"
        )
    if problems:
        raise LTXWeightsError("LTX-Video config does not match the DiT:\n  " + "\n  ".join(problems))


def load_ltx_transformer_weights(model: DiT, path: str | Path) -> LoadReport:
    """Initialise ``model`` from a local diffusers ``LTXVideoTransformer3DModel`` folder, strictly.

    Returns:
        ``LoadReport`` (also logged). Raises ``LTXWeightsError`` listing unmapped source keys, model keys
        left without a value, and shape mismatches; ``FileNotFoundError`` naming missing files.
    """
    ltx_config, source = read_ltx_state_dict(path)
    check_ltx_config(model, ltx_config)
    cfg = model.config
    target = model.state_dict()
    report = LoadReport()
    unmapped, mismatched, updates = [], [], {}
    for key, tensor in source.items():
        ours = ltx_key_to_ours(key)
        reuse = not (
            (_CROSS_ATTENTION.match(ours) and not cfg.pretrained_cross_attention)
            or (_AUDIO_PROJECTION.match(ours) and not cfg.pretrained_audio_projection)
        )
        if not reuse:
            report.ignored.append(key)
        elif ours not in target:
            unmapped.append(key)
        elif target[ours].shape != tensor.shape:
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {ours} {tuple(target[ours].shape)}")
        else:
            updates[ours] = tensor
    expected_new = {
        k
        for k in target
        if k in _ALWAYS_NEW
        or (_CROSS_ATTENTION.match(k) and not cfg.pretrained_cross_attention)
        or (_AUDIO_PROJECTION.match(k) and not cfg.pretrained_audio_projection)
    }
    missing = sorted(k for k in target if k not in updates and k not in expected_new)
    if unmapped or mismatched or missing:
        lines = [f"unmapped source key: {k}" for k in unmapped]
        lines += [f"shape mismatch: {m}" for m in mismatched]
        lines += [f"no value for model key: {k}" for k in missing]
        raise LTXWeightsError(
            f"refusing a partial load of {path} into the DiT ({len(lines)} problems):\n  "
            + "\n  ".join(lines)
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        for key, tensor in updates.items():
            params[key].copy_(tensor.to(dtype=params[key].dtype, device=params[key].device))
    report.loaded = sorted(updates)
    report.reinitialised = sorted(expected_new)
    report.ignored.sort()
    logger.info("LTX-Video weights from %s: %s", path, report.summary())
    return report
