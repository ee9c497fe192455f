"""Crash-safe checkpoints that load without executing code.

Writing: through :func:`dqnkit.files.atomic_write` (``NAME.tmp``, fsync, ``os.replace``).
A crash at any moment leaves either the old file or the new one, never half of one.

Reading: ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and
plain containers, so a crafted pickle is refused instead of run. numpy arrays are stored
as tensors (tagged) because the safe unpickler does not rebuild numpy objects.

The replay: :func:`replay_saver` picks how a run's checkpoints keep it: whole
(:class:`FullReplay`), left out (:class:`NoReplay`), or by default in chunk files shared
between checkpoints, each written once with the rows new since the one before
(:class:`ReplayChunks`).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit.errors import CheckpointError, DqnkitError
from dqnkit.files import atomic_write, fsync_dir

FORMAT_VERSION = 1
_NP_TAG = "__ndarray__"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_CHUNK_FILE = re.compile(r"chunk_(\d+)\.pt$")
CHUNK_ROWS = 10_000  # replay rows per chunk file at most (70 MB of Atari frames)


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
    atomic_write(path, lambda f: torch.save(to_storable({"format_version": FORMAT_VERSION, **payload}), f))


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
        raise CheckpointError(f"{path} is truncated or corrupt ({type(exc).__name__})") from None
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
        fsync_dir(self.dir)
        for old in self.numbered()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def numbered(self) -> list[Path]:
        """Numbered checkpoint files, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_FILE.search(p.name))]
        return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------- the replay
class FullReplay:
    """``replay_checkpoint=full``: every checkpoint holds the whole replay (simple; a 1M Atari
    replay makes each checkpoint about 7 GB).

    The protocol of every way to keep the replay: :meth:`state` (on the loop, the small state
    and what must be written), :meth:`write` (in the background, before the checkpoint that
    refers to it), :meth:`commit` (once that checkpoint is on disk), and ``safe_steps``: how
    many vector steps the loop may take before it would overwrite rows not yet written.
    """

    safe_steps: float = math.inf

    def state(self, replay: Any) -> dict[str, Any]:
        """The replay's whole state, rows included (copied: the loop goes on meanwhile)."""
        return replay.state_dict()

    def write(self) -> None:
        """Nothing is written apart from the checkpoint."""

    def commit(self, kept: list[Path]) -> None:
        """Nothing to do once the checkpoint is on disk."""

    def restore(self, replay: Any, state: dict[str, Any]) -> None:
        """Load a checkpoint's replay state (one saved whole, or left out: then the replay
        stays empty and the caller refills it)."""
        if state.get("omitted"):
            return
        if "chunks" in state:
            raise CheckpointError(
                "this checkpoint keeps its replay in chunks: resume with replay_checkpoint=incremental"
            )
        replay.load_state_dict(state)


class NoReplay(FullReplay):
    """``replay_checkpoint=none``: checkpoints leave the replay out; a resumed run refills it."""

    def state(self, replay: Any) -> dict[str, Any]:
        """A marker only: nothing of the replay is kept."""
        return {"omitted": True}


