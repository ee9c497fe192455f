"""Reproducible benchmarks: each prints a table against its peers, measured in the same
process, and writes the figures as JSON. Run with ``dqnkit bench NAME``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dqnkit.files import json_text
from dqnkit.replay.uniform import Batch


def report(result: dict[str, Any], table: Callable[[dict[str, Any]], None], out: Path | None) -> dict[str, Any]:
    """Print ``result`` with ``table`` and write it to ``out`` as JSON (if given)."""
    table(result)
    if out is not None:
        out.write_text(json_text(result, indent=2))
    return result


def progress(message: str) -> None:
    """One line on stderr as each part of a bench finishes: a bench runs for minutes, and
    a run cut short (a timeout on a lent GPU) still leaves the figures it had measured."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def quiet_sb3(model: Any) -> Any:
    """``model`` with a logger that writes nothing: SB3's default one makes a folder
    ``SB3-<time>`` in the temp directory at every ``learn()``, and leaves it there."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def random_batches(obs_shape: tuple[int, ...], n_actions: int, size: int, count: int) -> list[Batch]:
    """``count`` batches of ``size`` for an update timing: observations of ``obs_shape``
    (uint8 0/1 grids, or frames, for 3-d shapes; Gaussian vectors otherwise), and rewards,
    terminations, 1-3 step horizons and IS weights that all vary."""
    rng = np.random.default_rng(0)

    def obs() -> np.ndarray:
        if len(obs_shape) == 3:
            return rng.integers(0, 2, (size, *obs_shape), dtype=np.uint8)
        return rng.standard_normal((size, *obs_shape)).astype(np.float32)

    return [
        Batch(
            obs(),
            rng.integers(0, n_actions, size),
            rng.standard_normal(size).astype(np.float32),
            obs(),
            (rng.random(size) < 0.1).astype(np.float32),
            rng.integers(1, 4, size),
            rng.uniform(0.2, 1.0, size).astype(np.float32),
            np.arange(size),
        )
        for _ in range(count)
    ]
