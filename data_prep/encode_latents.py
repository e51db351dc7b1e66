"""Encode rest-prep shards with a trained VAE: new shards whose samples also carry ``latent.npy``.

Stages 2-3 then read latents (``data.cfg.mode=latent``) instead of running the VAE encoder in every
training step (DESIGN §4.1). Every sample is copied as it is (video, audio, reference, metadata) and
gains ``latent.npy``: the VAE's *normalised* latent of the clip, ``(C, 1 + k, H/s, W/s)`` float32, i.e.
exactly what ``CausalVideoVAE.encode`` returns and what the diffusion stages train on.

Shards are written as ``.partial`` and renamed when closed, and the manifest (the list readers trust) is
written last, so an interrupted run leaves no output a reader would accept; ``cluster.array=N`` spreads
the shards over array tasks (``data_prep/augment.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.augment import augment_shards, check_roots, claim_output, finish_manifest, write_manifest
from rest_lightning.data.codecs import decode_mp4
from rest_lightning.data.schema import LATENT_KEY

log = logging.getLogger(__name__)

VIDEO_KEY = "video.mp4"


@dataclass
class EncodeConfig:
    """``rest-prep mode=encode input=SHARDS output=DIR encode.vae=CKPT``."""

    vae: str = ""  # a VAE-stage checkpoint or `rest-ckpt export` file (weights only; EMA weights preferred)
    batch_size: int = 4  # clips encoded together
    device: str = "cpu"  # cpu | cuda | cuda:N
    progress: bool = True  # tqdm progress bar on stderr

    def __post_init__(self) -> None:
        if not self.vae:
            raise ValueError("encode.vae is empty: set encode.vae=PATH (a VAE-stage checkpoint)")
        if self.batch_size < 1:
            raise ValueError(f"encode.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EncodeSummary:
    clips: int
    splits: dict[str, int]
    latent_shape: tuple[int, ...]
    elapsed_s: float


def load_frozen_vae(path: str | Path, device: torch.device):
    """The VAE of a VAE-stage checkpoint, its architecture read from the checkpoint's own metadata."""
    from rest_lightning.checkpoint import CheckpointMismatchError, load_user_state
    from rest_lightning.conditioning import FrozenVAE
    from rest_lightning.models.vae import VAEConfig

    _, meta = load_user_state(path)
    vae_config = meta.get("config", {}).get("vae")
    if meta.get("stage") != "vae" or vae_config is None:
        raise CheckpointMismatchError(
            f"encode.vae={str(path)!r} is not a VAE-stage checkpoint (stage {meta.get('stage')!r}); train one "
            "with `rest-train experiment=vae` (or tiny_vae) and pass its last.ckpt"
        )
    frozen = FrozenVAE.load(VAEConfig(**vae_config), path)
    frozen.vae.to(device)
    return frozen


def encode_shards(
    input_root: str | Path, output_root: str | Path, cfg: EncodeConfig, step: str = "all",
    task: tuple[int, int] | None = None,
) -> EncodeSummary:
    """Copy every split of ``input_root`` (a rest-prep output) to ``output_root`` with latents added.

    ``step="task"`` with ``task=(i, n)``: only array task i's slice of the shards (no manifest; its summary
    counts the clips it wrote); ``step="merge"``: only the manifest, once every shard exists.
    """
    start = time.perf_counter()
    input_root, output_root = Path(input_root), Path(output_root)
    manifest = check_roots(input_root, output_root)
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    claim_output(output_root, input_root, LATENT_KEY, settings, fresh=step == "all")
    if step != "merge":
        device = torch.device(cfg.device)
        frozen = load_frozen_vae(cfg.vae, device)
        written = augment_shards(
            input_root, output_root, manifest, LATENT_KEY, lambda batch: _encode(frozen, batch, device),
            cfg.batch_size, cfg.progress, "rest-prep encode", task=task if step == "task" else None,
        )
        if step == "task":
            return EncodeSummary(written, {}, (), time.perf_counter() - start)
    counts, latent_shape, manifest = finish_manifest(output_root, manifest, LATENT_KEY)
    manifest["latent"] = {"shape": list(latent_shape), "vae": str(cfg.vae), "dtype": "float32", "normalised": True}
    write_manifest(output_root, manifest)
    return EncodeSummary(sum(counts.values()), counts, latent_shape, time.perf_counter() - start)


def _encode(frozen, samples: list[dict], device: torch.device) -> list[np.ndarray]:
    """Samples -> their normalised latents ``(C, 1 + k, h, w)`` float32, one per sample."""
    videos = [torch.from_numpy(decode_mp4(s[VIDEO_KEY])) for s in samples]  # (T, H, W, 3) uint8 each
    video = torch.stack(videos).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)  # (B, 3, T, H, W)
    latents = frozen.encode_video(video.to(device))
    return [z.float().cpu().numpy() for z in latents]
