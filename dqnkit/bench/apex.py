"""``dqnkit bench apex [--actors 1,2,4,8]``: Ape-X on this machine with each actor count.

1. Collection only (learning never starts): env steps/s summed over actors, and its ratio to
   the first count's (how collection scales with actors; on a machine with fewer cores than
   actors, the actors share them).
2. Full runs on the ``cartpole`` preset: env steps/s, learner updates/s, the learner's idle
   fraction (time spent waiting for data once learning started; near 0 = not starved) and
   the final greedy evaluation.
3. The bytes per transition of the replay an Atari run would hold (frames stored once).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dqnkit import presets
from dqnkit.bench import progress, report
from dqnkit.distributed.apex import ApexOptions, ReplayServer
from dqnkit.distributed.apex import run as apex_run


def run(steps: int = 20_000, actors: tuple[int, ...] = (1, 2), out: Path | None = None) -> dict[str, Any]:
    """Run each actor count twice (collection only, then learning); print the table, write JSON to ``out``."""
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
            progress(f"{k} actor{'s' * (k > 1)}: {only['sps']:.0f} env steps/s collecting, {full['sps']:.0f} learning")
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
    for row in rows:
        row["collect_scaling"] = round(row["collect_only_sps"] / rows[0]["collect_only_sps"], 2)
    result = {"benchmark": "apex", "steps": steps, "preset": "cartpole", "cpus": os.cpu_count(), "rows": rows}
    result["atari_replay_bytes_per_transition"] = atari_replay_bytes(max(actors))
    return report(result, _print, out)


def atari_replay_bytes(actors: int, capacity: int = 100_000) -> float:
    """Bytes per transition of the replay an Atari Ape-X run with ``actors`` actors holds
    (the replay server's own buffer, built as `dqnkit apex` builds it; allocated, not filled)."""
    config = presets.get("atari", buffer_size=capacity)
    server = ReplayServer(config, (4, 84, 84), np.uint8, rings=actors * config.num_envs)
    return round(server.nbytes() / capacity, 1)


def _print(r: dict[str, Any]) -> None:
    print(f"Ape-X, {r['steps']} env steps per run, {r['cpus']} CPUs")
    head = f"{'actors':>6} {'collect-only steps/s':>21} {'scaling':>8} {'steps/s':>8} {'updates/s':>10}"
    print(f"{head} {'learner idle':>13} {'eval':>7}")
    for row in r["rows"]:
        print(
            f"{row['actors']:>6} {row['collect_only_sps']:>21.0f} {row['collect_scaling']:>7.2f}x {row['sps']:>8.0f} "
            f"{row['learner_updates_per_s']:>10.0f} {row['learner_idle_fraction']:>13.1%} "
            f"{row['eval_return_mean']:>7.1f}"
        )
    print(f"Atari replay: {r['atari_replay_bytes_per_transition']:,.0f} bytes a transition (each frame stored once)")
