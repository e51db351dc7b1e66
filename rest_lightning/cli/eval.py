"""``rest-eval``: the paper-table evaluation suite (``conf/eval.yaml``, the ``eval/`` package).

    rest-eval testset=TESTSET protocol=hdtf_v1 ckpts={rest:STUDENT.ckpt} vae_ckpt=VAE.ckpt \
        eval.weights.fid_inception=... eval.weights.i3d=... eval.weights.syncnet=... eval.weights.arcface=... \
        eval.weights.lpips_alex=... bench={rest:bench.json} out=eval_hdtf
    rest-eval mode=table results=[eval_hdtf/results.json,eval_mead/results.json] out=tables
    rest-eval mode=table protocol=synthtalk_v1 results=[seed0,seed1,seed2] out=pooled   # one folder per seed
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError, fields_schema

SUMMARY = (
    "Evaluate talking-head systems on a test set under a versioned protocol (eval/protocols/*.yaml): generate "
    "each checkpoint's videos through the streaming engine (ckpts={name:PATH}, sharded over ranks, resumable) or "
    "score folders of generated videos (videos={name:DIR}); FID, FVD, Sync-C/D, CSIM, LPIPS/PSNR/SSIM with "
    "bootstrap intervals, FPS from rest-bench (bench={name:JSON}), a real-video row and the paper's reported "
    "numbers. Writes <out>/results.json, table.md, table.tex, drift.csv. testset= a manifest .json, a rest-prep "
    "output folder (testset_split=test) or a folder of videos. mode=table merges results=[...] into one table. "
    "Metric weights: eval.weights.<fid_inception|i3d|syncnet|arcface|lpips_alex>=PATH; "
    "eval.allow_random_weights=true runs without them (every number labelled uncalibrated)."
)
MODES = ("run", "table")


def eval_schema() -> type:
    """Root schema of conf/eval.yaml (unknown or misspelled keys fail at compose)."""
    from eval.bootstrap import BootstrapConfig
    from eval.synthtalk import SynthTalkSettings
    from rest_lightning.metrics import MetricWeightsConfig

    bootstrap_fields = fields_schema("BootstrapFields", BootstrapConfig)
    synthtalk_fields = fields_schema("SynthTalkFields", SynthTalkSettings)

    @dataclass
    class MetricsSection:
        networks: str = "reference"  # reference (eval.weights.*) | tiny (random stand-ins for smoke runs)
        allow_random_weights: bool = False
        device: str = "auto"
        weights: MetricWeightsConfig = field(default_factory=MetricWeightsConfig)

    @dataclass
    class WandbSection:
        enabled: bool = False
        project: str = "rest"
        entity: str | None = None
        mode: str = "offline"
        name: str | None = None

    @dataclass
    class EvalRoot:
        mode: str = "run"
        testset: str = ""
        testset_split: str = "test"
        protocol: str = "hdtf_v1"
        out: str = "eval_out"
        tables: list[str] = field(default_factory=lambda: ["main", "reconstruction", "speed"])
        # name -> path maps are untyped nulls: a typed dict in struct mode refuses `ckpts={a:PATH}` (a merge
        # that adds keys), while a null takes the whole dict as its value.
        ckpts: Any = None
        vae_ckpt: str | None = None
        videos: Any = None
        system_overrides: Any = None
        generate: list[str] = field(default_factory=list)
        bench: Any = None
        results: list[str] = field(default_factory=list)
        rank: int | None = None
        world_size: int | None = None
        wait_timeout_s: float = 3600.0
        max_items: int | None = None
        bootstrap: Any = field(default_factory=bootstrap_fields)
        eval: MetricsSection = field(default_factory=MetricsSection)
        wandb: WandbSection = field(default_factory=WandbSection)
        synthtalk: Any = field(default_factory=synthtalk_fields)

    # Postponed annotations (from __future__) name these local classes as strings, which OmegaConf
    # cannot resolve; hand it the classes themselves (as cli/prep.py does).
    MetricsSection.__annotations__.update(weights=MetricWeightsConfig)
    EvalRoot.__annotations__.update(bootstrap=bootstrap_fields, eval=MetricsSection, wandb=WandbSection,
                                    synthtalk=synthtalk_fields)
    return EvalRoot


def run(cfg: DictConfig) -> Any:
    from eval.manifest import ManifestError
    from eval.protocol import ProtocolError
    from eval.report import render_tables
    from eval.runner import run_eval
    from eval.synthtalk import PROTOCOL as SYNTHTALK
    from eval.synthtalk import pool_runs
    from eval.synthtalk import run as run_synthtalk
    from rest_lightning.stored_models import StoredModelError

    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not one of {', '.join(MODES)}")
    vet_eval_checkpoints(cfg)
    try:
        if cfg.protocol == SYNTHTALK and cfg.mode == "run":
            return run_synthtalk(cfg)
        if cfg.protocol == SYNTHTALK:  # mode=table: one rest-eval out folder per training seed, pooled
            if not cfg.results:
                raise ConfigError("protocol=synthtalk_v1 mode=table needs results=[DIR,...]: the out folders of "
                                  "one synthtalk_v1 run per training seed")
            table = pool_runs({Path(p).name: Path(p) for p in cfg.results}, Path(cfg.out))
            print(table.read_text())
            return table
        path = run_eval(cfg) if cfg.mode == "run" else render_tables(cfg)
        if path is not None:  # rank 0: the tables it wrote
            out = Path(cfg.out).expanduser()
            print((out / "table.md").read_text())
            if cfg.mode == "run":
                print(f"rest-eval: wrote {path}, {out / 'table.md'}, {out / 'table.tex'}, {out / 'drift.csv'}")
        return path
    except (ManifestError, ProtocolError, StoredModelError, FileNotFoundError, ValueError, TimeoutError) as err:
        raise ConfigError(str(err)) from None


def vet_eval_checkpoints(cfg: DictConfig) -> None:
    """Refuse, before any work, a ``ckpts.NAME`` or ``vae_ckpt`` file that is not weights only."""
    from rest_lightning.checkpoint import CheckpointMismatchError, vet_checkpoint

    paths = {f"ckpts.{name}": path for name, path in (cfg.ckpts or {}).items()} | {"vae_ckpt": cfg.vae_ckpt}
    for key, path in paths.items():
        if path and not str(path).endswith(".safetensors"):
            try:
                vet_checkpoint(Path(str(path)).expanduser(), source=f"{key}={path}")
            except CheckpointMismatchError as err:
                raise ConfigError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-eval", "eval", SUMMARY, run, argv)


if __name__ == "__main__":
    sys.exit(main())
