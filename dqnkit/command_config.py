"""The config a command line describes, in one order of precedence: the preset, then the
``--config`` file's keys, then ``--set``'s, then the flags (``--env``, ``--env-kwarg``,
``--seed``, ``--device``, ``--steps``); and what ``train --resume`` may change.
``train``, ``apex`` and ``tune`` all read their config here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

from dqnkit.errors import DqnkitError
from dqnkit.files import read_json_file


class ConfigParts(NamedTuple):
    """What a command line says of its config: the preset it starts from, and the keys that go
    over it (``overrides``: the file's, then --set's and the flags'), with the file's and
    --set's own keys apart for apex's checks."""

    preset: str
    overrides: dict[str, Any]
    from_file: dict[str, Any]
    from_set: dict[str, Any]


def config_from_args(args: argparse.Namespace, parts: ConfigParts | None = None) -> Any:
    """The Config that --preset, --config, --env, --seed, --device, --steps and --set describe."""
    from dqnkit import presets

    name, overrides, _, _ = parts or config_parts(args)
    config = presets.get(name, **overrides)
    if args.preset is not None and "env_id" in overrides:
        warn_if_unfit(name, config)
    return config


def config_parts(args: argparse.Namespace) -> ConfigParts:
    """The file's keys, then --set's, then the flags', over the preset they start from."""
    from dqnkit import presets
    from dqnkit.config import env_kwarg_pairs, parse_overrides

    from_file, from_set = config_file(args.config), parse_overrides(args.overrides)
    overrides = {**from_file, **from_set}
    for key in ("env_id", "seed", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.steps is not None:
        overrides["total_steps"] = args.steps
    if getattr(args, "env_kwargs", None):  # --env-kwarg key=value, over env_kwargs' own
        overrides["env_kwargs"] = {**overrides.get("env_kwargs", {}), **env_kwarg_pairs(args.env_kwargs)}
    if args.preset is not None:
        name = args.preset
    elif overrides.get("preset") in presets.names():  # a run's config.json names its preset
        name = overrides["preset"]
    else:  # that env family's defaults
        name = presets.for_env(overrides.get("env_id", "CartPole-v1"), overrides.get("env_kwargs"))
    return ConfigParts(name, overrides, from_file, from_set)


def config_file(path: Path | None) -> dict[str, Any]:
    """The config keys of a JSON file (a run's config.json, or any object of keys), checked:
    a key or value that is not a config's is refused naming the file. None: no keys."""
    from dqnkit.config import coerce_all

    if path is None:
        return {}
    values = read_json_file(path, f"--config {path}")
    if not isinstance(values, dict):
        raise DqnkitError(f"--config {path}: expected a JSON object of config keys, got a {type(values).__name__}")
    try:
        return coerce_all(values, hint="is it a run's config.json?")
    except DqnkitError as exc:
        raise DqnkitError(f"--config {path}: {exc}") from None


def warn_if_unfit(name: str, config: Any) -> None:
    """Warn where the preset ``name`` is made for another family of envs than ``config``'s."""
    from dqnkit import presets

    base = presets.get(name)
    fitting, own = presets.for_env(config.env_id, config.env_kwargs), presets.for_env(base.env_id, base.env_kwargs)
    if fitting != own:
        print(
            f"warning: preset {name} is made for {own}-like envs; for {config.env_id} dqnkit would pick "
            f"--preset {fitting}",
            file=sys.stderr,
        )


def resume_changes(args: argparse.Namespace) -> dict[str, Any]:
    """What ``train --resume`` may change, from its command line: run settings only (resume
    refuses the rest). The flags that would give the run another config are refused."""
    from dqnkit.config import parse_overrides

    given = [
        flag
        for flag, value in (
            ("--preset", args.preset),
            ("--config", args.config),
            ("--env", args.env_id),
            ("--env-kwarg", args.env_kwargs),
            ("--seed", args.seed),
            ("--run-dir", args.run_dir),
            ("--print-config", args.print_config),
        )
        if value
    ]
    if given:
        raise DqnkitError(f"--resume continues the run with its own config; drop {', '.join(given)}")
    if args.steps is not None and args.steps < 1:
        raise DqnkitError(f"--steps must be positive, got {args.steps}")
    changes = parse_overrides(args.overrides)
    if args.device is not None:
        changes["device"] = args.device
    return changes
