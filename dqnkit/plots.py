"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import warnings
from array import array
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dqnkit.logger import iter_metrics  # noqa: E402
from dqnkit.stats import iqm_band  # noqa: E402

BAND = "line: IQM over seeds, band: its 95% stratified bootstrap CI"


def running_mean(x: np.ndarray, window: int = 100) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return x
    csum = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def _columns(metrics_csv: str | Path, x: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(x, return) of the episodes and (x, return, std) of the evaluations in a metrics.csv,
    read row by row into 8 bytes a number (a list of its rows would hold 1 KB each)."""
    ep, ev = (array("d"), array("d")), (array("d"), array("d"), array("d"))
    for r in iter_metrics(metrics_csv):
        if r["kind"] == "episode":
            ep[0].append(float(r[x]))
            ep[1].append(float(r["return"]))
        elif r["kind"] == "eval":
            ev[0].append(float(r[x]))
            ev[1].append(float(r["return"]))
            ev[2].append(float(r["return_std"] or 0))
    return tuple(np.asarray(c) for c in ep), tuple(np.asarray(c) for c in ev)


def learning_curve(metrics_csv: str | Path, out_png: str | Path, title: str = "", x: str = "step") -> Path:
    """Per-episode return, its 100-episode running mean, and evaluation points with std,
    against environment steps (``x="step"``) or training wall seconds (``x="wall_s"``)."""
    ep, ev = _columns(metrics_csv, x)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if len(ep[0]):
        steps, returns = ep
        ax.plot(steps, returns, color="tab:blue", alpha=0.25, lw=0.8, label="episode return")
        ax.plot(steps, running_mean(returns), color="tab:blue", lw=2, label="100-episode running mean")
    if len(ev[0]):
        ax.errorbar(
            *ev,
            fmt="o",
            color="tab:red",
            capsize=3,
            label="greedy evaluation (mean ± std)",
        )
    ax.set_xlabel("environment steps" if x == "step" else "training wall seconds")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(ep[0]) or len(ev[0]):
        ax.legend(loc="upper left", fontsize=8)
    else:  # a run too short to finish an episode: say so rather than draw empty axes
        ax.text(0.5, 0.5, "no episode finished yet", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, out_png)


def curves(
    series: dict[str, np.ndarray],
    out_png: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    window: int = 10,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One smoothed line per name, with a band of ± one std over seeds. Each series is [K, T]."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, values in series.items():
        values = np.atleast_2d(values)
        smooth = np.array([running_mean(v, window) for v in values])
        mean, std = smooth.mean(0), smooth.std(0)
        x = np.arange(1, len(mean) + 1)
        (line,) = ax.plot(x, mean, lw=1.8, label=name)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def grid_paths(
    shape: tuple[int, int], paths: dict[str, list[int]], cliff: list[int], out_png: str | Path, title: str = ""
) -> Path:
    """Greedy paths drawn on a grid world; ``cliff`` cells shaded."""
    rows, cols = shape
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    grid = np.zeros(shape)
    for cell in cliff:
        grid[divmod(cell, cols)] = 1
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=2.5)
    for offset, (name, path) in zip(np.linspace(-0.15, 0.15, len(paths)), paths.items()):
        ys, xs = np.divmod(np.array(path), cols)
        ax.plot(xs + offset, ys + offset, lw=2.2, marker=".", label=f"{name} ({len(path) - 1} steps)")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(paths))
    return _save(fig, out_png)


def lines(
    x: list[float],
    ys: dict[str, list[float]],
    out_png: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
) -> Path:
    """Plain labelled lines over a shared x."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, y in ys.items():
        ax.plot(x, y, marker="o", lw=1.6, label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    # the saved area fits what was drawn (a fixed-aspect grid can push its title out); a
    # tight_layout before it laid the figure out a second time for the same margins
    fig.savefig(out_png, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return out_png


def band_curves(grid: np.ndarray, curves: dict[str, np.ndarray], out_png: str | Path, title: str = "") -> Path:
    """Per variant: the IQM over seeds of the 100-episode running mean, with its pointwise 95%
    stratified bootstrap CI as a band (:func:`dqnkit.stats.iqm_band`). ``curves[name]`` is
    ``[seeds, len(grid)]``; a seed without an episode (all NaN) is left out."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, runs in curves.items():
        _iqm_line(ax, grid, runs[~np.isnan(runs).all(axis=1)], name, lw=2)
    ax.set(xlabel="environment steps", ylabel="return (100-episode running mean)", title=f"{title}\n{BAND}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_png)


def _iqm_line(ax: plt.Axes, x: np.ndarray, runs: np.ndarray, name: str, **line: object) -> plt.Line2D | None:
    """The IQM of ``runs`` ``[seeds, len(x)]`` with its 95% CI band; None without a run."""
    if len(runs) == 0:
        return None
    iqm_x, low_x, high_x = iqm_band(runs)
    (drawn,) = ax.plot(x, iqm_x, label=f"{name} (IQM of {len(runs)} seed{'s' * (len(runs) != 1)})", **line)
    ax.fill_between(x, low_x, high_x, color=drawn.get_color(), alpha=0.2, lw=0)
    return drawn


def overestimation(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], out_png: str | Path) -> Path:
    """Per variant: predicted max-Q of the start states (solid) and the realised discounted
    return (dashed), means over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, (steps, pred, real) in curves.items():
        (line,) = ax.plot(steps, pred.mean(0), lw=2, label=f"{name}: predicted max Q(s0)")
        ax.plot(steps, real.mean(0), lw=2, ls="--", color=line.get_color(), label=f"{name}: realised return")
    ax.set(xlabel="environment steps", ylabel="discounted return", title="overestimation: prediction vs reality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def versus(panels: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]], out_png: str | Path) -> Path:
    """One row per env: the 100-episode running mean against environment steps (left) and
    against training wall seconds (right), one colour per variant in every row, and one
    legend below. Per variant, each run is a thin line and their IQM a thick one, with its
    95% stratified bootstrap CI as a band (:func:`seeds_on_grid`). ``panels[env][variant]``
    lists each seed's (steps, wall seconds, returns) per episode."""
    names = list(dict.fromkeys(name for variants in panels.values() for name in variants))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), dpi=100, squeeze=False)
    handles = {}
    for (env, variants), row in zip(panels.items(), axes):
        for variant, seeds in variants.items():
            seeds = [seed for seed in seeds if len(seed[2])]  # a run without an episode has no curve
            for axis, ax in enumerate(row):
                for seed in seeds:
                    ax.plot(seed[axis], running_mean(seed[2]), color=colors[variant], lw=0.7, alpha=0.3)
                x, runs = seeds_on_grid([(seed[axis], seed[2]) for seed in seeds])
                line = _iqm_line(ax, x, runs, variant, color=colors[variant], lw=2)
                if line is not None:
                    handles[line.get_label()] = line
        row[0].set(xlabel="environment steps", ylabel="return (100-episode running mean)", title=env)
        row[0].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
        row[1].set(xlabel="training wall seconds", title=env)
        for ax in row:
            ax.grid(alpha=0.3)
    fig.suptitle(BAND, fontsize=9)
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=8, ncol=2)
    return _save(fig, out_png)


def seeds_on_grid(seeds: list[tuple[np.ndarray, np.ndarray]], points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(x, ``[seeds, points]``): each seed's 100-episode running mean of (x, return) per
    episode, read off a grid from the earliest first episode to the latest last one. A seed
    holds its first value before its first episode and its last value after its last (a run
    stopped early at its goal keeps it, as the tune objective counts it)."""
    if not seeds:
        return np.zeros(0), np.zeros((0, 0))
    grid = np.linspace(min(x[0] for x, _ in seeds), max(x[-1] for x, _ in seeds), points)
    return grid, np.array([np.interp(grid, x, running_mean(returns)) for x, returns in seeds])


def intervals(values: dict[str, dict[str, list[float]]], out_png: str | Path, title: str = "") -> Path:
    """One panel per measure: each variant's estimate with its interval (``[value, low, high]``)."""
    measures = list(next(iter(values.values())))
    size = (4.5 * len(measures), 0.6 * len(values) + 1.8)
    # constrained layout keeps the figure's title clear of the panels' titles
    fig, axes = plt.subplots(1, len(measures), figsize=size, squeeze=False, layout="constrained")
    for ax, measure in zip(axes[0], measures):
        for row, by_measure in enumerate(values.values()):
            value, low, high = by_measure[measure]
            ax.errorbar([value], [row], xerr=[[value - low], [high - value]], fmt="o", capsize=4)
        ax.set_yticks(range(len(values)), list(values))
        ax.set_title(measure.replace("_", " "))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out_png)


def optuna_study(study: Any, out_png: str | Path) -> Path:
    """Optuna's optimization history and parameter importances side by side (the
    importances where two trials or more completed with different parameters)."""
    import optuna  # dqnkit tune's extra: imported only here

    panels = []
    for draw in (
        optuna.visualization.matplotlib.plot_optimization_history,
        optuna.visualization.matplotlib.plot_param_importances,
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's "experimental" warning
                ax = draw(study)
        except Exception:  # too few completed trials for importances
            continue
        ax.figure.set_size_inches(7, 4.5)
        ax.figure.tight_layout()
        ax.figure.canvas.draw()
        panels.append(np.asarray(ax.figure.canvas.buffer_rgba()))
        plt.close(ax.figure)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, image in zip(axes[0], panels):
        ax.imshow(image)
        ax.axis("off")
    fig.tight_layout(pad=0)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
