"""The search spaces of ``dqnkit tune``: the default ones for DQN (after rl-baselines3-zoo's
``sample_dqn_params``) and PQN, and a user's ``--space`` file, checked before any trial runs.
Sampling a space gives the config keys a trial overrides; :func:`starting_point` finds the
parameters at which it gives the starting config back, a study's first trial.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dqnkit.config import FIELDS, Config, check_range
from dqnkit.errors import ConfigError, DqnkitError
from dqnkit.files import read_json_file

# keys the study sets itself: a --space may not search them
NOT_SEARCHED = ("algorithm", "preset", "env_id", "seed", "total_steps", "device")


# A space is a dict: config key -> {"low", "high", "log"?, "step"?} or {"choices": [...]}.
# The default spaces also draw a few keys together (dqn_space, pqn_space).
Space = dict[str, dict[str, Any]]


def _dqn_params(trial: Any, base: Config) -> dict[str, Any]:
    """DQN's default space, after rl-baselines3-zoo's ``sample_dqn_params``."""
    s = {
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
        "gamma": trial.suggest_categorical("gamma", [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128, 256]),
        "buffer_size": trial.suggest_categorical("buffer_size", [10_000, 50_000, 100_000, 1_000_000]),
        "n_step": trial.suggest_categorical("n_step", [1, 3, 5]),
        "double": trial.suggest_categorical("double", [False, True]),
        "dueling": trial.suggest_categorical("dueling", [False, True]),
        "prioritized": trial.suggest_categorical("prioritized", [False, True]),
    }
    train_freq = trial.suggest_categorical("train_freq", [1, 4, 8, 16, 64])
    subsample = trial.suggest_categorical("subsample_steps", [1, 2, 4, 8])  # gradient_steps = train_freq / this
    s.update(train_freq=train_freq, gradient_steps=max(train_freq // subsample, 1))
    if trial.suggest_categorical("target", ["hard", "soft"]) == "hard":
        s.update(
            tau=0.0, target_update_interval=trial.suggest_categorical("target_update_interval", [64, 250, 1000, 5000])
        )
    else:
        s.update(tau=trial.suggest_float("tau", 1e-3, 0.1, log=True), target_update_interval=1)
    if s["prioritized"]:
        s["per_alpha"] = trial.suggest_float("per_alpha", 0.4, 0.8)
    if not base.noisy:  # noisy nets explore on their own: no epsilon to tune
        s.update(
            eps_schedule="linear",
            exploration_steps=0,
            exploration_fraction=trial.suggest_float("exploration_fraction", 0.05, 0.5),
            eps_end=trial.suggest_float("eps_end", 0.0, 0.2),
        )
    width = trial.suggest_categorical("net_width", [64, 128, 256])
    s["hidden_sizes"] = (width,) * trial.suggest_int("net_depth", 1, 3)
    return s


def _pqn_params(trial: Any, base: Config) -> dict[str, Any]:
    """PQN's default space: learning rate, lambda, the rollout's shape and its passes."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "q_lambda": trial.suggest_float("q_lambda", 0.0, 0.95),
        "num_envs": trial.suggest_categorical("num_envs", [4, 8, 16, 32, 64]),
        "rollout_steps": trial.suggest_categorical("rollout_steps", [16, 32, 64, 128]),
        "num_minibatches": trial.suggest_categorical("num_minibatches", [1, 2, 4, 8]),
        "update_epochs": trial.suggest_categorical("update_epochs", [1, 2, 4, 8]),
    }


DEFAULT_SPACES: dict[str, Callable[[Any, Config], dict[str, Any]]] = {"dqn": _dqn_params, "pqn": _pqn_params}
_PQN_KEYS = ("lr", "q_lambda", "num_envs", "rollout_steps", "num_minibatches", "update_epochs")


def starting_point(space: Space | None, base: Config) -> dict[str, Any] | None:
    """The parameters at which the space (None: the algorithm's default one) samples ``base``
    itself, or None where it cannot express ``base`` (a value outside its ranges or choices,
    a key it sets otherwise). Checked by sampling them: the config it gives must run as
    ``base`` runs."""
    import optuna

    if space is not None:
        params, sample = _point_in(space, base), space_params(space)
    else:
        params = _dqn_point(base) if base.algorithm == "dqn" else {k: getattr(base, k) for k in _PQN_KEYS}
        sample = DEFAULT_SPACES[base.algorithm]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".* is out of the range of the distribution")  # optuna's
            sampled = base.replace(**sample(optuna.trial.FixedTrial(params), base))
    except (ValueError, ConfigError, UserWarning):  # a value not among the choices or out of range; a config refused
        return None
    return params if _same_run(sampled, base) else None