class ReplayChunks(FullReplay):
    """``replay_checkpoint=incremental``: the replay's rows live in ``checkpoints/replay/``
    chunk files, each written once with (up to :data:`CHUNK_ROWS` of) the rows written since
    the previous checkpoint and shared by every checkpoint that still refers to them. A
    checkpoint itself holds only the small state (positions, RNG, sum-tree leaves, the n-step
    folder) and ``owner``, the chunk that holds each row's content (-1: never written).

    Crash safety: the new chunk is written, fsynced and renamed into place *before* the
    checkpoint that refers to it, and becomes the base of the next save only once that
    checkpoint is on disk (:meth:`commit`). A crash at any moment leaves the previous
    checkpoint and every chunk it refers to; a chunk no kept checkpoint refers to is deleted
    at the next commit.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / "checkpoints" / "replay"
        self.owner: np.ndarray | None = None  # of the last committed checkpoint
        self.mark: np.ndarray | None = None  # the replay's write mark at that checkpoint
        self.next_id = 0
        self.safe_steps = math.inf
        self._pending: tuple[np.ndarray, np.ndarray, int] | None = None
        self._jobs: list[tuple[Path, np.ndarray]] = []  # chunk files to write, and their rows
        self._columns: dict[str, np.ndarray] = {}
        self._refs: dict[str, set[int]] = {}  # chunk ids each numbered checkpoint refers to

    def path(self, chunk_id: int) -> Path:
        """``checkpoints/replay/chunk_<id>.pt``."""
        return self.dir / f"chunk_{chunk_id:08d}.pt"

    def state(self, replay: Any) -> dict[str, Any]:
        """The replay's small state and the row -> chunk map, with the rows written since the
        last committed checkpoint assigned to one new chunk. The rows stay in the ring until
        :meth:`write` reads them, and the loop must wait for that before ``safe_steps`` more
        vector steps (after them it could overwrite one)."""
        columns, mark = replay.row_columns(), replay.write_mark()
        owner = np.full(replay.capacity, -1, np.int32) if self.owner is None else self.owner.copy()
        since = np.zeros_like(mark) if self.mark is None else self.mark
        rows, chunk_id = replay.rows_since(since), self.next_id
        self._jobs, self._columns = [], columns
        self.safe_steps = replay.safe_steps(since) if len(rows) else math.inf
        # files of at most CHUNK_ROWS rows: once its rows are overwritten, a slice of a big
        # write (the first checkpoint of a full replay) can go without the rest of it
        for start in range(0, len(rows), CHUNK_ROWS):
            piece = rows[start : start + CHUNK_ROWS]
            self._jobs.append((self.path(chunk_id), piece))
            owner[piece] = chunk_id
            chunk_id += 1
        self._pending = (owner, mark, chunk_id)
        return {**replay.state_dict(rows=False), "chunks": {"owner": owner, "next_id": chunk_id}}

    def write(self) -> None:
        """Write the new chunks (each fsynced, renamed into place) from the ring's rows."""
        if self._jobs:
            self.dir.mkdir(parents=True, exist_ok=True)
        for path, rows in self._jobs:
            atomic_save({"rows": rows, **{name: column[rows] for name, column in self._columns.items()}}, path)
        self._jobs = []

    def commit(self, kept: list[Path]) -> None:
        """The checkpoint just saved (the newest of ``kept``) becomes the base of the next;
        chunks that none of the ``kept`` checkpoints refers to are deleted."""
        if self._pending is None:
            return
        self.owner, self.mark, self.next_id = self._pending
        self._pending = None
        # the new checkpoint's references are known here; older ones are read once from disk
        current = _chunk_ids(self.owner)
        self._refs = {path.name: self._refs[path.name] for path in kept if path.name in self._refs}
        if kept:
            self._refs[kept[-1].name] = current
        referenced = current.union(*(self._referenced_by(path) for path in kept))
        for chunk in self.dir.glob("chunk_*.pt*"):
            match = _CHUNK_FILE.search(chunk.name)
            if match is None or int(match.group(1)) not in referenced:
                chunk.unlink(missing_ok=True)

    def _referenced_by(self, checkpoint: Path) -> set[int]:
        if checkpoint.name not in self._refs:
            try:
                owner = safe_load(checkpoint)["replay"]["chunks"]["owner"]
                self._refs[checkpoint.name] = _chunk_ids(owner)
            except (CheckpointError, KeyError):
                self._refs[checkpoint.name] = set()  # not a chunked checkpoint: refers to none
        return self._refs[checkpoint.name]

    def restore(self, replay: Any, state: dict[str, Any]) -> None:
        """Load a checkpoint's replay state, its rows from the chunks it refers to; it becomes
        the base of the next save. (A checkpoint saved whole, as before this version, loads too.)"""
        if "chunks" not in state:
            super().restore(replay, state)
            return
        replay.load_state_dict(state)
        owner, columns = state["chunks"]["owner"], replay.row_columns()
        if len(owner) != replay.capacity:
            raise ValueError(f"replay chunks cover {len(owner)} rows, this buffer {replay.capacity}")
        for chunk_id in sorted(_chunk_ids(owner)):
            if not self.path(chunk_id).is_file():
                raise CheckpointError(
                    f"replay chunk {self.path(chunk_id)} of this checkpoint is missing; use an earlier checkpoint"
                )
            chunk = safe_load(self.path(chunk_id))
            rows = chunk["rows"]
            mine = owner[rows] == chunk_id  # rows a later chunk rewrote are read from that one
            for name, column in columns.items():
                column[rows[mine]] = chunk[name][mine]
        self.owner, self.next_id = owner.copy(), int(state["chunks"]["next_id"])
        self.mark = replay.write_mark()


def _chunk_ids(owner: np.ndarray) -> set[int]:
    """The chunks an ``owner`` map refers to (-1 marks rows never written)."""
    return set(np.unique(owner[owner >= 0]).tolist())


def replay_saver(mode: str, run_dir: str | Path) -> FullReplay:
    """How checkpoints keep the replay: ``incremental`` (chunks), ``full`` or ``none``."""
    return {"incremental": lambda: ReplayChunks(run_dir), "full": FullReplay, "none": NoReplay}[mode]()


