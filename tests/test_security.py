"""No checkpoint path runs foreign code (issue 14): a ``.ckpt`` whose pickle would write a marker file
is planted wherever a path can come from, and every entry point refuses it in one line (exit 2) naming
the config key, before anything unpickles it. Also the one-line, exit-2 style of the other refusals
issue 14 lists (a truncated checkpoint, ``crf=abc``, unknown ``trainer.*`` keys)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rest_lightning.cli import ckpt as ckpt_cli
from rest_lightning.cli import eval as eval_cli
from rest_lightning.cli import generate as generate_cli
from rest_lightning.cli import train as train_cli
from rest_lightning.config import compose
from rest_lightning.training import train


class Payload:
    """Unpickling this runs ``exec``: it writes ``marker``. A weights-only load refuses it unrun."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def real_ckpt(tiny_shards, tmp_path_factory) -> Path:
    """A tiny VAE run's last.ckpt (2 steps): the contents a planted file imitates."""
    run = tmp_path_factory.mktemp("sec") / "run"
    cfg = compose("train", ["experiment=tiny_vae", f"data.cfg.root={tiny_shards}", "trainer.max_steps=2",
                            "trainer.limit_val_batches=0", "logger=none", f"run_dir={run}"])
    return train(cfg).last_checkpoint


@pytest.fixture
def planted(real_ckpt, tmp_path) -> tuple[Path, Path]:
    """``(payload.ckpt, marker)``: the real checkpoint plus a Payload entry, at a later step than any."""
    marker = tmp_path / "marker"
    ckpt = torch.load(real_ckpt, weights_only=True)
    ckpt["global_step"] = 10**6
    ckpt["payload"] = Payload(marker)
    path = tmp_path / "payload.ckpt"
    torch.save(ckpt, path)
    return path, marker


def assert_refused(capsys, code: int, prog: str, *names: str) -> str:
    """Exit 2, the error as the last line of stderr (so one line), naming ``names``, no escapes."""
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]
    assert code == 2, err
    assert last.startswith(f"{prog}: error: "), err
    assert "\x1b" not in err
    for name in names:
        assert name in last, last
    return last


def train_args(shards: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=tiny_vae", f"data.cfg.root={shards}", "trainer.max_steps=2", "logger=none",
            f"run_dir={run}", *extra]


def test_resume_path_is_vetted_before_lightning_opens_it(planted, tiny_shards, tmp_path, capsys):
    payload, marker = planted
    code = train_cli.main(train_args(tiny_shards, tmp_path / "run", f"resume={payload}"))
    last = assert_refused(capsys, code, "rest-train", f"resume={payload}", "builtins.exec")
    assert not marker.exists(), "the payload ran"
    assert "weights-only" in last


@pytest.mark.parametrize("where", ["checkpoints/last.ckpt", "hpc_ckpt_1.ckpt"])
def test_resume_auto_refuses_a_planted_file_in_either_folder(planted, real_ckpt, tiny_shards, tmp_path, capsys, where):
    payload, marker = planted
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(real_ckpt, run / "checkpoints" / "step=00000002.ckpt")  # a good one beside it: no fallback
    shutil.copy(payload, run / where)
    code = train_cli.main(train_args(tiny_shards, run, "trainer.max_steps=4"))
    assert_refused(capsys, code, "rest-train", "resume=auto", str(run / where), "builtins.exec")
    assert not marker.exists(), "the payload ran"


