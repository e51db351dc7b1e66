"""``train(cfg)``: the one function behind ``rest-train`` (and the tests, which call it directly).

Steps: fix the run directory -> seed -> build data, stage, logger, callbacks, strategy -> pick the
checkpoint to resume -> ``Trainer.fit``. The CLI only composes the config and calls this.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rest_lightning.config import ConfigError
from rest_lightning.run_dir import RunDir
from rest_lightning.train_config import validate_train_config
from rest_lightning.warnings_log import third_party_warnings_to

log = logging.getLogger(__name__)

RUN_DIR_ENV = "REST_RUN_DIR"  # set by rank 0 so processes Lightning launches reuse its run directory


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    global_step: int


def _global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _interactive() -> bool:
    return sys.stderr.isatty() and "SLURM_JOB_ID" not in os.environ and not os.environ.get("CI")


def instantiate_node(node: DictConfig, key: str) -> Any:
    """``hydra.utils.instantiate`` with config errors (a dataclass ``__post_init__`` refusing a value,
    an unknown argument) turned into :class:`ConfigError` naming the config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        return instantiate(node, _convert_="object")
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"{key}: {cause}") from None
    except MissingMandatoryValue as err:  # a `???` nobody set, e.g. data.cfg.root
        raise ConfigError(f"{err.full_key}=... is required (it is ???); set it on the command line") from None


def build_logger(cfg: DictConfig, run_dir: RunDir) -> Any:
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        from rest_lightning.csv_logger import RunCSVLogger

        return RunCSVLogger(save_dir=str(run_dir.logs))  # appends across resumes (csv_logger.py)
    from lightning.pytorch.loggers import WandbLogger

    # Offline unless a key is present (or the user chose a mode): never block on a login prompt.
    offline = os.environ.get("WANDB_MODE") == "offline" or not os.environ.get("WANDB_API_KEY")
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=f"{cfg.name}/{run_dir.path.name}",
        save_dir=str(run_dir.path),
        id=run_dir.wandb_run_id(),
        resume="allow",
        offline=offline,
        tags=list(cfg.logger.tags),
        log_model=cfg.logger.log_model,
    )


def build_callbacks(cfg: DictConfig, run_dir: RunDir) -> list[Any]:
    from lightning.pytorch.callbacks import LearningRateMonitor

    from rest_lightning.callbacks import (
        PlainProgressLog,
        RankAgreement,
        RunCheckpoint,
        RunProvenance,
        StepProgressBar,
        StepSeed,
    )
    from rest_lightning.run_dir import git_sha
    from rest_lightning.telemetry import NonFiniteGuard, Telemetry

    callbacks: list[Any] = [
        RunCheckpoint(run_dir.checkpoints, cfg.checkpoint.every_n_steps, cfg.checkpoint.keep_last),
        RunProvenance(run_dir.path, git_sha(), cfg.strategy.name),
        StepSeed(cfg.seed),
        NonFiniteGuard(cfg.telemetry.max_nonfinite_steps, run_dir.checkpoints),
    ]
    if cfg.telemetry.enabled and cfg.logger.kind != "none":
        callbacks.append(Telemetry(cfg.telemetry.peak_flops, cfg.trainer.log_every_n_steps))
    if cfg.logger.kind != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.strategy.name in ("ddp", "ddp_spawn") or (cfg.strategy.name == "deepspeed" and cfg.strategy.zero_stage < 3):
        callbacks.append(RankAgreement(run_dir.logs))  # replicated weights: every rank's must be equal
    callbacks.append(StepProgressBar() if _interactive() else PlainProgressLog(cfg.trainer.log_every_n_steps))
    return callbacks


def vet_input_checkpoints(cfg: DictConfig) -> None:
    """Vet, before any stage code loads them, the files handed in through ``init_from`` and every
    ``stage.*_checkpoint`` key, so that a refusal names the key the path came from."""
    from rest_lightning.checkpoint import vet_checkpoint

    keys = {"init_from": cfg.init_from}
    stage = cfg.stage if isinstance(cfg.stage, DictConfig) else {}
    keys |= {f"stage.{key}": stage.get(key) for key in stage if str(key).endswith("_checkpoint")}
    for key, path in keys.items():
        if not path:
            continue
        path = Path(str(path)).expanduser()
        if path.suffix == ".safetensors":
            continue  # no pickle in the format: nothing to vet
        vet_checkpoint(path, source=f"{key}={path}")


def check_resume_compatible(stage: Any, ckpt_path: Path, strategy_name: str) -> None:
    """Refuse, before any process group starts, a checkpoint of another stage or config, or one the
    configured strategy cannot read (a DeepSpeed ZeRO directory needs strategy=deepspeed_*, and a
    single file cannot restore DeepSpeed's partitioned optimizer)."""
    from rest_lightning.checkpoint import (
        META_KEY,
        CheckpointMismatchError,
        is_zero_checkpoint,
        read_checkpoint_header,
    )

    zero = is_zero_checkpoint(ckpt_path)
    if zero != (strategy_name == "deepspeed"):
        kind = "a DeepSpeed ZeRO directory" if zero else "a single-file checkpoint"
        raise CheckpointMismatchError(
            f"resume checkpoint {ckpt_path} is {kind}, which strategy={strategy_name} cannot resume. Resume with "
            f"the strategy that wrote it ({'strategy=deepspeed_zero2/3' if zero else 'ddp, fsdp or auto'}), or "
            f"start a new run_dir with init_from={ckpt_path} (weights only)."
        )
    meta = read_checkpoint_header(ckpt_path).get(META_KEY, {})
    stage.check_compatible(meta, source=f"resume checkpoint {ckpt_path}", resume=True)