# ----------------------------------------------------------------------------- a run's checkpoints
RESUMABLE = ("config", "agent", "replay", "loop", "envs")  # what `train --resume` needs


def load_checkpoint(
    run_dir: str | Path, required: tuple[str, ...] = RESUMABLE, checkpoint: str | Path | None = None
) -> dict[str, Any]:
    """The latest checkpoint of a run (or the one :func:`find_checkpoint` finds for
    ``checkpoint``), loaded safely; exit-2 errors for anything wrong.

    ``required``: the keys the caller needs; an agent alone (``config``, ``agent``) is in every
    dqnkit checkpoint, Ape-X's included, and a resumable one holds :data:`RESUMABLE`.
    """
    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    ckpt = _load_latest(CheckpointDir(run_dir)) if checkpoint is None else safe_load(path)
    if "apex" in ckpt and "loop" in required:
        raise CheckpointError(
            f"{run_dir} is an Ape-X run: its checkpoints hold the learner, not the actors' episodes or the "
            f"replay, so it cannot resume (`dqnkit eval {run_dir}` and dqnkit.load read it)"
        )
    for key in required:
        if key not in ckpt:
            what = "resumable dqnkit training" if "loop" in required else "dqnkit"
            raise CheckpointError(f"{run_dir} checkpoint lacks {key!r}: not a {what} checkpoint")
    return ckpt


def find_checkpoint(run_dir: str | Path, name: str | Path | None = None) -> Path:
    """The checkpoint file of a run that ``name`` names, without reading it: None or
    ``latest.pt`` the latest, ``step_N.pt`` the one of step N (with or without the zeros of
    its file name), another file of its ``checkpoints/``, or a path to a file. Anything else
    is an exit-2 error naming the run's checkpoints."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DqnkitError(f"run directory {run_dir} {'is a file' if run_dir.exists() else 'does not exist'}")
    if not (run_dir / "checkpoints").is_dir() and not (run_dir / "config.json").is_file():
        raise DqnkitError(_not_a_run(run_dir))
    checkpoints = CheckpointDir(run_dir)
    if name is None or str(name) == checkpoints.latest.name:
        if not checkpoints.latest.is_file() and (run_dir / "config.json").is_file():
            raise CheckpointError(
                f"{run_dir} has no checkpoint: it stopped before its first; train it anew with "
                f"`dqnkit train --config {run_dir / 'config.json'} --run-dir {run_dir} --overwrite`"
            )
        return checkpoints.latest
    for path in (checkpoints.dir / name, Path(name)):
        if path.is_file():
            return path
    step = re.fullmatch(r"step_(\d+)\.pt", Path(name).name)
    for path in checkpoints.numbered():
        if step is not None and int(path.stem.split("_")[1]) == int(step.group(1)):
            return path
    kept = ", ".join(p.name for p in checkpoints.numbered()) or "none"
    raise CheckpointError(f"{run_dir} has no checkpoint {name} (its checkpoints: {kept}, and latest.pt)")


def _not_a_run(path: Path) -> str:
    """Why ``path`` is not a run directory, naming the runs below it (runs/, an experiment's)."""
    # three levels down at most (runs/, an experiment's runs/NAME): not a walk of a whole home directory
    found = (path.glob("/".join(["*"] * depth + ["checkpoints", "latest.pt"])) for depth in range(1, 4))
    runs = sorted(c.parent.parent for pattern in found for c in pattern)
    what = f"{path} is not a dqnkit run directory (a run's has config.json and checkpoints/)"
    if not runs:
        return f"{what}; it holds no run either"
    more = f" and {len(runs) - 3} more" if len(runs) > 3 else ""
    return f"{what}; the runs in it: {', '.join(str(r) for r in runs[:3])}{more}"


def _load_latest(checkpoints: CheckpointDir) -> dict[str, Any]:
    """``latest.pt``, or where it does not load (a disk's fault: saves are atomic), an error
    naming the newest earlier checkpoint that does, and how to make it the latest. (A run
    without a checkpoint was refused by :func:`find_checkpoint`.)"""
    try:
        return safe_load(checkpoints.latest)
    except CheckpointError as exc:
        if not checkpoints.latest.is_file():
            raise
        latest = checkpoints.latest.stat()
        for path in reversed(checkpoints.numbered()):
            if path.stat().st_ino == latest.st_ino:  # latest.pt is a hard link to the newest
                continue
            try:
                safe_load(path)
            except CheckpointError:
                continue
            raise CheckpointError(
                f"{exc}; an earlier checkpoint loads: `ln -f {path} {checkpoints.latest}` makes it the one "
                "eval and --resume read"
            ) from None
        raise CheckpointError(f"{exc}, and no earlier checkpoint of the run loads") from None
