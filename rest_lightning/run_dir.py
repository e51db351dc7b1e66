"""The run directory: one folder per run, fixed once, shared by every rank and every relaunch.

Layout (DESIGN §9)::

    runs/<experiment>/<timestamp>/
        config.yaml          the composed config of the latest launch (earlier ones in configs/)
        git_sha.txt          commit of the code that ran (with "-dirty" when the tree had changes)
        wandb_run_id.txt     so a resumed run continues the same W&B run
        checkpoints/         last.ckpt, step=XXXXXXXX.ckpt, hpc_ckpt_N.ckpt (SLURM requeue)
        logs/                CSV logger output
        wandb/               W&B files (offline runs included)

A run directory is one run. A relaunch with the same ``run_dir=...`` reuses the folder and
``resume=auto`` continues from its newest checkpoint; ``resume=never`` on a folder that already holds
checkpoints is refused (training.py), since a second run there would mix its checkpoints and logs with
the first one's. Under SLURM the folder is chosen at submission and passed explicitly, so ranks and
requeues never race on a timestamp.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"  # atomic writes go to ".NAME.tmp-PID" and are renamed to NAME when complete


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def wandb_id_file(self) -> Path:
        return self.path / "wandb_run_id.txt"

    @classmethod
    def resolve(cls, cfg: DictConfig) -> RunDir:
        """``cfg.run_dir`` if set, else a new ``<runs_root>/<name>/<UTC timestamp>`` folder."""
        if cfg.run_dir:
            return cls(Path(cfg.run_dir).expanduser().resolve())
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        return cls((Path(cfg.runs_root) / cfg.name / stamp).expanduser().resolve())

    def prepare(self, cfg: DictConfig, *, write: bool = True) -> None:
        """Create the folders and record the config and code version (``write`` only on rank 0)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if not write:
            return
        if self.config_file.exists():
            # Keep every launch's config: a relaunch may change overrides (e.g. more max_steps).
            history = self.path / "configs"
            history.mkdir(exist_ok=True)
            n = len(list(history.glob("config-*.yaml")))
            self.config_file.replace(history / f"config-{n:03d}.yaml")
        _atomic_write_text(self.config_file, OmegaConf.to_yaml(cfg, resolve=True))
        _atomic_write_text(self.path / "git_sha.txt", git_sha() + "\n")

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the ``.NAME.tmp-PID`` files a save killed mid-write left (checkpoint.AtomicCheckpointIO,
        :func:`_atomic_write_text`); returns them. Call on rank 0 before training starts, when no save of
        this run can be in flight."""
        stale = [p for folder in (self.path, self.checkpoints) if folder.is_dir()
                 for p in folder.glob(".*" + TEMP_MARK + "*")]
        for p in stale:
            if p.is_dir():  # a DeepSpeed ZeRO save (launch/strategies.py: AtomicDeepSpeedStrategy)
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted save", p)
        return stale

    def wandb_run_id(self) -> str:
        """The W&B run id kept beside the checkpoints, created on first use."""
        if self.wandb_id_file.exists():
            return self.wandb_id_file.read_text().strip()
        run_id = secrets.token_hex(4)
        _atomic_write_text(self.wandb_id_file, run_id + "\n")
        return run_id


def git_sha() -> str:
    """Commit of the source tree this package runs from ("unknown" outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