def _dqn_point(base: Config) -> dict[str, Any]:
    """``base`` in the default DQN space's parameters (:func:`_dqn_params` the other way)."""
    keys = ("lr", "gamma", "batch_size", "buffer_size", "n_step", "double", "dueling", "prioritized", "train_freq")
    point: dict[str, Any] = {k: getattr(base, k) for k in keys}
    point["subsample_steps"] = next(
        (s for s in (1, 2, 4, 8) if max(base.train_freq // s, 1) == base.gradient_steps), None
    )
    if base.tau == 0:
        point.update(target="hard", target_update_interval=base.target_update_interval)
    else:
        point.update(target="soft", tau=base.tau)
    if base.prioritized:
        point["per_alpha"] = base.per_alpha
    if not base.noisy:
        point.update(exploration_fraction=base.exploration_duration / base.total_steps, eps_end=base.eps_end)
    point.update(net_width=base.hidden_sizes[0] if base.hidden_sizes else None, net_depth=len(base.hidden_sizes))
    return point


def _point_in(space: Space, base: Config) -> dict[str, Any]:
    """``base``'s values of a ``--space`` file's keys, as its sampler names them."""
    point = {}
    for key, spec in space.items():
        value = getattr(base, key)
        if any(isinstance(c, list) for c in spec.get("choices", [])):
            value = json.dumps(list(value))  # list choices go by their JSON text (space_params)
        point[key] = value
    return point


def _same_run(a: Config, b: Config) -> bool:
    """Whether two configs train alike: every key equal but the two that say how long
    epsilon falls, which may say the same duration two ways."""
    da, db = a.to_dict(), b.to_dict()
    how_long = {"exploration_steps", "exploration_fraction"}
    same = all(da[k] == db[k] for k in da if k not in how_long)
    return same and math.isclose(a.exploration_duration, b.exploration_duration, rel_tol=1e-9)


def read_space(path: Path, algorithm: str = "dqn") -> Space:
    """A ``--space`` file, checked: every key a config key of a type and range it can take."""
    space = read_json_file(path, f"--space {path}")
    try:
        check_space(space, algorithm)
    except DqnkitError as exc:
        raise DqnkitError(f"--space {path}: {exc}") from None
    return space


def check_space(space: Any, algorithm: str = "dqn") -> None:
    """Refuse (ConfigError) a space that is not an object of ``algorithm``'s config keys,
    each with a non-empty range or list of choices of its field's type."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            'expected a JSON object of config keys, e.g. {"lr": {"low": 1e-5, "high": 1e-2, "log": true}}'
        )
    for key, spec in space.items():
        if key not in FIELDS:
            raise ConfigError(f"unknown config key {key!r} (see `dqnkit presets NAME` for the keys)")
        if key in NOT_SEARCHED:
            raise ConfigError(f"{key} is set by the study itself, not searched (--preset, --env, --steps)")
        only = FIELDS[key].metadata.get("only")
        if only is not None and only != algorithm:
            raise ConfigError(f"{key} is a {only} key: algorithm={algorithm} does not use it")
        if not isinstance(spec, dict):
            raise ConfigError(f'{key}: expected {{"low": .., "high": ..}} or {{"choices": [..]}}, got {spec!r}')
        extra = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
        if extra:
            raise ConfigError(f"{key}: unknown entry {extra[0]!r} (low, high, log, step or choices)")
        if "choices" in spec:
            _check_choices(key, spec)
        else:
            _check_interval(key, spec)


def _check_choices(key: str, spec: dict[str, Any]) -> None:
    choices = spec["choices"]
    if set(spec) != {"choices"}:
        raise ConfigError(f"{key}: choices go alone, without low, high, log or step")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{key}: choices must be a non-empty list, got {choices!r}")
    for value in choices:
        _check_value(key, value)


def _check_interval(key: str, spec: dict[str, Any]) -> None:
    kind = FIELDS[key].type
    if kind not in ("int", "float", "float | None"):
        raise ConfigError(f"{key} is a {kind}: give it choices, not a range")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: a range needs both low and high")
    low, high = spec["low"], spec["high"]
    for value in (low, high):
        _check_value(key, value)
    if not low < high:
        raise ConfigError(f"{key}: the range [{low}, {high}] is empty (low must be below high)")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{key}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{key}: a log range must start above 0, got low {low}")
    if step is not None:
        if log:
            raise ConfigError(f"{key}: a range takes log or step, not both")
        _check_value(key, step)
        if step <= 0:
            raise ConfigError(f"{key}: step must be positive, got {step}")


def _check_value(key: str, value: Any) -> None:
    """``value`` as JSON gives it must already be of the field's type (no strings for numbers)
    and inside the field's range."""
    kind, meta = FIELDS[key].type, FIELDS[key].metadata
    fits = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "float | None": value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
        "str": isinstance(value, str),
        "tuple[int, ...]": isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }[kind]
    if not fits:
        raise ConfigError(f"{key}: {value!r} is not a {kind}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not finite")
        check_range(key, value, meta.get("lo"), meta.get("hi"), bool(meta.get("lo_open")))
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(meta['choices'])}")


def space_params(space: Space) -> Callable[[Any, Config], dict[str, Any]]:
    """The sampling function of a user's (checked) space."""

    def sample(trial: Any, base: Config) -> dict[str, Any]:
        values = {}
        for key, spec in space.items():
            if "choices" in spec:
                # optuna's categorical choices are scalars: lists (hidden_sizes) go by their index
                if any(isinstance(c, list) for c in spec["choices"]):
                    index = trial.suggest_categorical(key, [json.dumps(c) for c in spec["choices"]])
                    values[key] = tuple(json.loads(index))
                else:
                    values[key] = trial.suggest_categorical(key, spec["choices"])
            elif FIELDS[key].type == "int":
                values[key] = trial.suggest_int(
                    key, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
                )
            else:
                values[key] = trial.suggest_float(
                    key, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
                )
        return values

    return sample
