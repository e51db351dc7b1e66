"""What every ``rest-*`` entry point shares: argument handling, ``--help``, clear config errors.

Each CLI is ``main(argv) -> int``: Hydra ``key=value`` overrides in, the composed config handed to one
library function. ``--help`` lists the config groups and their options, ``--cfg`` prints the composed
config. A bad config or input is reported as one message (no traceback) with exit status 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Sequence

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
        f"usage: {prog} [--help] [--cfg] [key=value ...]",
        "",
        summary,
        "",
        f"Config: {conf_dir() / (config_name + '.yaml')} composed with Hydra overrides, e.g.",
        "  group=option      pick a config group option (listed below)",
        "  key.sub=value     set a value      +key=value  add a key the config lacks",
        "",
        "Options:",
        "  -h, --help        show this help and exit",
        "  --cfg             print the composed config and exit",
    ]
    for group in groups:
        options = list_options(group)
        if options:
            lines += ["", f"{group}=", *(f"  {name}" for name in options)]
    return "\n".join(lines)


def run_cli(
    prog: str,
    config_name: str,
    summary: str,
    fn: Callable[[DictConfig], object],
    argv: Sequence[str] | None = None,
    groups: Sequence[str] = (),
    extra_errors: tuple[type[BaseException], ...] | Callable[[], tuple[type[BaseException], ...]] = (),
) -> int:
    """Run ``fn`` on the composed config; user errors print one line and return 2. ``extra_errors`` (or a
    function returning them, so ``--help`` never imports torch or Lightning) count as user errors too."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(help_text(prog, config_name, summary, groups))
        return 0
    if callable(extra_errors):
        extra_errors = extra_errors()
    print_cfg = "--cfg" in args
    overrides = [a for a in args if a != "--cfg"]
    bad = [a for a in overrides if a.startswith("-")]
    if bad:
        print(f"{prog}: error: unknown option {bad[0]!r}; arguments are Hydra overrides key=value "
              f"(see {prog} --help)", file=sys.stderr)
        return EXIT_USAGE
    setup_logging()
    try:
        cfg = compose(config_name, overrides)
        if print_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        fn(cfg)
    except (*USER_ERRORS, *extra_errors) as err:
        print(f"{prog}: error: {error_text(err)}", file=sys.stderr)
        return EXIT_USAGE
    return 0
