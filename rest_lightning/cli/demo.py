"""``rest-demo``: run the pipeline end to end on built-in data, as far as it is built, and print where
the outputs are. Each step calls the same library function as its own CLI."""

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
    from rest_lightning.training import train

    out = Path(cfg.out_dir).resolve()
    outputs: dict[str, Path] = {}

    log.info("[demo] train: tiny_wiring (foundation wiring stage; replaced by the VAE stage in issue 4)")
    wiring = train(compose("train", [
        "experiment=tiny_wiring", f"run_dir={out / 'runs' / 'tiny_wiring'}", "resume=never", f"seed={cfg.seed}",
    ]))
    outputs["wiring run"] = wiring.run_dir
    outputs["wiring checkpoint"] = wiring.last_checkpoint

    print("\nrest-demo finished. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:<20} {path}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-demo", "demo", SUMMARY, _demo, argv)


if __name__ == "__main__":
    sys.exit(main())
