"""Every rest-* entry point answers --help, refuses unknown options, and rest-train lists the experiments."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tomllib

from rest_lightning.config import list_options

SCRIPTS = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_and_unknown_option(name, capsys):
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}")
    assert main(["--no-such-option"]) == 2
    assert "unknown option" in capsys.readouterr().err


def test_rest_train_help_lists_every_experiment(capsys):
    from rest_lightning.cli.train import main

    main(["--help"])
    out = capsys.readouterr().out
    for experiment in list_options("experiment"):
        assert f"  {experiment}\n" in out


def test_help_imports_neither_torch_nor_lightning():
    """``--help`` answers at once: no entry point imports torch or Lightning on that path (issue 13: it took
    14-16 s). Checked in a fresh interpreter per command, by what it imported, not by timing."""
    import subprocess
    import sys

    code = (
        "import sys, importlib\n"
        "for target in sys.argv[1:]:\n"
        "    module, func = target.split(':')\n"
        "    assert getattr(importlib.import_module(module), func)(['--help']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'wandb') if m in sys.modules)\n"
        "assert not heavy, f'--help imported {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *SCRIPTS.values()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
