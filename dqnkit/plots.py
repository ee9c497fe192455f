"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dqnkit.logger import read_metrics  # noqa: E402


def running_mean(x: np.ndarray, window: int = 100) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return x
    csum = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def learning_curve(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Per-episode return, its 100-episode running mean, and evaluation points with std."""
    rows = read_metrics(metrics_csv)
    ep = [r for r in rows if r["kind"] == "episode"]
    ev = [r for r in rows if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if ep:
        steps = np.array([int(r["step"]) for r in ep])
        returns = np.array([float(r["return"]) for r in ep])
        ax.plot(steps, returns, color="tab:blue", alpha=0.25, lw=0.8, label="episode return")
        ax.plot(steps, running_mean(returns), color="tab:blue", lw=2, label="100-episode running mean")
    if ev:
        ax.errorbar([int(r["step"]) for r in ev], [float(r["return"]) for r in ev],
                    yerr=[float(r["return_std"] or 0) for r in ev], fmt="o", color="tab:red",
                    capsize=3, label="greedy evaluation (mean ± std)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
