"""The lesson's exercises as one command each: ``dqnkit experiment NAME``.

An experiment is a base preset, a few named variants (config overrides) and a way to read
the runs. Every variant x seed is an ordinary dqnkit run under ``OUT/runs/`` (so each can be
inspected, evaluated or resumed on its own), trained in parallel processes; then the runs'
metrics.csv files are turned into plots, ``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dqnkit import plots, presets
from dqnkit.bench import progress
from dqnkit.config import Config
from dqnkit.errors import Interrupted, sigterm_raises
from dqnkit.files import RunLock, atomic_write_text, json_text, make_dir
from dqnkit.logger import read_metrics


@dataclass(frozen=True)
class Experiment:
    """One experiment of the lesson: its variants, seeds, steps and the plots it draws."""

    description: str
    preset: str
    steps: int
    variants: dict[str, dict[str, Any]]
    extra: Callable[[dict[str, list[list[dict[str, str]]]], Path, int], dict[str, dict[str, float]]] | None = None
    base: dict[str, Any] = field(default_factory=dict)
    # False where variants train different envs (one return axis would mix their scales):
    # ``extra`` draws the plots then
    band_plot: bool = True


# ---------------------------------------------------------------------------- metrics
def episodes(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(end step, return) of every training episode of one run."""
    ep = [r for r in rows if r["kind"] == "episode"]
    return np.array([int(r["step"]) for r in ep]), np.array([float(r["return"]) for r in ep])


def on_grid(rows: list[dict[str, str]], grid: np.ndarray, window: int = 100) -> np.ndarray:
    """The run's ``window``-episode running mean, read off at the env steps in ``grid``."""
    steps, returns = episodes(rows)
    if len(steps) == 0:
        return np.full(len(grid), np.nan)
    return np.interp(grid, steps, plots.running_mean(returns, window))


def final_return(rows: list[dict[str, str]]) -> float:
    """Mean return of the run's last 100 training episodes."""
    return float(episodes(rows)[1][-100:].mean())


def collapses(rows: list[dict[str, str]], window: int = 20, floor: float = 100.0) -> int:
    """How often the 20-episode running mean falls below half its best value so far
    (once that best exceeds ``floor``): the sudden forgetting a moving target causes."""
    curve = plots.running_mean(episodes(rows)[1], window)
    peak, below, count = -np.inf, False, 0
    for value in curve:
        peak = max(peak, value)
        now_below = peak > floor and value < peak / 2
        count += now_below and not below
        below = now_below
    return count


def _stability(runs: dict[str, list[list[dict[str, str]]]], out: Path, steps: int) -> dict[str, dict[str, float]]:
    """Std of the running mean over the last third of training, and the number of collapses."""
    grid = np.linspace(steps * 2 / 3, steps, 100)
    return {
        v: {
            "late_running_mean_std": float(np.mean([np.nanstd(on_grid(r, grid)) for r in rs])),
            "collapses_mean": float(np.mean([collapses(r) for r in rs])),
        }
        for v, rs in runs.items()
    }


def _overestimation(runs: dict[str, list[list[dict[str, str]]]], out: Path, steps: int) -> dict[str, dict[str, float]]:
    """Predicted max-Q of the start states vs the realised discounted return, per variant."""
    curves, result = {}, {}
    for variant, rs in runs.items():
        evals = [[r for r in rows if r["kind"] == "eval" and r["q_pred"]] for rows in rs]
        at = np.array([int(r["step"]) for r in evals[0]])
        pred = np.array([[float(r["q_pred"]) for r in e] for e in evals])  # [K, evals]
        real = np.array([[float(r["q_real"]) for r in e] for e in evals])
        late = at >= steps / 2
        result[variant] = {
            "bias_mean": float((pred - real)[:, late].mean()),
            "bias_std": float((pred - real)[:, late].mean(axis=1).std()),
            "q_pred_final": float(pred[:, -1].mean()),
            "q_real_final": float(real[:, -1].mean()),
        }
        curves[variant] = (at, pred, real)
    plots.overestimation(curves, out / "overestimation.png")
    return result


