"""Build the Lightning strategy named by ``conf/strategy/*.yaml``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def build_strategy(cfg: DictConfig) -> Any:
    """``cfg`` is the ``strategy`` node (see ``rest_lightning.config.StrategyConfig``)."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    name = cfg.name
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=cfg.find_unused_parameters)
    if name == "ddp_spawn":
        return DDPStrategy(start_method="spawn", find_unused_parameters=cfg.find_unused_parameters)
    if name == "deepspeed":
        return DeepSpeedStrategy(
            stage=cfg.zero_stage, offload_optimizer=cfg.offload_optimizer, offload_parameters=cfg.offload_parameters
        )
    if name == "fsdp":
        return FSDPStrategy(sharding_strategy=cfg.sharding_strategy)
    raise ValueError(f"strategy.name={name!r} is not one of auto, ddp, ddp_spawn, deepspeed, fsdp")
