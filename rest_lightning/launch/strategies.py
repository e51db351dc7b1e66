"""Build the Lightning strategy named by ``conf/strategy/*.yaml``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def build_strategy(cfg: DictConfig, stage_has_unused_parameters: bool = False) -> Any:
    """``cfg`` is the ``strategy`` node (see ``rest_lightning.config.StrategyConfig``);
    ``stage_has_unused_parameters`` comes from the stage class (``RestStage.has_unused_parameters``)."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    name = cfg.name
    find_unused = cfg.find_unused_parameters or stage_has_unused_parameters
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=find_unused)
    if name == "ddp_spawn":
        return DDPStrategy(start_method="spawn", find_unused_parameters=find_unused)
    if name == "deepspeed":
        return DeepSpeedStrategy(
            stage=cfg.zero_stage, offload_optimizer=cfg.offload_optimizer, offload_parameters=cfg.offload_parameters
        )
    if name == "fsdp":
        return FSDPStrategy(sharding_strategy=cfg.sharding_strategy)
    raise ValueError(f"strategy.name={name!r} is not one of auto, ddp, ddp_spawn, deepspeed, fsdp")