def _pqn_vs_dqn(runs: dict[str, list[list[dict[str, str]]]], out: Path, steps: int) -> dict[str, dict[str, float]]:
    """Per env, return against env steps and against wall seconds (pqn-vs-dqn.png); per
    variant the median training wall time, steps and final greedy evaluation."""
    result, panels = {}, {}
    for variant, rs in runs.items():
        summaries = [
            json.loads((out / "runs" / f"{variant}-s{s}" / "summary.json").read_text()) for s in range(len(rs))
        ]
        evals = [s["eval_return_mean"] for s in summaries]
        goal = presets.get(_variant_preset("pqn-vs-dqn", variant)).stop_at_return
        result[variant] = {
            "wall_s_median": float(np.median([s["wall_s"] for s in summaries])),
            "steps_median": float(np.median([s["steps"] for s in summaries])),
            "eval_return_mean": float(np.mean(evals)),
            **({"solved": float(sum(e >= goal for e in evals))} if goal is not None else {}),
        }
        panel = panels.setdefault(summaries[0]["env_id"], {})
        panel[variant] = [episodes_by(rows) for rows in rs]
    plots.versus(panels, out / "pqn-vs-dqn.png")
    return result


def episodes_by(rows: Iterable[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(end step, training wall seconds, return) of every training episode of one run's
    rows (:func:`~dqnkit.logger.iter_metrics`), 8 bytes a number as they are read."""
    steps, wall, returns = array("d"), array("d"), array("d")
    for r in rows:
        if r["kind"] == "episode":
            steps.append(float(r["step"]))
            wall.append(float(r["wall_s"]))
            returns.append(float(r["return"]))
    return np.asarray(steps), np.asarray(wall), np.asarray(returns)


EXPERIMENTS: dict[str, Experiment] = {
    "target-ablation": Experiment(
        "lesson exercise 1: target network refreshed every 1000 steps vs copied every step",
        "cartpole-lesson",
        30_000,
        {"hard-1000": {"target_update_interval": 1000}, "hard-1": {"target_update_interval": 1}},
    ),
    "soft-vs-hard": Experiment(
        "lesson exercise 2: Polyak tau=0.005 every step vs a hard copy every 1000 steps",
        "cartpole-lesson",
        30_000,
        {"soft": {"tau": 0.005, "target_update_interval": 1}, "hard": {"tau": 0.0, "target_update_interval": 1000}},
        extra=_stability,
    ),
    "overestimation": Experiment(
        "lesson exercise 3: predicted Q of the start states vs the return collected, DQN vs Double DQN",
        "cartpole-lesson",
        30_000,
        {"dqn": {"double": False}, "double_dqn": {"double": True}},
        # The lesson's target refresh every 1000 steps lets Q grow by about one reward per refresh
        # (30 refreshes in 30k steps cap Q(s0) near 26): refresh every 100 so the values can
        # converge, and overshoot, within the run.
        extra=_overestimation,
        base={"log_overestimation": True, "eval_every": 2000, "eval_episodes": 5, "target_update_interval": 100},
    ),
    "rainbow-ablation": Experiment(
        "Rainbow on CartPole: the full agent, and each of its six parts removed in turn",
        "cartpole-rainbow",
        20_000,
        {
            "full": {},
            "no-double": {"double": False},
            "no-prioritized": {"prioritized": False},
            "no-dueling": {"dueling": False},
            "no-multistep": {"n_step": 1},
            "no-distributional": {"distributional": "none"},
            "no-noisy": {"noisy": False, "eps_start": 1.0},
        },
        base={
            "distributional": "c51",
            "n_atoms": 51,
            "v_min": 0.0,
            "v_max": 100.0,
            "noisy": True,
            "stop_at_return": None,
            "eval_every": 5000,
            "eval_episodes": 5,
        },
    ),
    "pqn-vs-dqn": Experiment(
        "PQN against DQN, each with its own preset: CartPole-v1 until solved (greedy eval >= 475), "
        "MinAtar Breakout at equal env steps; return against env steps and against wall seconds",
        "cartpole",
        200_000,
        {
            "dqn-cartpole": {"preset": "cartpole"},
            "pqn-cartpole": {"preset": "pqn-cartpole"},
            "dqn-minatar": {"preset": "minatar"},
            "pqn-minatar": {"preset": "pqn-minatar"},
        },
        extra=_pqn_vs_dqn,
        band_plot=False,
    ),
}


# ----------------------------------------------------------------------------- runner
def _variant_preset(name: str, variant: str) -> str:
    """The preset a variant starts from: its own ``preset`` entry, else the experiment's."""
    return EXPERIMENTS[name].variants[variant].get("preset", EXPERIMENTS[name].preset)


def configs(name: str, seeds: int, steps: int | None) -> dict[tuple[str, int], Config]:
    """Every run of the experiment, validated before anything starts. ``steps`` (or the
    experiment's) applies to every run, except that a variant naming its own preset that
    stops at a goal (``stop_at_return``) keeps that preset's budget when ``steps`` is None."""
    exp = EXPERIMENTS[name]
    runs = {}
    for variant, overrides in exp.variants.items():
        preset = _variant_preset(name, variant)
        own = presets.get(preset)
        if steps is not None:  # given (0 included: the config refuses it)
            total = steps
        elif own.stop_at_return is not None and "preset" in overrides:
            total = own.total_steps
        else:
            total = exp.steps
        values = {k: v for k, v in {**exp.base, **overrides}.items() if k != "preset"}
        for seed in range(seeds):
            runs[(variant, seed)] = presets.get(preset, **values, seed=seed, total_steps=total, checkpoint_every=total)
    return runs


def _train_one(args: tuple[Config, str, bool]) -> tuple[dict[str, Any], str]:
    """Train one run; unless ``fresh``, keep it if an earlier start of the experiment finished
    it with this config, or resume it from its checkpoint (Ctrl-C saves one). Returns its
    summary and which of ``trained``, ``resumed``, ``kept`` it was."""
    from dqnkit.training import resume, train

    config, run_dir, fresh = args
    earlier = "new" if fresh else _earlier_run(config, Path(run_dir))
    if earlier == "complete":
        return json.loads((Path(run_dir) / "summary.json").read_text()), "kept"
    if earlier == "checkpointed":
        return resume(run_dir), "resumed"
    return train(config, run_dir, overwrite=True), "trained"


def _earlier_run(config: Config, run_dir: Path) -> str:
    """What an interrupted start of the experiment left in ``run_dir`` for ``config``:
    ``complete``, ``checkpointed`` (resumable) or ``new`` (nothing of this config's: train it)."""
    from dqnkit.checkpoint import load_checkpoint
    from dqnkit.config import from_dict
    from dqnkit.errors import DqnkitError

    try:
        if from_dict(json.loads((run_dir / "config.json").read_text())) != config:
            return "new"
        if (run_dir / "summary.json").is_file():
            return "complete"
        return "checkpointed" if from_dict(load_checkpoint(run_dir)["config"]) == config else "new"
    except (OSError, ValueError, DqnkitError):  # absent, unreadable or not a resumable run
        return "new"


def run(
    name: str,
    out: Path,
    seeds: int = 3,
    steps: int | None = None,
    jobs: int | None = None,
    *,
    fresh: bool = False,
) -> dict[str, Any]:
    """Train every variant x seed (``jobs`` processes), then write plots, results.json, summary.md.

    ``out`` is locked meanwhile: the same experiment started twice is refused, not interleaved.
    The runs an interrupted start of it left (same config) are kept, or resumed from their
    checkpoint, unless ``fresh``: then every run is trained again.
    """
    make_dir(out, f"experiment directory {out}")
    with RunLock(out, what="experiment directory"):
        return _run(name, out, seeds, steps, jobs, fresh)


def _run(name: str, out: Path, seeds: int, steps: int | None, jobs: int | None, fresh: bool) -> dict[str, Any]:
    exp, runs_cfg = EXPERIMENTS[name], configs(name, seeds, steps)
    total = next(iter(runs_cfg.values())).total_steps
    work = [(cfg, str(out / "runs" / f"{variant}-s{seed}"), fresh) for (variant, seed), cfg in runs_cfg.items()]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    try:
        _train_all(work, list(runs_cfg), jobs)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: each run in progress saved a checkpoint
        raise Interrupted(
            "interrupted; the runs in progress saved a checkpoint: the same command continues the experiment "
            "(finished runs are kept, the others resume)",
            getattr(exc, "signum", signal.SIGINT),
        ) from None
    rows = {v: [read_metrics(out / "runs" / f"{v}-s{s}" / "metrics.csv") for s in range(seeds)] for v in exp.variants}
    if exp.band_plot:
        grid = np.linspace(0, total, 200)
        curves = {v: np.array([on_grid(r, grid) for r in rs]) for v, rs in rows.items()}
        plots.band_curves(grid, curves, out / f"{name}.png", title=exp.description)
    variants = {
        v: {
            "final_return_mean": float(np.mean(finals := [final_return(r) for r in rs])),
            "final_return_std": float(np.std(finals)),
            "final_return_per_seed": finals,
        }
        for v, rs in rows.items()
    }
    for v, extra in (exp.extra(rows, out, total) if exp.extra else {}).items():
        variants[v].update(extra)
    result = {
        "experiment": name,
        "description": exp.description,
        "preset": exp.preset,
        "presets": {v: _variant_preset(name, v) for v in exp.variants},
        "steps": total,
        "seeds": seeds,
        "variants": variants,
    }
    atomic_write_text(out / "results.json", json_text(result, indent=2))
    (out / "summary.md").write_text(summary_markdown(result))
    return result


def _train_all(work: list[tuple[Config, str, bool]], keys: list[tuple[str, int]], jobs: int) -> None:
    """Train ``work`` in ``jobs`` spawned processes, saying each run as it ends. A run is
    handed out only when a process is free: after Ctrl-C none is waiting to start (the
    executor would start queued ones while it waits for the interrupted ones to save)."""
    start, todo = time.perf_counter(), iter(zip(work, keys))
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_start_training_process) as pool, _passing_sigterm():
        running: dict[Future[tuple[dict[str, Any], str]], tuple[str, int]] = {}
        for args, key in itertools.islice(todo, jobs):
            running[pool.submit(_train_one, args)] = key
        for done in range(1, len(work) + 1):  # minutes of runs: say each one
            finished = next(as_completed(running))
            (variant, seed), (summary, how) = running.pop(finished), finished.result()
            progress(
                f"{variant}, seed {seed}: greedy evaluation {summary['eval_return_mean']:.1f}"
                f"{'' if how == 'trained' else f' ({how} from an earlier start)'} "
                f"({done} of {len(work)} runs, {time.perf_counter() - start:.0f} s)"
            )
            for args, key in itertools.islice(todo, 1):
                running[pool.submit(_train_one, args)] = key


def _start_training_process() -> None:
    """A training process takes Ctrl-C only while it trains a run (the run's monitor saves
    it, then gives the signal back): between runs it would die mid-handshake with the pool.
    Its progress bars lock with a thread lock: tqdm's default is a multiprocessing lock, a
    named semaphore that the interrupted pool left behind ("resource_tracker: There appear
    to be 1 leaked semaphore objects")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _passing_sigterm() -> contextlib.AbstractContextManager[None]:
    """SIGTERM to the experiment (``kill PID``, a scheduler's preemption) goes on to its
    training processes, whose runs save and stop as on Ctrl-C; the experiment then stops as
    on Ctrl-C. Without it the experiment died at once and its runs trained on, orphaned."""

    def pass_on() -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]

    return sigterm_raises(before=pass_on)


# What the table's columns measure, where the key alone could be read as something else: the
# per-run lines printed while the runs train are greedy evaluations, a different number.
COLUMN_NAMES = {
    "final_return_mean": "training return, last 100 episodes (mean over seeds)",
    "final_return_std": "(std over seeds)",
}


def summary_markdown(result: dict[str, Any]) -> str:
    """A Markdown table: one row per variant, one column per reported number."""
    keys = list(dict.fromkeys(k for v in result["variants"].values() for k in v if not k.endswith("per_seed")))
    lines = [
        f"# {result['experiment']}",
        "",
        result["description"],
        "",
        f"{result['seeds']} seed{'s' * (result['seeds'] != 1)} x {result['steps']:,} steps, "
        + ", ".join(f"`{p}`" for p in dict.fromkeys(result.get("presets", {}).values()) or [result["preset"]])
        + ".",
        "",
        "| variant | " + " | ".join(COLUMN_NAMES.get(k, k) for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for variant, values in result["variants"].items():
        cells = (f"{values[k]:.2f}" if k in values else "-" for k in keys)  # a measure some variants lack
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