def test_resume_auto_refuses_a_planted_zero_directory(tmp_path):
    from rest_lightning.checkpoint import UnsafeCheckpointError, find_resume_checkpoint

    marker = tmp_path / "marker"
    zero = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (zero / "checkpoint").mkdir(parents=True)
    (zero / "latest").write_text("checkpoint")
    torch.save({"module": {}, "global_step": 1, "payload": Payload(marker)},
               zero / "checkpoint" / "mp_rank_00_model_states.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins.exec: not a plain DeepSpeed ZeRO checkpoint"):
        find_resume_checkpoint(tmp_path / "run")
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("key", ["init_from", "stage.vae_checkpoint"])
def test_train_input_files_are_vetted_naming_their_key(planted, tiny_shards, tmp_path, capsys, key):
    payload, marker = planted
    experiment = "tiny_vae" if key == "init_from" else "tiny_teacher"
    args = [f"experiment={experiment}", f"data.cfg.root={tiny_shards}", "logger=none",
            f"run_dir={tmp_path / 'run'}", f"{key}={payload}"]
    code = train_cli.main(args)
    assert_refused(capsys, code, "rest-train", f"{key}={payload}", "builtins.exec")
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "run").exists(), "a refused file leaves no run directory"


@pytest.mark.parametrize("command", ["info", "export"])
def test_rest_ckpt_refuses_a_planted_file(planted, tmp_path, capsys, command):
    payload, marker = planted
    code = ckpt_cli.main([command, f"ckpt={payload}", f"out={tmp_path / 'x.safetensors'}"])
    assert_refused(capsys, code, "rest-ckpt", f"ckpt={payload}", "builtins.exec")
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("key", ["ckpt", "vae_ckpt"])
def test_rest_generate_refuses_a_planted_file_naming_its_key(planted, tmp_path, capsys, key):
    payload, marker = planted
    code = generate_cli.main([f"{key}={payload}", "ref=face.png", "audio=speech.wav", f"out={tmp_path / 'o.mp4'}"])
    last = assert_refused(capsys, code, "rest-generate", f"{key}={payload}", "builtins.exec")
    assert not marker.exists(), "the payload ran"
    assert "init_from" not in last


@pytest.mark.parametrize("key", ["ckpts", "vae_ckpt"])
def test_rest_eval_refuses_a_planted_file_before_any_work(planted, tmp_path, capsys, key):
    payload, marker = planted
    given = f"ckpts={{rest:{payload}}}" if key == "ckpts" else f"vae_ckpt={payload}"
    code = eval_cli.main([given, "testset=missing.json", f"out={tmp_path / 'eval'}", "protocol=smoke_v1"])
    assert_refused(capsys, code, "rest-eval", "ckpts.rest=" if key == "ckpts" else "vae_ckpt=", "builtins.exec")
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "eval").exists()


def test_rest_ckpt_info_on_a_truncated_checkpoint(real_ckpt, tmp_path, capsys):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(real_ckpt.read_bytes()[: real_ckpt.stat().st_size // 2])
    code = ckpt_cli.main(["info", f"ckpt={cut}"])
    assert_refused(capsys, code, "rest-ckpt", f"ckpt={cut}", "not a complete torch checkpoint")


def test_rest_generate_refuses_a_non_integer_crf(tmp_path, capsys):
    code = generate_cli.main(["crf=abc", "ref=face.png", "audio=speech.wav", f"out={tmp_path / 'o.mp4'}"])
    assert_refused(capsys, code, "rest-generate", "crf='abc'", "integer")


@pytest.mark.parametrize(("override", "named"), [
    ("+trainer.max_stepz=3", "did you mean trainer.max_steps?"),
    ("++trainer.bogus=1", "trainer.bogus"),
    ("+checkpoint.keep_lst=1", "did you mean checkpoint.keep_last?"),
])
def test_unknown_trainer_keys_fail_before_a_run_directory_exists(tiny_shards, tmp_path, capsys, override, named):
    code = train_cli.main(train_args(tiny_shards, tmp_path / "run", override))
    assert_refused(capsys, code, "rest-train", named)
    assert not (tmp_path / "run").exists()


def test_an_unset_required_value_is_one_line_exit_2(tmp_path, capsys):
    code = train_cli.main(["experiment=tiny_vae", "logger=none", f"run_dir={tmp_path / 'run'}"])
    assert_refused(capsys, code, "rest-train", "data.cfg.root=... is required")
    assert not (tmp_path / "run").exists()
