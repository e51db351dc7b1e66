"""``rest-demo``: run the pipeline end to end on built-in data, as far as it is built, and print where
the outputs are. Each step calls the same library function as its own CLI:

1. synthetic talking-head corpus (``rest-prep mode=synth``);
2. prep to WebDataset shards (``rest-prep``), manifest summary printed;
3. stage 1, the tiny causal VAE (``rest-train experiment=tiny_vae``), with a side-by-side
   reconstruction video.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from rest_lightning.cli.common import run_cli
from rest_lightning.config import compose

log = logging.getLogger(__name__)

SUMMARY = "Run the REST pipeline end to end on built-in data on a CPU and print where the outputs are."


def _demo(cfg: DictConfig) -> None:
    from rest_lightning.cli.prep import run as run_prep_cli
    from rest_lightning.training import train

    out = Path(cfg.out_dir).resolve()
    outputs: dict[str, Path | None] = {}
    raw, shards = out / "raw", out / "shards"

    log.info("[demo 1/3] synthetic talking-head corpus -> %s", raw)
    run_prep_cli(compose("prep", [
        "mode=synth", f"output={raw}", f"synth.seed={cfg.seed}",
        *(f"synth.{k}={v}" for k, v in cfg.synth.items()),
    ]))
    outputs["synthetic videos"] = raw

    log.info("[demo 2/3] rest-prep -> %s", shards)
    run_prep_cli(compose("prep", [
        f"input={raw}", f"output={shards}", f"prep.seed={cfg.seed}", "prep.progress=false",
        *(f"prep.{k}={v}" for k, v in cfg.prep.items()),
    ]))
    outputs["shards"] = shards
    outputs["manifest"] = shards / "manifest.json"

    log.info("[demo 3/3] stage 1: tiny causal VAE")
    vae = train(compose("train", [
        "experiment=tiny_vae", f"data.cfg.root={shards}", f"data.cfg.latent_frames={cfg.prep.latent_frames}",
        f"run_dir={out / 'runs' / 'tiny_vae'}", "resume=never", f"seed={cfg.seed}",
        f"trainer.max_steps={cfg.vae_steps}", f"trainer.val_check_interval={cfg.vae_steps}",
        f"checkpoint.every_n_steps={cfg.vae_steps}", f"stage.loss.disc_start={cfg.vae_steps // 2}",
    ]))
    outputs["VAE run"] = vae.run_dir
    outputs["VAE checkpoint"] = vae.last_checkpoint
    videos = sorted((vae.run_dir / "media").glob("reconstruction_step*.mp4"))
    outputs["VAE reconstruction"] = videos[-1] if videos else None

    print("\nrest-demo finished. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:<20} {path}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-demo", "demo", SUMMARY, _demo, argv)


if __name__ == "__main__":
    sys.exit(main())
