"""``dqnkit bench checkpoint``: what a checkpoint costs with a full Atari replay.

A 1M-row :class:`~dqnkit.replay.FrameReplay` (about 7 GB of RAM) is filled, then checkpointed
through the training loop's own path (:class:`~dqnkit.monitor.RunMonitor` with a background
writer, the replay kept ``full`` or ``incremental``), after 10k and after 100k new
transitions. Per checkpoint: the bytes written (against the new rows' own bytes), how long
the loop was blocked, how long the writer took. Then the disk a run keeps with
``keep_checkpoints=3``, and the steps/s of the replay side of a training loop (a write per
step, a batch sampled every 4) with a checkpoint every 10k or 100k steps against none: the
writer thread competes with it for the interpreter and the memory bus. The network's update,
which would make the loop many times slower and the writer's share smaller, is left out.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dqnkit.bench import progress, report
from dqnkit.checkpoint import replay_saver
from dqnkit.config import Config
from dqnkit.monitor import RunMonitor
from dqnkit.replay import FrameReplay


def _filled(capacity: int, seed: int = 0) -> FrameReplay:
    """A 1-env FrameReplay whose ring is full, written directly (add_step, row by row, would
    take minutes for 1M rows; what it writes is the same kind of data)."""
    replay = FrameReplay(capacity, (84, 84), 4, seed=seed)
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 255, (1000, 84, 84), dtype=np.uint8)  # random: nothing compresses
    frames = replay.frames.reshape(-1, 84, 84)
    for start in range(0, len(frames), len(tile)):
        frames[start : start + len(tile)] = tile[: len(frames) - start]
    replay.actions[:] = rng.integers(0, 4, replay.actions.shape)
    replay.ep_pos[0] = np.arange(replay.rows) % 1000
    replay.written[:], replay.pos[:] = replay.rows, 0
    return replay


def _write(replay: FrameReplay, steps: int, rng: np.random.Generator, sample_every: int = 0) -> float:
    """``steps`` env steps into the replay, an episode end every 1000, and with
    ``sample_every`` a batch of 32 sampled that often (the replay side of DQN's training
    step, ``train_freq=4``); returns the seconds."""
    obs = rng.integers(0, 255, (1, 4, 84, 84), dtype=np.uint8)
    action, reward, no = np.zeros(1, np.int64), np.ones(1), np.zeros(1, bool)
    done = np.ones(1, bool)
    start = time.perf_counter()
    for t in range(steps):
        replay.add_step(obs, action, reward, obs, no, done if t % 1000 == 999 else no)
        if sample_every and t % sample_every == 0:
            replay.sample(32)
    return time.perf_counter() - start


class _Saver:
    """The training loop's save path (training._save) on a bare replay."""

    def __init__(self, mode: str, run_dir: Path) -> None:
        run_dir.mkdir(parents=True)
        self.saver = replay_saver(mode, run_dir)
        self.monitor = RunMonitor(Config(keep_checkpoints=3, replay_checkpoint=mode), run_dir)
        self.dir = run_dir / "checkpoints"

    def save(self, step: int, replay: FrameReplay) -> float:
        """Checkpoint ``step``; returns how long the loop was blocked."""
        start = time.perf_counter()
        self.monitor.wait_saved()
        payload = {"replay": self.saver.state(replay), "loop": {"step": step}}
        self.monitor.save(step, payload, before=self.saver.write, after=self.saver.commit, background=True)
        return time.perf_counter() - start

    def finish(self) -> float:
        """Wait for the writer; returns how long it still took."""
        start = time.perf_counter()
        self.monitor.wait_saved()
        return time.perf_counter() - start

    def disk_bytes(self) -> int:
        """Bytes of every file the run keeps (hard links counted once)."""
        seen, total = set(), 0
        for path in self.dir.rglob("*"):
            if path.is_file() and path.stat().st_ino not in seen:
                seen.add(path.stat().st_ino)
                total += path.stat().st_size
        return total


def _per_checkpoint(replay: FrameReplay, mode: str, root: Path, rng: np.random.Generator) -> list[dict[str, Any]]:
    run = root / mode
    saver = _Saver(mode, run)
    saver.save(0, replay)  # the base: a full replay's first checkpoint writes it whole in either mode
    saver.finish()
    rows = []
    for new in (10_000, 100_000):
        _write(replay, new, rng)
        before = saver.disk_bytes()
        blocked = saver.save(new, replay)
        writing = saver.finish()
        new_bytes = new * _row_bytes(replay)
        written = saver.disk_bytes() - before  # three checkpoints: none is pruned yet
        rows.append(
            {
                "mode": mode,
                "new_transitions": new,
                "new_rows_bytes": new_bytes,
                "bytes_written": written,
                "written_over_new": round(written / new_bytes, 3),
                "loop_blocked_s": round(blocked, 3),
                "writer_s": round(blocked + writing, 3),
            }
        )
    shutil.rmtree(run)
    return rows


