"""``rest-train experiment=NAME [key=value ...]``: train one REST stage."""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from rest_lightning.cli.common import run_cli

log = logging.getLogger(__name__)

SUMMARY = ("Train a REST stage (VAE, teacher, ASD student) with Lightning. Outputs go to "
           "runs/<experiment>/<timestamp>/ (or run_dir=...): config.yaml, checkpoints/, logs/, wandb/.")
GROUPS = ("experiment", "data", "stage", "trainer", "strategy", "logger", "cluster")


def _train(cfg: DictConfig) -> None:
    from rest_lightning.training import train

    result = train(cfg)
    if result.last_checkpoint is None and cfg.cluster.kind == "slurm":
        return  # submitted: the job trains; launch() has logged how to follow it
    log.info("done: step %d, run directory %s, last checkpoint %s",
             result.global_step, result.run_dir, result.last_checkpoint)


def _user_errors() -> tuple[type[BaseException], ...]:
    from rest_lightning.checkpoint import CheckpointMismatchError  # imported late: --help stays fast
    from rest_lightning.telemetry import NonFiniteLossError

    return CheckpointMismatchError, NonFiniteLossError


def _multirun_jobs() -> Callable[[list[str], int], list[str]]:
    """``--multirun``: job N of a sweep runs in ``<run_dir>/N``, where run_dir is the one given on the command
    line or ``runs/multirun/<start time>`` (one folder for the sweep)."""
    started = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")

    def job(overrides: list[str], number: int) -> list[str]:
        given = [o for o in overrides if o.lstrip("+").split("=", 1)[0] == "run_dir"]
        base = given[-1].split("=", 1)[1] if given else f"runs/multirun/{started}"
        return [o for o in overrides if o not in given] + [f"run_dir={base}/{number}"]

    return job


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-train", "train", SUMMARY, _train, argv, GROUPS, extra_errors=_user_errors,
                   multirun=_multirun_jobs())


if __name__ == "__main__":
    sys.exit(main())
