"""Third-party warnings go to the run's log file, not the console (issue 13).

A training run printed about eleven warnings from Lightning, torch and others (one a 13-line code sample)
between its own lines. Inside ``third_party_warnings_to(path)`` a warning whose source file lies outside this
project is appended to ``path`` (the run's ``logs/warnings.log``) instead; the project's own warnings (a
randomly initialised VAE, a resolution mismatch, ...) still reach the console, and at the end one line says
how many went to the file. ``REST_WARNINGS=console`` shows them all on the console as before.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PROJECT_DIRS = tuple(str(Path(__file__).resolve().parents[1] / name) for name in ("rest_lightning", "data_prep", "eval"))
ENV = "REST_WARNINGS"


def is_ours(filename: str) -> bool:
    """Whether a warning raised from ``filename`` is the project's own."""
    return str(Path(filename).resolve()).startswith(PROJECT_DIRS)


@contextmanager
def third_party_warnings_to(path: Path, write: bool = True) -> Iterator[None]:
    """Send third-party warnings to ``path`` while inside (module doc); ``write=False`` (ranks other than 0,
    whose warnings repeat rank 0's) drops them instead."""
    if os.environ.get(ENV, "").lower() == "console":
        yield
        return
    previous = warnings.showwarning
    count = 0

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' signature)
        nonlocal count
        if is_ours(filename):
            previous(message, category, filename, lineno, file, line)
            return
        count += 1
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as out:
                out.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
        if count and write:
            log.info("%d third-party warning(s) went to %s (%s=console shows them here)", count, path, ENV)
