"""Telemetry callbacks and the non-finite-loss guard, on a toy one-optimizer RestStage (plain Trainer, CPU)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from rest_lightning.checkpoint import find_resume_checkpoint
from rest_lightning.stages.base import RestStage
from rest_lightning.telemetry import (
    NonFiniteGuard,
    NonFiniteLossError,
    Telemetry,
    batch_size_of,
    peak_memory_bytes,
)

WIDTH, BATCH = 8, 4


@dataclass
class _Batch:
    x: torch.Tensor  # (B, WIDTH)


class _Data(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((WIDTH,), float(i % 7) / 7)


class _ToyStage(RestStage):
    """Regresses zeros; ``nan_steps`` are the global steps whose loss is NaN."""

    stage_name = "toy"

    def __init__(self, nan_steps: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = torch.nn.Linear(WIDTH, WIDTH)
        self.nan_steps = set(nan_steps)
        self.weights_seen: list[torch.Tensor] = []

    def identity_config(self) -> dict:
        return {"width": WIDTH}

    def tokens_per_sample(self, batch: torch.Tensor) -> int:
        return 3  # e.g. latent tokens per clip

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.weights_seen.append(self.net.weight.detach().clone())
        loss = self.net(batch).square().mean()
        return loss * float("nan") if self.global_step in self.nan_steps else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _fit(stage: RestStage, tmp_path: Path, callbacks: list, max_steps: int) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=CSVLogger(tmp_path, name="", version=""),
                        callbacks=callbacks, log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(stage, DataLoader(_Data(), batch_size=BATCH))
    return trainer


def _metrics(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_batch_size_of_finds_the_first_tensor():
    assert batch_size_of(torch.zeros(5, 2)) == 5
    assert batch_size_of(_Batch(x=torch.zeros(3, 1))) == 3
    assert batch_size_of({"meta": "x", "video": torch.zeros(2, 3)}) == 2
    assert batch_size_of(("name", [torch.zeros(6)])) == 6
    with pytest.raises(TypeError):
        batch_size_of({"a": "no tensors"})
    assert peak_memory_bytes(torch.device("cpu")) > 1 << 20  # a Python process with torch: over 1 MiB


def test_telemetry_logs_throughput_wait_grad_norm_memory_mfu(tmp_path):
    peak = 1e9
    _fit(_ToyStage(), tmp_path, [Telemetry(peak_flops=peak, log_every_n_steps=1)], max_steps=5)
    rows = [r for r in _metrics(tmp_path) if r.get("train/samples_per_s")]
    assert len(rows) == 4, "every step but the first (no previous step to time against) is logged"
    for row in rows:
        samples, tokens = float(row["train/samples_per_s"]), float(row["train/tokens_per_s"])
        assert samples > 0 and tokens == pytest.approx(3 * samples)
        assert 0.0 <= float(row["train/data_wait_fraction"]) < 1.0
        assert float(row["train/grad_norm"]) > 0
        assert float(row["train/peak_memory_bytes"]) > 1 << 20
    # MFU = counted FLOPs per step / step time / peak. Forward x @ W^T is 2*B*W*W FLOPs, the weight gradient
    # as many (the input needs no gradient, so backward has no second matmul).
    flops = 2 * 2 * BATCH * WIDTH * WIDTH
    mfu = [float(r["train/mfu"]) for r in rows if r.get("train/mfu")]
    assert mfu and all(m == pytest.approx(flops * float(r["train/samples_per_s"]) / BATCH / peak, rel=1e-6)
                       for m, r in zip(mfu, [r for r in rows if r.get("train/mfu")], strict=True))


def test_grad_norm_is_the_global_norm_before_clipping(tmp_path):
    class Spy(L.Callback):
        norms: list[float] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.norms.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in pl_module.parameters()]))))

    spy = Spy()
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=CSVLogger(tmp_path, name="", version=""),
                        callbacks=[spy, Telemetry(log_every_n_steps=1)], log_every_n_steps=1, gradient_clip_val=1e-6,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(_ToyStage(), DataLoader(_Data(), batch_size=BATCH))
    logged = [float(r["train/grad_norm"]) for r in _metrics(tmp_path) if r.get("train/grad_norm")]
    assert logged == pytest.approx(spy.norms[1:], rel=1e-5), "the unclipped norm, not the 1e-6 clip"


def test_nonfinite_loss_skips_the_step_and_counts_it(tmp_path):
    stage = _ToyStage(nan_steps=(2, 3))
    _fit(stage, tmp_path, [NonFiniteGuard(max_in_a_row=3, checkpoint_dir=tmp_path / "ckpt")], max_steps=6)
    w = stage.weights_seen  # weights at the start of steps 0..5
    assert torch.equal(w[2], w[3]) and torch.equal(w[3], w[4]), "NaN steps 2 and 3 must not move the weights"
    assert not torch.equal(w[1], w[2]) and not torch.equal(w[4], w[5]), "finite steps do"
    assert all(torch.isfinite(x).all() for x in w)
    counts = [float(r["train/nonfinite_skipped"]) for r in _metrics(tmp_path) if r.get("train/nonfinite_skipped")]
    assert counts == [0.0, 0.0, 1.0, 2.0, 2.0, 2.0], "a running count, logged every step"


def test_nonfinite_in_a_row_stops_with_a_checkpoint_resume_auto_ignores(tmp_path):
    stage = _ToyStage(nan_steps=(2, 3, 4, 5))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 1}, run / "checkpoints" / "step=00000001.ckpt")
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite losses in a row .*max_nonfinite_steps=3.* at step 5"):
        _fit(stage, tmp_path, [NonFiniteGuard(max_in_a_row=3, checkpoint_dir=run / "checkpoints")], max_steps=10)
    saved = run / "checkpoints" / "nonfinite-step=00000005.ckpt"
    ckpt = torch.load(saved, weights_only=True)
    assert torch.isfinite(ckpt["state_dict"]["net.weight"]).all() and ckpt["rest"]["stage"] == "toy"
    assert find_resume_checkpoint(run).name == "step=00000001.ckpt", "resume=auto never picks the diverged state"


def test_third_party_warnings_go_to_the_run_log_and_ours_to_the_console(tmp_path, monkeypatch):
    import warnings

    from rest_lightning import warnings_log

    monkeypatch.delenv(warnings_log.ENV, raising=False)
    shown = []
    ours = str(Path(warnings_log.__file__))
    log_file = tmp_path / "logs" / "warnings.log"
    with warnings.catch_warnings():  # restores showwarning and the filters afterwards
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))  # "the console"
        with warnings_log.third_party_warnings_to(log_file):
            warnings.warn_explicit("from a library", UserWarning, "/usr/lib/python3/dist-packages/lib.py", 3)
            warnings.warn_explicit("from us", UserWarning, ours, 7)
        assert shown == ["from us"]
        assert "from a library" in log_file.read_text() and "from us" not in log_file.read_text()
        monkeypatch.setenv(warnings_log.ENV, "console")
        with warnings_log.third_party_warnings_to(log_file):
            warnings.warn_explicit("shown again", UserWarning, "/usr/lib/python3/dist-packages/lib.py", 4)
        assert shown == ["from us", "shown again"]
