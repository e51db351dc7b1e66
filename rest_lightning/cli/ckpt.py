"""``rest-ckpt info|export ckpt=PATH [out=FILE.safetensors] [ema=true]``: checkpoint inspection and export
(``conf/ckpt.yaml``; the library functions are in ``rest_lightning.export``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError

COMMANDS = ("info", "export")
SUMMARY = ("Inspect or export a checkpoint (a Lightning .ckpt file or a DeepSpeed ZeRO directory).\n"
           "  rest-ckpt info ckpt=PATH                       stage, step, config, tensors/bytes, optimizer/EMA (JSON)\n"
           "  rest-ckpt export ckpt=PATH out=F.safetensors   one float32 safetensors file + F.json card\n"
           "      [ema=true]                                 the EMA weights instead of the trained ones\n"
           "The exported file loads with init_from=F.safetensors (its stage is checked).")


@dataclass
class CkptConfig:
    command: str = "info"
    ckpt: str = "???"
    out: str | None = None
    ema: bool = False


def ckpt_schema() -> type:
    """Root schema of conf/ckpt.yaml."""
    return CkptConfig


def _ckpt(cfg: DictConfig) -> None:
    from rest_lightning.export import checkpoint_info, export_checkpoint

    if cfg.command not in COMMANDS:
        raise ConfigError(f"command={cfg.command!r} is not one of {', '.join(COMMANDS)}")
    if cfg.command == "info":
        print(json.dumps(checkpoint_info(cfg.ckpt), indent=2, default=str), flush=True)
        return
    if not cfg.out:
        raise ConfigError("rest-ckpt export needs out=FILE.safetensors")
    if not str(cfg.out).endswith(".safetensors"):
        raise ConfigError(f"out={cfg.out!r} must end in .safetensors")
    card = export_checkpoint(cfg.ckpt, cfg.out, ema=cfg.ema)
    print(f"wrote {cfg.out} ({card.tensors} tensors, {card.bytes} bytes, {card.weights} weights, "
          f"stage {card.stage}, step {card.step}) and its card {str(cfg.out)[:-len('.safetensors')]}.json", flush=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from rest_lightning.checkpoint import CheckpointMismatchError  # imported late: --help stays fast

    return CheckpointMismatchError, ValueError


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:  # `rest-ckpt export ...` == `rest-ckpt command=export ...`
        args = [f"command={args[0]}", *args[1:]]
    return run_cli("rest-ckpt", "ckpt", SUMMARY, _ckpt, args, extra_errors=_user_errors)


if __name__ == "__main__":
    sys.exit(main())
