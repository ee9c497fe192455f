"""``dqnkit bench replay``: one PER sample + one priority update, batch 256, at 10k/100k/1M.

Peers, measured in the same process on the same data:
- the lesson's ``PrioritizedReplayBuffer`` (normalise all N priorities, ``np.random.choice``,
  a Python loop to gather and to update): O(N) per batch;
- cpprb's C++ ``PrioritizedReplayBuffer`` (optional: ``pip install cpprb``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dqnkit.bench import report
from dqnkit.replay import PrioritizedReplay

OBS_DIM, ALPHA, BETA = 4, 0.6, 0.4


class LessonPER:
    """The lesson's prioritized buffer, as written there (tuples in a list, O(N) sampling)."""

    def __init__(self, capacity: int, alpha: float = ALPHA) -> None:
        self.capacity, self.alpha = capacity, alpha
        self.buffer: list[tuple] = []
        self.priorities = np.zeros(capacity)
        self.position = 0

    def sample(self, batch_size: int, beta: float = BETA) -> tuple:
        """The lesson's O(N) sample: normalise every priority, then ``np.random.choice``."""
        n = len(self.buffer)
        probs = self.priorities[:n] ** self.alpha
        probs /= probs.sum()
        indices = np.random.choice(n, batch_size, p=probs)
        weights = (n * probs[indices]) ** (-beta)
        weights /= weights.max()
        batch = [self.buffer[i] for i in indices]
        states, actions, rewards, next_states, dones = zip(*batch)
        return np.array(states), actions, rewards, np.array(next_states), dones, indices, weights

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """The lesson's priority update: ``|td| + eps`` written into the flat array."""
        for idx, error in zip(indices, td_errors):
            self.priorities[idx] = abs(error) + 1e-6


def _filled(capacity: int, rng: np.random.Generator) -> dict[str, Any]:
    """The same transitions and priorities for every contender."""
    obs = rng.standard_normal((capacity, OBS_DIM)).astype(np.float32)
    return {
        "obs": obs,
        "act": rng.integers(0, 2, capacity),
        "rew": rng.standard_normal(capacity).astype(np.float32),
        "next_obs": np.roll(obs, -1, axis=0),
        "done": np.zeros(capacity, np.float32),
        "prio": rng.random(capacity) + 0.01,
    }


def _dqnkit(data: dict[str, Any], capacity: int) -> Callable[[np.ndarray], None]:
    buf = PrioritizedReplay(capacity, (OBS_DIM,), alpha=ALPHA, beta=BETA, seed=0)
    buf.add_batch(data["obs"], data["act"], data["rew"], data["next_obs"], data["done"])
    buf.update_priorities(np.arange(capacity), data["prio"])

    def step(td: np.ndarray) -> None:
        batch = buf.sample(len(td))
        buf.update_priorities(batch.indices, td)

    return step


def _lesson(data: dict[str, Any], capacity: int) -> Callable[[np.ndarray], None]:
    buf = LessonPER(capacity)
    # filled directly: its push() takes a max over all priorities per item (O(N^2) to fill)
    buf.buffer = list(zip(data["obs"], data["act"], data["rew"], data["next_obs"], data["done"]))
    buf.priorities[:] = data["prio"]

    def step(td: np.ndarray) -> None:
        batch = buf.sample(len(td))
        buf.update_priorities(batch[5], td)

    return step


def _cpprb(data: dict[str, Any], capacity: int) -> Callable[[np.ndarray], None] | None:
    try:
        import cpprb
    except ImportError:
        return None
    buf = cpprb.PrioritizedReplayBuffer(
        capacity,
        {"obs": {"shape": OBS_DIM}, "act": {}, "rew": {}, "next_obs": {"shape": OBS_DIM}, "done": {}},
        alpha=ALPHA,
    )
    buf.add(
        obs=data["obs"],
        act=data["act"],
        rew=data["rew"],
        next_obs=data["next_obs"],
        done=data["done"],
        priorities=data["prio"],
    )

    def step(td: np.ndarray) -> None:
        batch = buf.sample(len(td), beta=BETA)
        buf.update_priorities(batch["indexes"], np.abs(td) + 1e-6)

    return step


def _time(step: Callable[[np.ndarray], None], batch: int, seconds: float, rng: np.random.Generator) -> float:
    """Median microseconds per sample+update over at least 5 calls and about ``seconds``."""
    td = rng.random(batch)
    step(td)  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < 10_000):
        t0 = time.perf_counter()
        step(td)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def run(
    capacities: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    batch: int = 256,
    seconds: float = 2.0,
    out: Path | None = None,
) -> dict[str, Any]:
    """Time every contender at every capacity; print a table and return (and write) the JSON."""
    rng = np.random.default_rng(0)
    rows = []
    for capacity in capacities:
        data = _filled(capacity, rng)
        row: dict[str, Any] = {"capacity": capacity, "batch": batch}
        for name, make in (("dqnkit", _dqnkit), ("lesson", _lesson), ("cpprb", _cpprb)):
            step = make(data, capacity)
            row[f"{name}_us"] = None if step is None else round(_time(step, batch, seconds, rng), 1)
        row["speedup_vs_lesson"] = round(row["lesson_us"] / row["dqnkit_us"], 1)
        row["speedup_vs_cpprb"] = round(row["cpprb_us"] / row["dqnkit_us"], 2) if row["cpprb_us"] else None
        rows.append(row)
    result = {
        "benchmark": "replay",
        "what": "one PER sample + one priority update, microseconds (median)",
        "rows": rows,
    }
    return report(result, lambda r: _print_table(r["rows"]), out)


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'capacity':>10} {'dqnkit µs':>10} {'lesson µs':>11} {'cpprb µs':>9} {'vs lesson':>10} {'vs cpprb':>9}"
    print(head)
    for r in rows:
        cpprb = f"{r['cpprb_us']:>9.1f}" if r["cpprb_us"] else f"{'n/a':>9}"
        vs_cpprb = f"{r['speedup_vs_cpprb']:>8.2f}x" if r["speedup_vs_cpprb"] else f"{'n/a':>9}"
        print(
            f"{r['capacity']:>10,} {r['dqnkit_us']:>10.1f} {r['lesson_us']:>11.1f} {cpprb} "
            f"{r['speedup_vs_lesson']:>9.1f}x {vs_cpprb}"
        )
