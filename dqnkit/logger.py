"""Run metrics: ``metrics.csv`` (one row per episode and per evaluation) and TensorBoard."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from dqnkit.files import atomic_write

COLUMNS = (
    "kind",
    "step",
    "episode",
    "return",
    "length",
    "epsilon",
    "loss",
    "q_mean",
    "return_std",
    "wall_s",
    "q_pred",
    "q_real",
)


class Logger:
    """Appends rows to ``metrics.csv`` and mirrors them as TensorBoard scalars under ``tb/``."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        if resume_step is not None:
            self._drop_rows_after(resume_step)
        fresh = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if fresh:
            self._csv.writeheader()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            # purge_step hides events a crashed run wrote past the checkpoint we resume from.
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def row(self, kind: str, step: int, **values: Any) -> None:
        """One metrics.csv row (missing columns stay empty) and its TensorBoard scalars."""
        self._csv.writerow({"kind": kind, "step": step, **values})
        if self._tb is not None:
            for key in ("return", "length", "epsilon", "loss", "q_mean", "return_std", "q_pred", "q_real"):
                if values.get(key) is not None:
                    self._tb.add_scalar(f"{kind}/{key}", values[key], step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """A TensorBoard-only scalar (e.g. steps per second)."""
        if self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        """A TensorBoard-only text panel (e.g. the run's config, as CleanRL shows its hyperparameters)."""
        if self._tb is not None:
            self._tb.add_text(tag, markdown, step)

    def flush(self) -> None:
        """Push rows to disk (fsync: they must survive whatever kills the process next)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Close metrics.csv and the TensorBoard writer."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def _drop_rows_after(self, step: int) -> None:
        """Rows logged after the checkpoint we resume from will be logged again: drop them.
        The kept rows stream from the old file into its replacement (a kill now must not cost
        the rows before the step; memory does not grow with the file)."""
        if not self.path.exists():
            return

        def write(f: BinaryIO) -> None:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(r for r in iter_metrics(self.path) if int(r["step"]) <= step)
            text.flush()
            text.detach()  # atomic_write syncs and closes the file itself

        atomic_write(self.path, write)


def iter_metrics(path: str | Path) -> Iterator[dict[str, str]]:
    """The rows of a metrics.csv as dicts of strings, one at a time: memory does not grow
    with the file (a long run logs one row per episode).

    A last row without its line end is left out: a process killed while its buffer was
    being written (SIGKILL, out of memory) leaves the row it was writing cut short. Rows
    before a checkpoint are always whole (the checkpoint flushes them first), so a resume
    loses nothing: it logs the rows past its checkpoint again.
    """
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(line for line in f if line.endswith("\n"))


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Every row of :func:`iter_metrics` in a list (about 1 KB a row: for a run's few
    thousand episodes; stream a long run's with :func:`iter_metrics`)."""
    return list(iter_metrics(path))
