"""The console bar counts optimizer steps against max_steps (rest_lightning.callbacks.StepProgressBar)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from rest_lightning.callbacks import StepProgressBar


class _RecordingBar(StepProgressBar):
    """Keeps what the train task showed when training ended (the bar is torn down afterwards)."""

    def on_train_end(self, trainer, pl_module) -> None:
        task = self.progress.tasks[self.train_progress_bar_id]
        self.seen = (task.description.strip(), task.completed, task.total)
        super().on_train_end(trainer, pl_module)


def _fit(tmp_path, max_steps: int, ckpt_path=None) -> tuple[str, float, float]:
    bar = _RecordingBar(console_kwargs={"file": open(tmp_path / "bar.txt", "w"), "force_terminal": True})  # noqa: SIM115
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, limit_val_batches=0, logger=False,
                        default_root_dir=tmp_path, callbacks=[bar], accelerator="cpu", enable_model_summary=False)
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)  # 64 batches per epoch: 150 steps span 3 epochs
    return bar.seen


def test_the_bar_counts_steps_across_epochs_and_resume(tmp_path):
    description, completed, total = _fit(tmp_path, 150)
    assert (description, completed, total) == ("train", 150, 150)  # the stock bar: "Epoch 2/-2", 22 of 22
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"), None) or next(tmp_path.rglob("*.ckpt"))
    assert _fit(tmp_path, 170, ckpt_path=ckpt)[1:] == (170, 170)  # continues from the checkpoint's step
