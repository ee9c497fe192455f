"""Crash-safe checkpoints that load without executing code.

Writing: serialise to ``NAME.tmp`` in the same directory, flush, fsync, ``os.replace``
onto the final name, fsync the directory. A crash at any moment leaves either the old
file or the new one, never half of one.

Reading: ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and
plain containers, so a crafted pickle is refused instead of run. numpy arrays are stored
as tensors (tagged) because the safe unpickler does not rebuild numpy objects.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit.errors import CheckpointError

FORMAT_VERSION = 1
_NP_TAG = "__ndarray__"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def to_storable(obj: Any) -> Any:
    """Replace numpy arrays and scalars by tensors / Python numbers, recursively."""
    if isinstance(obj, np.ndarray):
        return {_NP_TAG: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_storable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_storable(v) for v in obj)
    return obj


def from_storable(obj: Any) -> Any:
    """Inverse of :func:`to_storable`."""
    if isinstance(obj, dict):
        if set(obj) == {_NP_TAG}:
            return obj[_NP_TAG].numpy()
        return {k: from_storable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_storable(v) for v in obj)
    return obj


def atomic_save(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` so that a crash never leaves a partial file there."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(to_storable({"format_version": FORMAT_VERSION, **payload}), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def safe_load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without executing code; refuse anything else with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"refusing to load {path}: it is not a plain dqnkit checkpoint ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(exc).__name__}); use an earlier checkpoint of the run"
        ) from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a dqnkit checkpoint (format {FORMAT_VERSION})")
    return from_storable(raw)


class CheckpointDir:
    """``checkpoints/step_<N>.pt`` files plus ``latest.pt`` (a hard link to the newest)."""

    def __init__(self, run_dir: str | Path, keep: int = 3) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    @property
    def latest(self) -> Path:
        """``checkpoints/latest.pt``, a hard link to the newest numbered checkpoint."""
        return self.dir / "latest.pt"

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        """Write the checkpoint of ``step``, point ``latest.pt`` at it, prune old ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:010d}.pt"
        atomic_save(payload, path)
        tmp = self.dir / "latest.pt.tmp"
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, self.latest)
        _fsync_dir(self.dir)
        for old in self.numbered()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def numbered(self) -> list[Path]:
        """Numbered checkpoint files, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_FILE.search(p.name))]
        return [p for _, p in sorted(found)]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