def _row_bytes(replay: FrameReplay) -> int:
    return sum(column.itemsize * int(np.prod(column.shape[1:])) for column in replay.row_columns().values())


def _disk(replay: FrameReplay, root: Path, rng: np.random.Generator, every: int) -> dict[str, Any]:
    """Five incremental checkpoints ``every`` steps apart, three kept: disk against one replay."""
    saver = _Saver("incremental", root / "disk")
    for i in range(6):
        if i:
            _write(replay, every, rng)
        saver.save(i * every, replay)
        saver.finish()
    used = saver.disk_bytes()
    shutil.rmtree(root / "disk")
    return {"checkpoints_written": 6, "kept": 3, "disk_bytes": used, "disk_over_replay": round(used / replay.nbytes, 3)}


def _throughput(replay: FrameReplay, root: Path, rng: np.random.Generator, steps: int) -> list[dict[str, Any]]:
    """Steps/s of the replay side of a training loop (write every step, sample 32 every 4)
    with no checkpoint, and with an incremental one every 10k and every 100k steps."""
    plain = steps / _write(replay, steps, rng, sample_every=4)
    rows = []
    for every in (10_000, 100_000):
        saver = _Saver("incremental", root / f"tp-{every}")
        saver.save(0, replay)
        saver.finish()
        start = time.perf_counter()
        for done in range(0, steps, every):
            _write(replay, min(every, steps - done), rng, sample_every=4)
            if done + every <= steps:
                saver.save(done + every, replay)
        rate = steps / (time.perf_counter() - start)  # a loop would go on while the last write ends
        saver.finish()
        shutil.rmtree(root / f"tp-{every}")
        rows.append(
            {
                "steps": steps,
                "checkpoint_every": every,
                "steps_per_s_none": round(plain, 1),
                "steps_per_s_checkpointing": round(rate, 1),
                "ratio": round(rate / plain, 3),
            }
        )
    return rows


def run(capacity: int = 1_000_000, out: Path | None = None, scratch: Path | None = None) -> dict[str, Any]:
    """Measure, print the tables, return (and write) the JSON. ``scratch``: where checkpoints
    are written (default: a temporary directory, removed afterwards)."""
    rng = np.random.default_rng(0)
    replay = _filled(capacity)
    root = Path(tempfile.mkdtemp(prefix="dqnkit-bench-ckpt-", dir=scratch))
    try:
        progress(f"replay of {capacity:,} rows filled")
        rows = [row for mode in ("full", "incremental") for row in _per_checkpoint(replay, mode, root, rng)]
        progress("one checkpoint each way timed")
        disk = _disk(replay, root, rng, every=max(capacity // 10, 1000))
        progress(f"disk use measured: {disk['disk_over_replay']}x one replay")
        throughput = _throughput(replay, root, rng, steps=min(capacity // 5, 200_000))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"capacity": capacity, "replay_bytes": replay.nbytes, "checkpoints": rows, "disk": disk}
    result["throughput"] = throughput
    return report(result, _print, out)


def _print(result: dict[str, Any]) -> None:
    print(f"FrameReplay of {result['capacity']:,} rows ({result['replay_bytes'] / 1e9:.2f} GB), one checkpoint each:")
    print(
        "| replay_checkpoint | new transitions | written MB | new rows MB | written / new | loop blocked s | writer s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in result["checkpoints"]:
        print(
            f"| {r['mode']} | {r['new_transitions']:,} | {r['bytes_written'] / 1e6:,.0f} | "
            f"{r['new_rows_bytes'] / 1e6:,.0f} | {r['written_over_new']} | {r['loop_blocked_s']} | {r['writer_s']} |"
        )
    d = result["disk"]
    print(f"disk with {d['kept']} kept of {d['checkpoints_written']}: {d['disk_over_replay']}x one replay")
    for t in result["throughput"]:
        print(
            f"training loop's replay side (write + sample 32 every 4), {t['steps']:,} steps: "
            f"{t['steps_per_s_none']:,.0f} steps/s without checkpoints, {t['steps_per_s_checkpointing']:,.0f} "
            f"with one every {t['checkpoint_every']:,} ({t['ratio']}x)"
        )
