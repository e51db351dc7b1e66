"""The cross-field checks of a ``rest-train`` config (``validate_train_config``): what Hydra's schema cannot
express, run before any model, process group or run directory exists. Above ``config`` (which imports no
stage code) because it imports the stage class a config names."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rest_lightning.config import (
    CLUSTER_KINDS,
    LOGGER_KINDS,
    PRECISIONS,
    RESUME_MODES,
    STRATEGY_NAMES,
    ConfigError,
    TrainConfig,
    list_options,
)


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def stage_class(cfg: DictConfig) -> type:
    """The LightningModule class that ``stage._target_`` names (imported, not instantiated)."""
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, "stage._target_")
    if not target:
        raise ConfigError(
            "no stage configured: pick an experiment, e.g. `rest-train experiment=tiny_vae data.cfg.root=SHARDS` "
            f"(available: {', '.join(list_options('experiment'))})"
        )
    try:
        return get_class(target)
    except Exception as err:  # Hydra raises ImportError wrapped in its own type
        raise ConfigError(f"stage._target_={target!r} cannot be imported: {err}") from None


# Trainer arguments rest-train sets itself (training._fit): a trainer.* value for them would collide.
TRAINER_ARGS_SET_BY_TRAIN = ("strategy", "plugins", "default_root_dir", "logger", "callbacks",
                             "enable_progress_bar", "enable_model_summary")


def _did_you_mean(key: str, allowed: list[str], section: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {section}{close[0]}?)" if close else ""


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys a ``+key=value`` / ``++key=value`` override added that nothing reads: at the root
    and in each typed section against its schema, in ``trainer`` against ``lightning.Trainer``'s
    arguments (any of them may be added; those rest-train sets itself may not). Hydra lets ``+`` add a
    key to a typed config, so without this a typo ran until ``Trainer.__init__`` refused it, after the
    run directory was created.

    The free-form sections are ``data``, ``model`` and ``stage`` (typed ``Any``). ``data`` and ``stage``
    keys are the arguments of the classes their ``_target_`` names and are checked when those are
    instantiated (``training.instantiate_node``, still before the run directory exists), which covers
    keys inside ``model.*`` configs the stage interpolates; a new top-level ``model.NAME`` that no stage
    interpolates is not read and not refused."""
    import dataclasses
    import inspect

    import lightning

    root = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in cfg:
        if key not in root:
            raise ConfigError(f"{key}: not a rest-train config key{_did_you_mean(str(key), sorted(root))}; remove it")
    trainer_args = sorted(set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"})
    for key in cfg.trainer:
        if key in TRAINER_ARGS_SET_BY_TRAIN:
            raise ConfigError(f"trainer.{key} is set by rest-train itself (see the strategy, logger and checkpoint "
                              "groups); remove it")
        if key not in trainer_args:
            raise ConfigError(f"trainer.{key}: lightning.Trainer has no argument {key!r}"
                              f"{_did_you_mean(str(key), trainer_args, 'trainer.')}; remove or fix it")
    for field_ in dataclasses.fields(TrainConfig):
        if dataclasses.is_dataclass(field_.default_factory) and field_.name != "trainer":
            known = sorted(f.name for f in dataclasses.fields(field_.default_factory))
            for key in cfg[field_.name]:
                if key not in known:
                    raise ConfigError(f"{field_.name}.{key}: not a key of {field_.name}"
                                      f"{_did_you_mean(str(key), known, field_.name + '.')}; remove or fix it")


def validate_train_config(cfg: DictConfig) -> None:
    """Cross-field checks Hydra's schema cannot express. Raises ConfigError naming the key."""
    check_known_keys(cfg)
    resume = cfg.resume
    if resume not in RESUME_MODES and not Path(resume).expanduser().exists():
        raise ConfigError(
            f"resume={resume!r} is neither one of {', '.join(RESUME_MODES)} nor an existing checkpoint "
            "(a file, or a DeepSpeed ZeRO directory)"
        )
    if cfg.init_from is not None and not Path(cfg.init_from).expanduser().exists():
        raise ConfigError(f"init_from={cfg.init_from!r} does not exist")
    _choice(cfg, "logger.kind", LOGGER_KINDS)
    for key in cfg.required:
        if OmegaConf.select(cfg, key) in (None, ""):
            raise ConfigError(f"experiment {cfg.name} needs {key}=... (it is null); set it on the command line")
    _choice(cfg, "strategy.name", STRATEGY_NAMES)
    _choice(cfg, "cluster.kind", CLUSTER_KINDS)
    _choice(cfg, "trainer.precision", PRECISIONS)
    if cfg.trainer.max_steps == -1 and cfg.trainer.max_epochs is None:
        raise ConfigError("set trainer.max_steps (or trainer.max_epochs): the run would never end")
    if cfg.checkpoint.every_n_steps < 1:
        raise ConfigError(f"checkpoint.every_n_steps={cfg.checkpoint.every_n_steps} must be >= 1")
    if cfg.telemetry.max_nonfinite_steps < 1:
        raise ConfigError(f"telemetry.max_nonfinite_steps={cfg.telemetry.max_nonfinite_steps} must be >= 1")
    if cfg.telemetry.peak_flops is not None and cfg.telemetry.peak_flops <= 0:
        raise ConfigError(f"telemetry.peak_flops={cfg.telemetry.peak_flops} must be > 0 (FLOP/s per device) or null")
    if cfg.checkpoint.keep_last == 0 or cfg.checkpoint.keep_last < -1:
        raise ConfigError(f"checkpoint.keep_last={cfg.checkpoint.keep_last} must be >= 1, or -1 to keep all")

    from rest_lightning.stages.base import RestStage

    stage_cls = stage_class(cfg)
    if not issubclass(stage_cls, RestStage):
        raise ConfigError(f"stage._target_={cfg.stage._target_!r} is not a rest_lightning RestStage subclass")
    n_optimizers = stage_cls.num_optimizers
    if stage_cls.manual_optimization and cfg.trainer.gradient_clip_val is not None:
        raise ConfigError(
            f"stage {stage_cls.__name__} optimizes manually and clips its own gradients (stage.optim.grad_clip); "
            f"set trainer.gradient_clip_val=null (got {cfg.trainer.gradient_clip_val})"
        )
    if cfg.strategy.name == "deepspeed":
        # trainer.accelerator=cpu runs the CPU test path (launch/strategies.py: CPUDeepSpeedStrategy).
        if cfg.trainer.accelerator == "cpu" and cfg.trainer.precision not in ("32-true", "32", "bf16-mixed"):
            raise ConfigError(
                f"strategy=deepspeed_* on trainer.accelerator=cpu runs in trainer.precision=32-true or bf16-mixed, "
                f"got {cfg.trainer.precision!r}"
            )
        if n_optimizers != 1:
            raise ConfigError(
                f"strategy=deepspeed_* cannot train stage {stage_cls.__name__}: it steps {n_optimizers} "
                "optimizers and Lightning's DeepSpeed strategy accepts one. Use strategy=ddp or strategy=fsdp."
            )
        if cfg.strategy.zero_stage not in (1, 2, 3):
            raise ConfigError(f"strategy.zero_stage={cfg.strategy.zero_stage} must be 1, 2 or 3")
