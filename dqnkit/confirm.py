"""``dqnkit tune --confirm K``: a study's best config and its starting config trained on K
seeds that no trial used, compared by IQM with 95% stratified bootstrap CIs and the
probability of improvement. The best of many trials is partly its lucky seed; fresh seeds
say what it holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dqnkit.files import atomic_write_text
from dqnkit.stats import Interval, improvement_ci, iqm_ci
from dqnkit.tune import CONFIRM_SEED, OBJECTIVE, Study, objective_value


def confirm(study: Study, seeds: int, jobs: int) -> dict[str, Any]:
    """Train ``best.json`` and the starting config on ``seeds`` seeds no trial used; compare
    them by IQM with 95% stratified bootstrap CIs and the probability of improvement
    (``confirm.json``, ``confirm.png``). Where the best config is the starting one, it trains
    once and both rows are its runs (``tuned_is_preset``)."""
    import numpy as np

    from dqnkit import plots
    from dqnkit.config import from_dict
    from dqnkit.experiments import _train_all
    from dqnkit.logger import read_metrics

    configs = {"tuned": from_dict(json.loads((study.out / "best.json").read_text())), "preset": study.base}
    same = configs["tuned"] == study.base  # the starting config was the best trial: train it once
    names = ["preset"] if same else list(configs)
    keys = [(name, CONFIRM_SEED + i) for i in range(seeds) for name in names]
    work = [(configs[n].replace(seed=s), str(study.out / "confirm" / f"{n}-s{s}"), False) for n, s in keys]
    _train_all(work, keys, max(1, min(jobs, len(work))))
    scores: dict[str, dict[str, list[float]]] = {n: {"objective": [], "final_eval": [], "steps": []} for n in names}
    for (name, _), (_, run_dir, _) in zip(keys, work):
        rows = read_metrics(Path(run_dir) / "metrics.csv")
        evals = [float(r["return"]) for r in rows if r["kind"] == "eval"]
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        scores[name]["objective"].append(objective_value(evals, study.base.total_steps, study.base.eval_every))
        scores[name]["final_eval"].append(summary["eval_return_mean"])
        scores[name]["steps"].append(summary["steps"])
    scores["tuned"] = scores.get("tuned", scores["preset"])
    result: dict[str, Any] = {"seeds": [s for n, s in keys if n == "preset"], "objective": OBJECTIVE}
    result["tuned_is_preset"] = same
    for name, values in scores.items():
        result[name] = {
            **{f"{m}_per_seed": v for m, v in values.items()},
            "steps_median": float(np.median(values["steps"])),
            **{f"{m}_iqm_ci95": list(iqm_ci(np.array(values[m]))) for m in ("objective", "final_eval")},
        }
        if study.base.stop_at_return is not None:
            result[name]["solved"] = int(sum(v >= study.base.stop_at_return for v in values["final_eval"]))
    tuned, preset = np.array(scores["tuned"]["objective"]), np.array(scores["preset"]["objective"])
    improvement = improvement_ci(tuned, preset)
    result["probability_of_improvement_ci95"] = list(improvement)
    result["verdict"] = verdict(improvement, same)
    atomic_write_text(study.out / "confirm.json", json.dumps(result, indent=2) + "\n")
    plots.intervals(
        {n: {m: result[n][f"{m}_iqm_ci95"] for m in ("objective", "final_eval")} for n in configs},
        study.out / "confirm.png",
        title=f"{study.base.preset} on {study.base.env_id}: IQM and 95% stratified bootstrap CI, {seeds} fresh seeds",
    )
    return result


def verdict(improvement: Interval, same: bool) -> str:
    """Which config to train, from the CI of P(tuned > preset): one only where the interval
    lies wholly on its side of 0.5."""
    if same:
        return "the starting config was the best trial: keep it"
    if improvement.low > 0.5:
        return "the tuned config beats the starting config on fresh seeds: train best.json"
    if improvement.high < 0.5:
        return "the starting config beats the tuned one on fresh seeds: keep the starting config"
    return "no clear difference on these fresh seeds (the CI of P(tuned > preset) holds 0.5): more seeds would tell"
