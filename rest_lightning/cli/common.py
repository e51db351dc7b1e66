"""What every ``rest-*`` entry point shares: argument handling, ``--help``, clear config errors.

Each CLI is ``main(argv) -> int``: Hydra ``key=value`` overrides in, the composed config handed to one
library function. As with a Hydra app: ``--help`` lists the config groups and their options, ``--cfg
job|hydra|all`` (``-c``) prints the composed config, ``--info`` what it was composed from, and
``--multirun`` (``-m``) runs one job per combination of comma-separated values or ``range(...)`` sweeps
(where the command supports it, each job in its own run directory). A bad config or input is reported as
one message (no traceback) with exit status 2.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from rest_lightning.config import ConfigError, compose, conf_dir, list_options

EXIT_USAGE = 2

# Errors that mean "your input or config is wrong", not "the program has a bug".
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_text(err: BaseException) -> str:
    """The message of a user error as printed: without terminal escapes (a library's bold or colour
    codes would reach log files raw)."""
    return _ANSI_RE.sub("", str(err))


def setup_logging() -> None:
    level = os.environ.get("REST_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Lightning prints through its own handlers; propagating too would print each of its lines twice.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).propagate = False


def help_text(prog: str, config_name: str, summary: str, groups: Sequence[str]) -> str:
    lines = [
        f"usage: {prog} [--help] [--cfg job|hydra|all] [--info] [--multirun] [key=value ...]",
        "",
        summary,
        "",
        f"Config: {conf_dir() / (config_name + '.yaml')} composed with Hydra overrides, e.g.",
        "  group=option      pick a config group option (listed below)",
        "  key.sub=value     set a value      +key=value  add a key the config lacks",
        "",
        "Options:",
        "  -h, --help        show this help and exit",
        "  -c, --cfg [PART]  print the composed config and exit: job (default), hydra or all",
        "  --info            print the config directory, the group choices and the overrides, and exit",
        "  -m, --multirun    one job per combination of swept values (a=1,2 b=range(0,3)), one after another",
    ]
    for group in groups:
        options = list_options(group)
        if options:
            lines += ["", f"{group}=", *(f"  {name}" for name in options)]
    return "\n".join(lines)


CFG_PARTS = ("job", "hydra", "all")


@dataclass
class Invocation:
    """The command line, parsed: Hydra overrides and Hydra's own flags."""

    overrides: list[str]
    cfg: str | None = None  # --cfg PART
    info: bool = False
    multirun: bool = False


def parse_args(args: Sequence[str]) -> Invocation:
    """Split Hydra's flags from the overrides. Raises ConfigError on an unknown option or --cfg part."""
    parsed = Invocation([])
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            part = arg.split("=", 1)[1] if "=" in arg else (rest.pop(0) if rest and rest[0] in CFG_PARTS else "job")
            if part not in CFG_PARTS:
                raise ConfigError(f"--cfg {part!r}: expected one of {', '.join(CFG_PARTS)}")
            parsed.cfg = part
        elif arg == "--info":
            parsed.info = True
        elif arg in ("--multirun", "-m"):
            parsed.multirun = True
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg!r}; arguments are Hydra overrides key=value")
        else:
            parsed.overrides.append(arg)
    return parsed


def sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the swept values in ``overrides`` (Hydra's basic sweeper: ``a=1,2`` and
    ``a=range(0,3)`` sweep; lists ``a=[1,2]`` do not), in order, as plain override lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ConfigError(str(err)) from None
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    return [list(job) for job in itertools.product(*choices)]


def _info(cfg: DictConfig, config_name: str, overrides: Sequence[str]) -> str:
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)  # composed with return_hydra_config
    lines = [f"Config directory: {conf_dir()}", f"Config name: {config_name}.yaml", "", "Group choices:"]
    lines += [f"  {group}: {choice}" for group, choice in sorted(choices.items()) if not group.startswith("hydra")]
    lines += ["", "Overrides:", *(f"  {o}" for o in overrides or ["(none)"])]
    return "\n".join(lines)


def run_cli(
    prog: str,
    config_name: str,
    summary: str,
    fn: Callable[[DictConfig], object],
    argv: Sequence[str] | None = None,
    groups: Sequence[str] = (),
    extra_errors: tuple[type[BaseException], ...] | Callable[[], tuple[type[BaseException], ...]] = (),
    multirun: Callable[[list[str], int], list[str]] | None = None,
) -> int:
    """Run ``fn`` on the composed config; user errors print one line and return 2. ``extra_errors`` (or a
    function returning them, so ``--help`` never imports torch or Lightning) count as user errors too.
    ``multirun(overrides, job_number)`` -> that job's overrides makes the command sweep (``--multirun``);
    without it ``--multirun`` is refused."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(help_text(prog, config_name, summary, groups))
        return 0
    if callable(extra_errors):
        extra_errors = extra_errors()
    try:
        invocation = parse_args(args)
    except ConfigError as err:
        print(f"{prog}: error: {err} (see {prog} --help)", file=sys.stderr)
        return EXIT_USAGE
    setup_logging()
    try:
        if invocation.cfg or invocation.info:
            with_hydra = invocation.cfg in ("hydra", "all") or invocation.info
            cfg = compose(config_name, invocation.overrides, return_hydra_config=with_hydra)
            if invocation.info:
                print(_info(cfg, config_name, invocation.overrides))
            elif invocation.cfg == "hydra":
                print(OmegaConf.to_yaml(cfg.hydra))
            else:  # job: composed without the hydra node; all: with it
                print(OmegaConf.to_yaml(cfg))
            return 0
        if not invocation.multirun:
            fn(compose(config_name, invocation.overrides))
            return 0
        if multirun is None:
            raise ConfigError(f"{prog} does not sweep (--multirun); run it once per setting")
        jobs = sweep(invocation.overrides)
        for number, job in enumerate(jobs):
            job = multirun(job, number)
            logging.getLogger(__name__).info("[multirun %d/%d] %s", number + 1, len(jobs), " ".join(job))
            fn(compose(config_name, job))
    except (*USER_ERRORS, *extra_errors) as err:
        print(f"{prog}: error: {error_text(err)}", file=sys.stderr)
        return EXIT_USAGE
    return 0
