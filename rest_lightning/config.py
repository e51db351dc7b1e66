"""Composing and validating the Hydra configs under ``conf/``.

Every entry point composes its root config (``conf/<entry>.yaml``) through :func:`compose`, which
registers the typed schemas below and turns Hydra/OmegaConf failures into :class:`ConfigError` with the
key and the allowed values; ``rest_lightning.train_config.validate_train_config`` adds the cross-field
checks of a training config. A bad config therefore fails before any model or process group is built,
with a message instead of a traceback (the CLI prints ``ConfigError`` and exits with status 2).
This module imports no stage, model or Lightning code: everything may import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR_ENV = "REST_CONF_DIR"


class ConfigError(ValueError):
    """A config that cannot run: the message names the key, what arrived and what is allowed."""


def conf_dir() -> Path:
    """The ``conf/`` tree: ``$REST_CONF_DIR`` if set, else the one beside the installed package."""
    env = os.environ.get(CONF_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "conf"
    if not (path / "train.yaml").is_file():
        raise ConfigError(
            f"config tree not found at {path} (no train.yaml). Install rest-lightning editable from its "
            f"repository (`make install`) or point {CONF_DIR_ENV} at the repository's conf/ folder."
        )
    return path


def list_options(group: str) -> list[str]:
    """Names of the YAML files in ``conf/<group>/`` (the values ``group=NAME`` accepts), sorted."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


