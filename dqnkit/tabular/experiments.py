"""``dqnkit tabular NAME``: the previous lesson's exercises, with plots and results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dqnkit import plots
from dqnkit.files import atomic_write_text, json_text, make_dir
from dqnkit.tabular.envs import cliff_walking, random_walk_values
from dqnkit.tabular.methods import METHODS, greedy_path, n_step_td, td_control

N_VALUES = (1, 2, 4, 8, 16, 32)


def cliff_walking_experiment(
    out: Path, episodes: int = 500, alpha: float = 0.5, epsilon: float = 0.1, seeds: int = 20, seed: int = 0
) -> dict[str, Any]:
    """SARSA vs Q-learning vs Expected SARSA: online reward per episode and the greedy path each learns."""
    mdp = cliff_walking()
    results, returns, paths = {}, {}, {}
    for i, method in enumerate(METHODS):
        q, ret = td_control(mdp, method, episodes, alpha, epsilon, seeds=seeds, seed=seed + i)
        path, greedy_return = greedy_path(mdp, q.mean(axis=0))  # the seeds' consensus policy
        returns[method], paths[method] = ret, path
        results[method] = {
            "online_return_last100": float(ret[:, -100:].mean()),
            "online_return_last100_std": float(ret[:, -100:].mean(axis=1).std()),
            "greedy_return": greedy_return,
            "greedy_path_steps": len(path) - 1,
        }
    make_dir(out, f"results directory {out}")
    plots.curves(
        returns,
        out / "cliff_walking_rewards.png",
        xlabel="episode",
        ylabel="return (10-episode mean)",
        title=f"CliffWalking, alpha={alpha}, epsilon={epsilon}, {seeds} seeds",
        ylim=(-150, 0),
    )
    plots.grid_paths(
        mdp.shape, paths, list(mdp.hazards), out / "cliff_walking_paths.png", title="greedy path of each method"
    )
    summary = {
        "experiment": "cliff-walking",
        "episodes": episodes,
        "alpha": alpha,
        "epsilon": epsilon,
        "seeds": seeds,
        "methods": results,
    }
    atomic_write_text(out / "results.json", json_text(summary, indent=2))
    return summary


def random_walk_experiment(
    out: Path,
    episodes: int = 10,
    alpha: float = 0.1,
    seeds: int = 20,
    seed: int = 0,
    alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0),
) -> dict[str, Any]:
    """RMS error of n-step TD after ``episodes`` episodes for n = 1..32: the U-shape."""
    truth = random_walk_values()

    def rms(n: int, a: float) -> float:
        rng = np.random.default_rng([seed, n])
        errors = [np.sqrt(np.mean((n_step_td(n, episodes, a, rng=rng) - truth) ** 2)) for _ in range(seeds)]
        return float(np.mean(errors))

    curve = [rms(n, alpha) for n in N_VALUES]
    sweep = {f"n={n}": [rms(n, a) for a in alphas] for n in N_VALUES}
    make_dir(out, f"results directory {out}")
    plots.lines(
        list(N_VALUES),
        {f"alpha={alpha}": curve},
        out / "random_walk_rms.png",
        xlabel="n",
        ylabel=f"RMS error after {episodes} episodes",
        title="n-step TD on the 19-state random walk",
        logx=True,
    )
    plots.lines(
        list(alphas),
        sweep,
        out / "random_walk_alpha.png",
        xlabel="alpha",
        ylabel=f"RMS error after {episodes} episodes",
        title="n-step TD: error vs alpha (S&B fig. 7.2)",
    )
    summary = {
        "experiment": "random-walk",
        "episodes": episodes,
        "alpha": alpha,
        "seeds": seeds,
        "n": list(N_VALUES),
        "rms": curve,
        "best_n": N_VALUES[int(np.argmin(curve))],
        "alpha_sweep": {"alphas": list(alphas), **sweep},
    }
    atomic_write_text(out / "results.json", json_text(summary, indent=2))
    return summary


EXPERIMENTS = {"cliff-walking": cliff_walking_experiment, "random-walk": random_walk_experiment}


def summary_text(summary: dict[str, Any]) -> str:
    """What a person reads of an experiment's results: its settings and one table."""
    settings = f"{summary['episodes']} episodes, alpha {summary['alpha']}"
    if summary["experiment"] == "cliff-walking":
        lines = [f"cliff-walking: {settings}, epsilon {summary['epsilon']}, {summary['seeds']} seeds", ""]
        last = f"online return, last {min(100, summary['episodes'])} episodes"  # fewer than 100: all of them
        lines.append(f"{'method':<16} {last:>33}   greedy path")
        for method, r in summary["methods"].items():
            online = f"{r['online_return_last100']:.1f} ± {r['online_return_last100_std']:.1f}"
            lines.append(f"{method:<16} {online:>33}   {r['greedy_path_steps']} steps")
    else:
        lines = [f"random-walk (19 states): {settings}, {summary['seeds']} seeds", ""]
        lines.append("n           " + "".join(f"{n:>7}" for n in summary["n"]))
        rms = "".join(f"{e:>7.3f}" for e in summary["rms"])
        lines.append(f"RMS error   {rms}   (best n = {summary['best_n']})")
    return "\n".join(lines) + "\n"
