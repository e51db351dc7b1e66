"""Build the Lightning strategy named by ``conf/strategy/*.yaml``.

GPU runs get Lightning's own strategies. The one exception is :class:`CPUDeepSpeedStrategy`, the
**CPU test path** for DeepSpeed: Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA,
while DeepSpeed itself runs ZeRO-2/3 on CPU processes over gloo. The subclass exists so the suite
(and a user without a GPU) can exercise ZeRO checkpoints, resume and export on a laptop; it is picked
only when ``trainer.accelerator=cpu`` and is not meant for speed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from omegaconf import DictConfig

from rest_lightning.run_dir import TEMP_MARK

STRATEGY_NAMES = ("auto", "ddp", "ddp_spawn", "deepspeed", "fsdp")


def swap_in_directory(new: Path, final: Path) -> None:
    """Make the complete folder ``new`` be ``final``: rename any old ``final`` aside, rename ``new`` in,
    delete the old one. A crash leaves either the old complete folder, or (between the two renames) no
    ``final`` and the old one under a temporary name that the next launch deletes; never a half-written
    ``final``. Both must be on one filesystem (they are siblings)."""
    old = final.with_name(f".{final.name}.old{TEMP_MARK}{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
    if old.exists():
        shutil.rmtree(old)


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` whose ZeRO checkpoints appear complete or not at all.

    DeepSpeed writes a checkpoint folder file by file from every rank, so a job killed mid-save left a
    ``last.ckpt/`` that ``resume=auto`` would try to load. Here every rank saves into a temporary sibling
    ``.NAME.tmp-PID`` (rank 0's PID), and once all ranks are done rank 0 renames it into place
    (:func:`swap_in_directory`); a killed save leaves only the temporary folder, which the next launch
    deletes (``RunDir.remove_stale_temp_files``).
    """

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        final = Path(self.broadcast(str(filepath)))
        tmp = final.with_name(f".{final.name}{TEMP_MARK}{self.broadcast(os.getpid())}")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("atomic_zero_save_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("atomic_zero_save_written")
        if self.is_global_zero:
            swap_in_directory(tmp, final)
        self.barrier("atomic_zero_save_done")


class CPUDeepSpeedStrategy(AtomicDeepSpeedStrategy):
    """CPU TEST PATH: Lightning's ``DeepSpeedStrategy`` on CPU processes (gloo), for tests and laptops.

    Three overrides, nothing else (see ../shared/reference/environment.md, "DeepSpeed on CPU"):
    skip the CUDA-only accelerator check, put each rank on ``cpu:<local_rank>``, and initialise
    DeepSpeed's process group without the CUDA device-index validation. Checkpoints it writes are
    ordinary ZeRO directories, identical in layout to the GPU strategy's.
    """

    strategy_name = "deepspeed_cpu"

    def setup_environment(self) -> None:
        # DeepSpeedStrategy.setup_environment raises unless the accelerator is CUDA; its parent's
        # (DDPStrategy) sets up the accelerator and process group, which is all CPU needs.
        from lightning.pytorch.strategies import DDPStrategy

        DDPStrategy.setup_environment(self)

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()


def build_strategy(cfg: DictConfig, stage_has_unused_parameters: bool = False, accelerator: str = "auto") -> Any:
    """The ``strategy`` argument of ``lightning.Trainer``.

    Args:
        cfg: the ``strategy`` config node (``rest_lightning.config.StrategyConfig``).
        stage_has_unused_parameters: ``RestStage.has_unused_parameters`` of the stage class.
        accelerator: ``trainer.accelerator``; ``cpu`` with ``strategy.name=deepspeed`` selects the
            CPU test path (:class:`CPUDeepSpeedStrategy`).
    """
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    name = cfg.name
    find_unused = cfg.find_unused_parameters or stage_has_unused_parameters
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=find_unused)
    if name == "ddp_spawn":
        return DDPStrategy(start_method="spawn", find_unused_parameters=find_unused)
    if name == "deepspeed":
        cls = CPUDeepSpeedStrategy if accelerator == "cpu" else AtomicDeepSpeedStrategy
        kwargs: dict[str, Any] = {}
        if accelerator == "cpu":
            # Offloading to the CPU from the CPU moves nothing; DeepSpeed would still insist on its
            # CPU Adam (a 45 s JIT build) for the client optimizer. Allow the stage's own optimizer.
            kwargs["zero_force_ds_cpu_optimizer"] = False
        strategy = cls(
            stage=cfg.zero_stage,
            offload_optimizer=cfg.offload_optimizer,
            offload_parameters=cfg.offload_parameters,
            # DeepSpeed otherwise asks for a batch size it cannot infer from our iterable loaders.
            logging_batch_size_per_gpu=1,
        )
        if kwargs and strategy.config is not None:
            strategy.config.update(kwargs)
        return strategy
    if name == "fsdp":
        return FSDPStrategy(sharding_strategy=cfg.sharding_strategy)
    raise ValueError(f"strategy.name={name!r} is not one of {', '.join(STRATEGY_NAMES)}")
