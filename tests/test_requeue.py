"""The requeue signal is handled at a step boundary (launch/requeue.py), not inside the signal handler."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from rest_lightning.launch.requeue import RequeueOnSignal, requeue_job_id

SIGNAL_AT = 2  # the batch whose training_step receives the signal


class SignalledModel(BoringModel):
    """Sends itself SIGUSR1 in the middle of one training step, before its loss exists."""

    def training_step(self, batch, batch_idx):
        if batch_idx == SIGNAL_AT:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler has run when os.kill returns
        return super().training_step(batch, batch_idx)


@pytest.fixture(autouse=True)
def usr1_sentinel():
    """A SIGUSR1 handler of the test's own while it runs: should the callback not take the signal over, the test
    fails on the sentinel's count instead of SIGUSR1's default action ending the whole test session."""
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGUSR1, previous)


def fake_scontrol(folder: Path, monkeypatch, exit_code: int = 0) -> Path:
    """An ``scontrol`` first on PATH that records its arguments; returns the file it writes them to."""
    calls = folder / "scontrol_calls.txt"
    script = folder / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit {exit_code}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return calls


def fit(folder: Path, model: L.LightningModule, max_steps: int, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(default_root_dir=folder / "ckpt", max_steps=max_steps, callbacks=[RequeueOnSignal()],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, **trainer_kwargs)
    trainer.fit(model)
    return trainer


def saved_steps(folder: Path) -> list[int]:
    return [torch.load(p, weights_only=True)["global_step"] for p in sorted((folder / "ckpt").glob("hpc_ckpt_*"))]


@pytest.mark.parametrize("exit_code", [0, 1])
def test_signal_mid_step_checkpoints_after_that_step_then_requeues(tmp_path, monkeypatch, exit_code, caplog,
                                                                   usr1_sentinel):
    calls = fake_scontrol(tmp_path, monkeypatch, exit_code)
    previous = signal.getsignal(signal.SIGUSR1)
    with caplog.at_level("INFO", logger="rest_lightning.launch.requeue"):
        trainer = fit(tmp_path, SignalledModel(), max_steps=5)

    # Saved once, after the signalled step's optimizer step: a save inside the handler (Lightning's) would
    # have recorded the step before it.
    assert [p.name for p in (tmp_path / "ckpt").glob("hpc_ckpt_*")] == ["hpc_ckpt_1.ckpt"]
    assert saved_steps(tmp_path) == [SIGNAL_AT + 1]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert trainer.global_step == 5, "training goes on until SLURM stops the job"
    assert ("requeued SLURM job 4242" if exit_code == 0 else "failed (exit 1") in caplog.text
    assert signal.getsignal(signal.SIGUSR1) == previous, "the handler is removed after fit"
    assert usr1_sentinel == [], "the signal reached the handler that was there before fit"


def test_with_gradient_accumulation_the_checkpoint_waits_for_the_optimizer_step(tmp_path, monkeypatch):
    fake_scontrol(tmp_path, monkeypatch)
    fit(tmp_path, SignalledModel(), max_steps=4, accumulate_grad_batches=2)
    # The signal falls in micro-batch 2, the first of step 2; the save follows micro-batch 3, after that step.
    assert saved_steps(tmp_path) == [2]


def test_without_the_signal_nothing_is_saved_or_requeued(tmp_path, monkeypatch):
    calls = fake_scontrol(tmp_path, monkeypatch)
    fit(tmp_path, BoringModel(), max_steps=4)
    assert saved_steps(tmp_path) == [] and not calls.exists()


def test_requeue_job_id_names_an_array_task_and_refuses_anything_else():
    assert requeue_job_id({"SLURM_JOB_ID": "17"}) == "17"
    assert requeue_job_id({"SLURM_JOB_ID": "18", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3"}) == "10_3"
    with pytest.raises(ValueError, match="not a SLURM job id"):
        requeue_job_id({"SLURM_JOB_ID": "17; rm -rf /"})
