"""``logger=csv``: one ``<run_dir>/logs/metrics.csv`` for the whole run, across resumes and requeues.

Lightning's CSV writer deletes ``metrics.csv`` when it starts, so every relaunch of a run directory
lost the rows before it. :class:`RunCSVLogger` appends instead. A relaunch resumes from a checkpoint
that may be older than the last rows written (a job killed between two saves logged steps after its
last checkpoint); those steps are trained and logged again, so the rows at and after the first step
this process logs are dropped when it logs it: every step appears once, with the values of the run
whose weights the checkpoints carry on.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

STEP_COLUMN = "step"  # the column Lightning's writer puts the step in


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping an existing ``metrics.csv`` and its columns."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._trimmed = False
        if os.path.isfile(self.metrics_file_path):
            _drop_partial_last_line(self.metrics_file_path)
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes the file here; a resumed run appends to it."""

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if not self._trimmed and step is not None:
            self._trimmed = True
            self.drop_rows_from(step)
        super().log_metrics(metrics_dict, step)

    def drop_rows_from(self, step: int) -> None:
        """Remove the rows with ``step >= step`` from ``metrics.csv`` (a killed run's steps after the
        checkpoint it is resumed from)."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [row for row in rows if _step(row) < step]
        if len(kept) == len(rows):
            return
        tmp = f"{self.metrics_file_path}.tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.metrics_file_path)


def _drop_partial_last_line(path: str) -> None:
    """Cut a last row a kill left without its newline: the next append would run into it."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _step(row: dict[str, Any]) -> int:
    try:
        return int(float(row.get(STEP_COLUMN) or -1))
    except ValueError:  # a row cut short by a kill mid-write
        return -1


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``metrics.csv`` and ``hparams.yaml`` straight into ``save_dir`` and
    appending across relaunches (module doc)."""

    def __init__(self, save_dir: str) -> None:
        super().__init__(save_dir=save_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
