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


def test_hydra_flags_are_parsed_as_hydra_spells_them():
    from rest_lightning.cli.common import parse_args, sweep
    from rest_lightning.config import ConfigError

    parsed = parse_args(["-c", "hydra", "a=1", "--info", "-m", "b=2"])
    assert (parsed.cfg, parsed.info, parsed.multirun, parsed.overrides) == ("hydra", True, True, ["a=1", "b=2"])
    assert parse_args(["--cfg", "a=1"]).cfg == "job" and parse_args(["--cfg=all"]).cfg == "all"
    with pytest.raises(ConfigError, match="unknown option '--frobnicate'"):
        parse_args(["--frobnicate"])
    with pytest.raises(ConfigError, match="expected one of job, hydra, all"):
        parse_args(["--cfg=everything"])
    assert sweep(["a=1,2", "+b=x", "c=range(0,2)", "d=[1,2]"]) == [
        ["a=1", "+b=x", "c=0", "d=[1,2]"], ["a=1", "+b=x", "c=1", "d=[1,2]"],
        ["a=2", "+b=x", "c=0", "d=[1,2]"], ["a=2", "+b=x", "c=1", "d=[1,2]"],
    ]


def test_cfg_parts_and_info(capsys):
    from rest_lightning.cli.train import main

    assert main(["experiment=tiny_vae", "--cfg", "hydra"]) == 0
    hydra = capsys.readouterr().out
    assert "runtime:" in hydra and "name: tiny_vae" not in hydra
    assert main(["experiment=tiny_vae", "--cfg", "all"]) == 0
    both = capsys.readouterr().out
    assert "hydra:" in both and "name: tiny_vae" in both
    assert main(["experiment=tiny_vae", "--cfg"]) == 0
    assert "hydra:" not in capsys.readouterr().out
    assert main(["experiment=tiny_vae", "--info"]) == 0
    assert "experiment: tiny_vae" in capsys.readouterr().out


def test_multirun_trains_one_job_per_setting_each_in_its_own_run_dir(tiny_shards, tmp_path, capsys):
    from rest_lightning.cli.generate import main as generate
    from rest_lightning.cli.train import main

    args = ["--multirun", "experiment=tiny_vae", f"data.cfg.root={tiny_shards}", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "checkpoint.every_n_steps=2", "logger=none", f"run_dir={tmp_path}",
            "seed=3,4"]
    assert main(args) == 0
    for job, seed in [(0, 3), (1, 4)]:
        assert (tmp_path / str(job) / "checkpoints" / "last.ckpt").is_file()
        assert f"seed: {seed}" in (tmp_path / str(job) / "config.yaml").read_text()
    assert generate(["--multirun", "seed=0,1"]) == 2
    assert "does not sweep" in capsys.readouterr().err