# --- typed schemas (Hydra checks types and unknown keys against these at compose time) -------------


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` that configs may set; anything else is refused as unknown."""

    accelerator: str = "auto"
    devices: Any = "auto"  # int, list of ids, or "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_steps: int = -1
    max_epochs: int | None = None
    val_check_interval: Any = None  # int (steps) or float (fraction of an epoch); None = once per epoch
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 50
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    deterministic: Any = False  # True, False or "warn"
    benchmark: bool | None = None


@dataclass
class CheckpointConfig:
    every_n_steps: int = 1000  # design choice: a few minutes of work on a GPU node is the most a crash loses
    keep_last: int = 3  # step checkpoints kept besides last.ckpt (-1 keeps all)


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | csv | none
    project: str = "rest"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False


@dataclass
class StrategyConfig:
    name: str = "auto"  # auto | ddp | ddp_spawn | deepspeed | fsdp
    zero_stage: int | None = None  # DeepSpeed ZeRO stage (2 or 3)
    offload_optimizer: bool = False
    offload_parameters: bool = False
    find_unused_parameters: bool = False
    sharding_strategy: str = "FULL_SHARD"  # FSDP
    activation_checkpointing: bool = False


@dataclass
class TelemetryConfig:
    """``telemetry.*``: the Telemetry and NonFiniteGuard callbacks (rest_lightning/telemetry.py)."""

    enabled: bool = True  # throughput, data wait, grad norm, peak memory, MFU under train/
    # Peak FLOP/s of one device in the training dtype, e.g. 989e12 for an H100 SXM in bf16 dense (NVIDIA
    # datasheet); null: train/mfu is not logged.
    peak_flops: float | None = None
    max_nonfinite_steps: int = 5  # design choice: non-finite losses in a row before the run stops


@dataclass
class ClusterConfig:
    kind: str = "local"  # local | slurm
    submit: bool = True
    partition: str | None = None
    account: str | None = None
    time: str = "24:00:00"
    # --signal=SIGUSR1@signal_lead_s: the margin before the time limit for one training step, the checkpoint
    # and the requeue (launch/requeue.py)
    # (design choice, DESIGN §7: a paper-scale save takes ~1 min). SLURM may send it up to 60 s earlier.
    signal_lead_s: int = 90
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 8
    mem: str = "0"
    extra_sbatch: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)  # shell lines run in the sbatch script before srun
    array: int = 1  # rest-prep only: N array tasks, each a slice of the inputs, then a merge job


@dataclass
class TrainConfig:
    """Root schema of ``conf/train.yaml`` (``rest-train``)."""

    name: str = "default"  # experiment name: runs/<name>/<timestamp>/
    seed: int = 0
    run_dir: str | None = None  # fixed run directory; relaunching with the same one continues it
    runs_root: str = "runs"
    resume: str = "auto"  # auto (newest checkpoint in run_dir) | never | PATH to a checkpoint of this run
    init_from: str | None = None  # weights only, from a file a user hands in (weights_only / safetensors)
    init_from_strict: bool = True
    init_from_key_map: dict[str, str] = field(default_factory=dict)  # source prefix -> target prefix
    # The Hydra overrides this config was composed with, recorded by compose(): provenance in
    # config.yaml, and what a SLURM job re-composes its config from.
    overrides: list[str] = field(default_factory=list)
    # Keys an experiment needs set to a real value before it can run (e.g. a pretrained weights path).
    # A `???` in an experiment cannot express this when the group file already holds a null: OmegaConf
    # ignores a missing value merged over a set one. validate_train_config refuses a null or empty one.
    required: list[str] = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    data: Any = None
    model: Any = None
    stage: Any = None


_SCHEMAS: dict[str, type] = {"train_schema": TrainConfig}
# Schemas built from other packages' dataclasses, imported only when a config is composed.
_SCHEMA_FACTORIES: dict[str, str] = {
    "prep_schema": "rest_lightning.cli.prep:prep_schema",
    "doctor_schema": "rest_lightning.launch.doctor:doctor_schema",
    "ckpt_schema": "rest_lightning.cli.ckpt:ckpt_schema",
    "eval_schema": "rest_lightning.cli.eval:eval_schema",
}

RESUME_MODES = ("auto", "never")
LOGGER_KINDS = ("wandb", "csv", "none")
STRATEGY_NAMES = ("auto", "ddp", "ddp_spawn", "deepspeed", "fsdp")
CLUSTER_KINDS = ("local", "slurm")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


def fields_schema(name: str, source: type, exclude: tuple[str, ...] = ()) -> type:
    """A schema dataclass with ``source``'s fields, types and defaults minus ``exclude``, without
    ``source.__post_init__``: so a YAML root can expose a config dataclass's fields as typed keys
    while the dataclass stays the one place its defaults live."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(source)
    spec = []
    for f in dataclasses.fields(source):
        if f.name in exclude:
            continue
        spec.append((f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory)))
    return dataclasses.make_dataclass(name, spec)


def _register_schemas() -> None:
    import importlib

    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in _SCHEMAS.items():
        store.store(name=name, node=node)
    for name, target in _SCHEMA_FACTORIES.items():
        module, attr = target.split(":")
        store.store(name=name, node=getattr(importlib.import_module(module), attr)())


def compose(
    config_name: str, overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra ``key=value`` overrides (``return_hydra_config``: with
    Hydra's own ``hydra`` node too, for ``--cfg hydra|all`` and ``--info``).

    Raises:
        ConfigError: unknown group option (the message lists the allowed ones), unknown key, wrong
            type, or a malformed override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides),
                                return_hydra_config=return_hydra_config)
            if "overrides" in cfg:
                cfg.overrides = [o for o in overrides if not o.startswith("overrides=")]
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_hydra_message(err)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _hydra_message(err: BaseException) -> str:
    """Hydra's own message plus its cause (where the useful part, e.g. the bad key, often lives)."""
    # Hydra appends its search path to "Could not find ..." messages: noise for a user.
    parts = [str(err).split("\nConfig search path:")[0].strip()]
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip() and str(cause).strip() not in parts[0]:
        parts.append(str(cause).strip())
    return "\n".join(parts)


def check_int(cfg: DictConfig, key: str) -> None:
    """Refuse ``key`` unless it is an integer (an untyped YAML value takes any string)."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer")
