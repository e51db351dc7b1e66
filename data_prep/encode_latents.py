"""Encode rest-prep shards with a trained VAE: new shards whose samples also carry ``latent.npy``.

Stages 2-3 then read latents (``data.cfg.mode=latent``) instead of running the VAE encoder in every
training step (DESIGN §4.1). Every sample is copied as it is (video, audio, reference, metadata) and
gains ``latent.npy``: the VAE's *normalised* latent of the clip, ``(C, 1 + k, H/s, W/s)`` float32, i.e.
exactly what ``CausalVideoVAE.encode`` returns and what the diffusion stages train on.

Shards are written as ``.partial`` and renamed when closed, and the manifest (the list readers trust) is
written last, so an interrupted run leaves no output a reader would accept; run it again from scratch.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rest_lightning.data.codecs import decode_mp4
from rest_lightning.data.schema import LATENT_KEY
from rest_lightning.data.shard_index import CorpusIndex

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
    from rest_lightning.models.vae import VAEConfig
    from rest_lightning.stages.conditioning import FrozenVAE

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


def encode_shards(input_root: str | Path, output_root: str | Path, cfg: EncodeConfig) -> EncodeSummary:
    """Copy every split of ``input_root`` (a rest-prep output) to ``output_root`` with latents added."""
    import webdataset as wds

    start = time.perf_counter()
    input_root, output_root = Path(input_root), Path(output_root)
    if input_root.resolve() == output_root.resolve():
        raise ValueError("output must differ from input: the input shards are read while the output is written")
    manifest = json.loads((input_root / "manifest.json").read_text())
    device = torch.device(cfg.device)
    frozen = load_frozen_vae(cfg.vae, device)
    output_root.mkdir(parents=True, exist_ok=True)

    counts: dict[str, int] = {}
    latent_shape: tuple[int, ...] = ()
    total = sum(split["clips"] for split in manifest["splits"].values())
    bar = tqdm(total=total, unit="clip", desc="rest-prep encode", disable=not cfg.progress, dynamic_ncols=True)
    for split, info in manifest["splits"].items():
        corpus = CorpusIndex.from_manifest(input_root, split)
        new_shards = []
        first = 0  # corpus index of the shard's first sample (manifest order)
        for entry in info["shards"]:
            rel = Path(entry["path"])
            out_path = output_root / rel
            out_path.parent.mkdir(parents=True, exist_ok=True)
            partial = out_path.with_name(out_path.name + ".partial")
            samples = [corpus.read(first + i) for i in range(entry["count"])]
            first += entry["count"]
            with wds.TarWriter(str(partial)) as writer:
                for lo in range(0, len(samples), cfg.batch_size):
                    batch = samples[lo: lo + cfg.batch_size]
                    latents = _encode(frozen, batch, device)
                    for sample, latent in zip(batch, latents, strict=True):
                        latent_shape = tuple(latent.shape)
                        buf = io.BytesIO()
                        np.save(buf, latent, allow_pickle=False)
                        writer.write({**sample, LATENT_KEY: buf.getvalue()})
                    bar.update(len(batch))
            os.replace(partial, out_path)
            new_shards.append({**entry, "bytes": out_path.stat().st_size})
        counts[split] = sum(e["count"] for e in info["shards"])
        manifest["splits"][split] = {**info, "shards": new_shards}
    bar.close()

    manifest["latent"] = {"shape": list(latent_shape), "vae": str(cfg.vae), "dtype": "float32", "normalised": True}
    tmp = output_root / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, output_root / "manifest.json")
    return EncodeSummary(sum(counts.values()), counts, latent_shape, time.perf_counter() - start)


def _encode(frozen, samples: list[dict], device: torch.device) -> list[np.ndarray]:
    """Samples -> their normalised latents ``(C, 1 + k, h, w)`` float32, one per sample."""
    videos = [torch.from_numpy(decode_mp4(s[VIDEO_KEY])) for s in samples]  # (T, H, W, 3) uint8 each
    video = torch.stack(videos).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)  # (B, 3, T, H, W)
    latents = frozen.encode_video(video.to(device))
    return [z.float().cpu().numpy() for z in latents]