def train(cfg: DictConfig) -> TrainResult:
    """Train the stage ``cfg.stage`` names; returns where the run lives and its last checkpoint."""
    validate_train_config(cfg)
    if cfg.cluster.kind == "slurm":
        from rest_lightning.launch.slurm import launch

        # Outside a job: render + submit the sbatch script (the job trains). Inside: check the allocation.
        submission = launch(cfg)
        if submission is not None:
            return TrainResult(submission.run_dir, None, 0)

    # Everything that can refuse the config runs before the run directory is written, so a bad value
    # leaves no empty run behind; and every checkpoint file is vetted before anything unpickles it.
    is_rank_zero = _global_rank() == 0
    if not is_rank_zero and RUN_DIR_ENV in os.environ:
        cfg = OmegaConf.merge(cfg, {"run_dir": os.environ[RUN_DIR_ENV]})
    run_dir = RunDir.resolve(cfg)
    if is_rank_zero:
        run_dir.remove_stale_temp_files()
    from rest_lightning.checkpoint import select_resume_checkpoint

    ckpt_path = select_resume_checkpoint(cfg, run_dir)
    vet_input_checkpoints(cfg)

    # Seed first: the stage's initial weights come from it.
    from lightning.fabric.utilities.seed import seed_everything

    seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_node(cfg.data, "data")
    stage = instantiate_node(cfg.stage, "stage")

    if ckpt_path is not None:
        check_resume_compatible(stage, ckpt_path, cfg.strategy.name)
        log.info("resuming from %s", ckpt_path)
        if cfg.init_from:
            log.warning("init_from=%s ignored: resuming the run's own checkpoint %s", cfg.init_from, ckpt_path)
    elif cfg.init_from:
        stage.load_init_from(cfg.init_from, strict=cfg.init_from_strict, key_map=dict(cfg.init_from_key_map))

    run_dir.prepare(cfg, write=is_rank_zero)
    log.info("run directory: %s", run_dir.path)
    previous_env = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.path)
    try:
        with third_party_warnings_to(run_dir.logs / "warnings.log", write=is_rank_zero):
            return _fit(cfg, run_dir, is_rank_zero, datamodule, stage, ckpt_path)
    finally:
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env


def _fit(cfg: DictConfig, run_dir: RunDir, is_rank_zero: bool, datamodule: Any, stage: Any,
         ckpt_path: Path | None) -> TrainResult:
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from rest_lightning.callbacks import RunCheckpoint
    from rest_lightning.checkpoint import AtomicCheckpointIO, is_zero_checkpoint
    from rest_lightning.launch.requeue import RequeueOnSignal
    from rest_lightning.launch.slurm import REQUEUE_SIGNAL
    from rest_lightning.launch.strategies import build_strategy

    # Passed as-is: every TrainerConfig default is Lightning's own, and None is meaningful for some keys
    # (check_val_every_n_epoch=None makes val_check_interval count global steps).
    trainer_kwargs = OmegaConf.to_container(cfg.trainer)
    plugins: list[Any] = [AtomicCheckpointIO()] if cfg.strategy.name != "deepspeed" else []
    callbacks = build_callbacks(cfg, run_dir)
    if SLURMEnvironment.detect():
        # Lightning would save inside the requeue signal's handler and can hang a multi-node job there
        # (launch/requeue.py); RequeueOnSignal saves at a step boundary every rank shares instead.
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(RequeueOnSignal(getattr(signal, REQUEUE_SIGNAL)))
    trainer = L.Trainer(
        **trainer_kwargs,
        strategy=build_strategy(cfg.strategy, type(stage).has_unused_parameters, cfg.trainer.accelerator),
        plugins=plugins or None,
        default_root_dir=str(run_dir.checkpoints),
        logger=build_logger(cfg, run_dir),
        callbacks=callbacks,
        enable_progress_bar=_interactive(),
        enable_model_summary=is_rank_zero,
    )
    if trainer.logger:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    # The file was vetted (select_resume_checkpoint); Lightning reads it weights-only as well. A ZeRO
    # directory is read by DeepSpeed, which cannot be told to: its pickles were checked instead.
    weights_only = ckpt_path is not None and not is_zero_checkpoint(ckpt_path)
    try:
        trainer.fit(stage, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=weights_only or None)
    finally:
        if cfg.logger.kind == "wandb" and is_rank_zero:
            import wandb

            wandb.finish()  # close the run so a later train() in this process starts (or resumes) its own

    # The last checkpoint this run wrote; a resume that had nothing left to train wrote none, and then
    # the one it resumed from is the run's last state.
    checkpoint = next(c for c in trainer.callbacks if isinstance(c, RunCheckpoint))
    last = Path(checkpoint.last_model_path) if checkpoint.last_model_path else ckpt_path
    return TrainResult(run_dir.path, last if last is not None and last.exists() else None, trainer.global_step)
