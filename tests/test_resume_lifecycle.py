"""A run directory's life across relaunches (issue 14): ``resume=auto`` falls back past a damaged
checkpoint and clears a killed save's temp files; ``resume=never`` refuses a directory that holds a run;
``metrics.csv`` keeps every step once across a crash and a resume; ``keep_last=1`` prunes the resumed
checkpoint; the last checkpoint returned is the one this run wrote."""

from __future__ import annotations

import csv
import logging
import shutil
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

from rest_lightning.checkpoint import DamagedCheckpointError, find_resume_checkpoint
from rest_lightning.cli import train as train_cli
from rest_lightning.training import train


class _Crash(L.Callback):
    """A job killed after ``at_step`` optimizer steps, between two checkpoint saves."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at_step:
            raise RuntimeError("simulated crash")


def args(shards: Path, run: Path, *extra: str) -> list[str]:
    return ["experiment=tiny_vae", f"data.cfg.root={shards}", "trainer.limit_val_batches=0", "logger=csv",
            "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=2", "checkpoint.keep_last=1",
            f"run_dir={run}", *extra]


@pytest.fixture(scope="module")
def crashed_then_resumed(tiny_shards, tmp_path_factory) -> dict:
    """Train to step 8, killed at step 5 (checkpoints at 2 and 4, keep_last=1); then
    ``resume=<step=4 file>`` to step 8. Returns the run, the CSV rows after each launch and the result."""
    import rest_lightning.training as training
    from rest_lightning.config import compose

    run = tmp_path_factory.mktemp("lifecycle") / "run"
    original = training.build_callbacks
    training.build_callbacks = lambda c, r: [*original(c, r), _Crash(at_step=5)]
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(compose("train", args(tiny_shards, run, "trainer.max_steps=8")))
    finally:
        training.build_callbacks = original
    rows_crashed = _rows(run)
    step4 = run / "checkpoints" / "step=00000004.ckpt"
    result = train(compose("train", args(tiny_shards, run, "trainer.max_steps=8", f"resume='{step4}'")))
    return {"run": run, "rows_crashed": rows_crashed, "rows": _rows(run), "result": result}


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_keeps_every_step_once_across_crash_and_resume(crashed_then_resumed):
    crashed, rows = crashed_then_resumed["rows_crashed"], crashed_then_resumed["rows"]
    assert max(int(r["step"]) for r in crashed) >= 4, "the killed run logged past its last checkpoint (step 4)"
    # Each (step, metric) is written once: the killed run's rows from step 4 on were replaced by the
    # resumed run's, the rows before it kept.
    cells = Counter((int(r["step"]), key) for r in rows for key, value in r.items() if value and key != "step")
    assert cells and max(cells.values()) == 1, [c for c, n in cells.items() if n > 1]
    assert sorted({step for step, _ in cells}) == list(range(8)), "steps 0..7 all logged"
    loss = [k for k in rows[0] if k.startswith("train/") and "loss" in k][0]
    assert [step for step, key in sorted(cells) if key == loss] == list(range(8))
    kept = {(int(r["step"]), r[loss]) for r in crashed if r[loss] and int(r["step"]) < 4}
    assert kept <= {(int(r["step"]), r[loss]) for r in rows if r[loss]}, "rows before the checkpoint kept as they were"


def test_keep_last_one_prunes_the_checkpoint_it_resumed_from(crashed_then_resumed):
    run, result = crashed_then_resumed["run"], crashed_then_resumed["result"]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step=00000008.ckpt"], "step=00000004.ckpt (resumed from) is pruned too"
    assert result.last_checkpoint == run / "checkpoints" / "last.ckpt"
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == result.global_step == 8


def test_resume_auto_skips_a_truncated_last_and_clears_stale_temp_files(crashed_then_resumed, tiny_shards, tmp_path,
                                                                      caplog):
    run = tmp_path / "run"
    shutil.copytree(crashed_then_resumed["run"], run)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # a copy cut short
    (run / "checkpoints" / "step=00000009.ckpt").write_bytes(b"")  # an empty file, newest by name
    stale = [run / "checkpoints" / ".last.ckpt.tmp-4242", run / ".config.yaml.tmp-4242"]
    for path in stale:
        path.write_bytes(b"half a save")
    with caplog.at_level(logging.WARNING, logger="rest_lightning.checkpoint"):
        assert find_resume_checkpoint(run) == run / "checkpoints" / "step=00000008.ckpt"
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert any("last.ckpt is not a complete torch checkpoint" in m for m in skipped), skipped
    assert any("step=00000009.ckpt" in m for m in skipped), skipped

    assert train_cli.main(args(tiny_shards, run, "trainer.max_steps=8", "logger=none")) == 0
    assert not any(p.exists() for p in stale), "a killed save's temp files are removed at start"


def test_resume_auto_with_nothing_readable_refuses(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DamagedCheckpointError, match=r"no checkpoint in .* reads \(last.ckpt skipped"):
        find_resume_checkpoint(tmp_path)


def test_resume_never_on_a_run_directory_with_checkpoints_is_refused(crashed_then_resumed, tiny_shards, capsys):
    run = crashed_then_resumed["run"]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code = train_cli.main(args(tiny_shards, run, "trainer.max_steps=4", "resume=never"))
    err = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
    assert code == 2
    assert err.startswith("rest-train: error: resume=never") and "resume=auto" in err and "run_dir=" in err, err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before, "nothing in the run directory changed"
