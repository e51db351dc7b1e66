"""The stream source resumes exactly: a run killed with SIGKILL after its step-K checkpoint and resumed from it
sees the uninterrupted run's batches after K and ends with bit-identical weights (CPU, float32, one thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rest_lightning.data.datamodule import DataConfig, VideoDataModule

STEPS = 7  # total batches; the kill comes after KILL_AT, mid-epoch and mid-shard
KILL_AT = 3
EPOCH_STEPS = 5  # the resumed run also crosses an epoch boundary


class KeyRecorder(L.LightningModule):
    """A linear map of each batch's audio and video: its weights depend on every batch it saw, in order."""

    def __init__(self, keys_file: str) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, 1)
        self.keys_file = keys_file

    def training_step(self, batch, batch_idx):
        with open(self.keys_file, "a") as f:
            f.write(json.dumps([int(self.trainer.fit_loop.epoch_loop.batch_progress.total.processed), batch.keys])
                    + "\n")
        features = batch.audio[:, :64] + batch.video.mean()
        return self.net(features).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class KillAfter(L.Callback):
    """SIGKILL this process at the start of batch ``step`` (the step checkpoint before it is on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train(root: str, run: str, workers: int, kill_at: int = -1, ckpt: str | None = None,
          sources: list[dict] | None = None) -> None:
    """Fit ``KeyRecorder`` for STEPS batches, checkpointing every KILL_AT steps; keys go to ``run/keys.jsonl``.
    ``sources``: several training corpora (``data.cfg.sources``), ``root`` then the validation corpus."""
    torch.set_num_threads(1)
    Path(run).mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    cfg = DataConfig(root=root, latent_frames=1, batch_size=2, num_workers=workers, epoch_steps=EPOCH_STEPS,
                     shuffle_buffer=4, sources=sources or [])
    callbacks = [ModelCheckpoint(dirpath=run, filename="{step}", every_n_train_steps=KILL_AT, save_top_k=-1)]
    if kill_at >= 0:
        callbacks.append(KillAfter(kill_at))
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, limit_val_batches=0,
                        deterministic=True, default_root_dir=run)
    model = KeyRecorder(str(Path(run) / "keys.jsonl"))
    trainer.fit(model, datamodule=VideoDataModule(cfg), ckpt_path=ckpt, weights_only=False if ckpt else None)
    torch.save(model.state_dict(), Path(run) / "final.pt")


def _keys(run: Path) -> dict[int, list[str]]:
    return {step: keys for step, keys in map(json.loads, (run / "keys.jsonl").read_text().splitlines())}


def kill9_and_resume(root: str, tmp_path: Path, workers: int, sources: list[dict] | None = None) -> list[list]:
    """Train straight, train again killed with SIGKILL after the step-KILL_AT checkpoint and resume from it;
    assert equal batches after KILL_AT and equal weights. Returns the lane rows saved in the checkpoint."""
    straight = tmp_path / "straight"
    train(root, str(straight), workers, sources=sources)

    killed = tmp_path / "killed"
    code = (f"from tests.data.test_stream_resume import train; "
            f"train({root!r}, {str(killed)!r}, {workers}, {KILL_AT}, sources={sources!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    ckpt = killed / f"step={KILL_AT}.ckpt"
    assert not (killed / "final.pt").exists() and ckpt.exists()
    # Lightning's fit loop keeps a stateful loader's state_dict in the checkpoint.
    saved = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    lanes = saved["ranks"][0]

    train(root, str(killed), workers, ckpt=str(ckpt), sources=sources)
    full, resumed = _keys(straight), _keys(killed)
    assert sorted(full) == list(range(STEPS))
    assert {s: resumed[s] for s in range(KILL_AT, STEPS)} == {s: full[s] for s in range(KILL_AT, STEPS)}
    a, b = torch.load(straight / "final.pt"), torch.load(killed / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), {k: (a[k] - b[k]).abs().max().item() for k in a}
    return lanes


@pytest.mark.parametrize("workers", [0, 2])
def test_kill9_and_resume_reproduces_batches_and_weights(prepared, tmp_path, workers):
    cfg, _ = prepared
    lanes = kill9_and_resume(cfg.output, tmp_path, workers)
    assert len(lanes) == max(1, workers) and any(offset > 0 for _, _, offset in lanes)  # mid-shard
