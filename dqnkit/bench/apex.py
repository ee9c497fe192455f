"""``dqnkit bench apex``: Ape-X on this machine with 1 and 2 actors.

1. Collection only (learning never starts): env steps/s summed over actors, i.e. how
   collection scales with actors.
2. Full runs on the ``cartpole`` preset: env steps/s, learner updates/s, the learner's idle
   fraction (time spent waiting for data once learning started; near 0 = not starved) and
   the final greedy evaluation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from dqnkit import presets
from dqnkit.bench import report
from dqnkit.distributed.apex import ApexOptions
from dqnkit.distributed.apex import run as apex_run


def run(steps: int = 20_000, actors: tuple[int, ...] = (1, 2), out: Path | None = None) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in actors:
            collect = presets.get(
                "cartpole",
                total_steps=steps,
                learning_starts=steps - 1,
                eval_every=0,
                eval_episodes=1,
                stop_at_return=None,
            )
            only = apex_run(collect, Path(tmp) / f"collect-{k}", ApexOptions(actors=k))
            learn = presets.get("cartpole", total_steps=steps, eval_every=0, stop_at_return=None)
            full = apex_run(learn, Path(tmp) / f"learn-{k}", ApexOptions(actors=k))
            rows.append(
                {
                    "actors": k,
                    "collect_only_sps": only["sps"],
                    "sps": full["sps"],
                    "learner_updates_per_s": full["learner_updates_per_s"],
                    "learner_idle_fraction": full["learner_idle_fraction"],
                    "eval_return_mean": full["eval_return_mean"],
                }
            )
    result = {"benchmark": "apex", "steps": steps, "preset": "cartpole", "rows": rows}
    return report(result, _print, out)


def _print(r: dict[str, Any]) -> None:
    print(
        f"{'actors':>6} {'collect-only steps/s':>21} {'steps/s':>8} {'updates/s':>10} {'learner idle':>13} {'eval':>7}"
    )
    for row in r["rows"]:
        print(
            f"{row['actors']:>6} {row['collect_only_sps']:>21.0f} {row['sps']:>8.0f} "
            f"{row['learner_updates_per_s']:>10.0f} {row['learner_idle_fraction']:>13.1%} "
            f"{row['eval_return_mean']:>7.1f}"
        )
