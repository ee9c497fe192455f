"""``dqnkit plot RUN...``: the learning curves of any runs in one PNG.

Runs whose configs differ only in their seed, their length or where they ran (and in how
they evaluate and checkpoint) are seeds of one variant: one colour, one line per seed. A
variant is named by its preset and the keys in which it leaves the most common value among
that preset's runs (``cartpole, lr=0.002``). Each env gets its own row of panels: return
against env steps and against training wall seconds (:func:`dqnkit.plots.versus`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dqnkit import plots, presets
from dqnkit.config import RUN_SETTINGS
from dqnkit.errors import DqnkitError
from dqnkit.experiments import episodes_by
from dqnkit.logger import iter_metrics

# Runs that differ only in these keys are seeds of one variant. replay_checkpoint changes
# only how checkpoints keep the replay (resume cannot change it: the saved chunks follow it).
SAME_VARIANT = RUN_SETTINGS | {"seed", "total_steps", "replay_checkpoint"}

Curve = tuple[np.ndarray, np.ndarray, np.ndarray]  # per episode: end step, wall seconds, return


def compare(run_dirs: list[Path], out_png: Path) -> dict[str, dict[str, list[int]]]:
    """Draw ``run_dirs``' learning curves into ``out_png``; returns {env: {variant: the
    finished episodes of each of its runs}} (a run with none yet has no curve to draw).

    A directory that is not a run stands for the runs below it (``runs/``, an experiment's
    directory). Every directory is checked before anything is drawn: one that neither is nor
    holds a dqnkit run is a :class:`DqnkitError` naming it.
    """
    found = [run for d in run_dirs for run in _runs_in(d)]
    runs = [(d, _config(d)) for d in dict.fromkeys(found)]  # each directory once, in the given order
    names = variant_names([config for _, config in runs])
    panels: dict[str, dict[str, list[Curve]]] = {}
    for (run_dir, config), name in zip(runs, names):
        panels.setdefault(config["env_id"], {}).setdefault(name, []).append(
            episodes_by(iter_metrics(run_dir / "metrics.csv"))
        )
    plots.versus(panels, out_png)
    return {env: {name: [len(seed[0]) for seed in seeds] for name, seeds in v.items()} for env, v in panels.items()}


def variant_names(configs: list[dict[str, Any]]) -> list[str]:
    """Per config: its preset, plus ``key=value`` for each key in which it differs from the
    most common value among the runs of that preset (on a tie, the preset's own value; keys
    of :data:`SAME_VARIANT` and the env aside). Two variants named alike would agree on
    every key: names are unique."""
    keys = [{k: v for k, v in c.items() if k not in SAME_VARIANT and k != "env_id"} for c in configs]
    common: dict[str, dict[str, Any]] = {}  # per preset, each key's most common value among its runs
    for preset in dict.fromkeys(k["preset"] for k in keys):
        peers, default = [k for k in keys if k["preset"] == preset], _preset_values(preset)
        fields = dict.fromkeys(key for p in peers for key in p)
        common[preset] = {key: _common([p.get(key) for p in peers], default.get(key)) for key in fields}
    return [_name(own, [k for k in own if k != "preset" and own[k] != common[own["preset"]][k]]) for own in keys]


def _name(config: dict[str, Any], keys: list[str]) -> str:
    return ", ".join([config["preset"], *(f"{key}={_short(config[key])}" for key in keys)])


def _common(values: list[Any], default: Any) -> Any:
    """The most common of ``values``; on a tie ``default`` if it is among them, else the first seen."""
    counts = [values.count(v) for v in values]
    tied = [v for v, n in zip(values, counts) if n == max(counts)]
    return default if default in tied else tied[0]


def _preset_values(name: str) -> dict[str, Any]:
    """The config of preset ``name`` as config.json writes it; empty for a name this version
    does not know (a run from another version)."""
    try:
        return presets.get(name).to_dict()
    except DqnkitError:
        return {}


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _runs_in(path: Path) -> list[Path]:
    """``path`` if it is a run directory, else the run directories below it (sorted), else
    ``[path]`` (for :func:`_config` to refuse)."""
    if (path / "config.json").is_file() or not path.is_dir():
        return [path]
    below = sorted(c.parent for c in path.rglob("config.json") if (c.parent / "metrics.csv").is_file())
    return below or [path]


def _config(run_dir: Path) -> dict[str, Any]:
    for name in ("config.json", "metrics.csv"):
        if not (run_dir / name).is_file():
            raise DqnkitError(f"{run_dir} is not a dqnkit run directory (it has no {name})")
    return json.loads((run_dir / "config.json").read_text())
