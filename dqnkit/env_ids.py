"""Env ids as users type them: ``gymnasium.make`` with one-line errors that point the right way.

A misspelt id names the closest registered ones; an old version names the current one (in
place of gymnasium's coloured DeprecationWarning); an Atari id from older tutorials
(``PongNoFrameskip-v4``) names the ``ALE/<Game>-v5`` id dqnkit trains, and the setting that
matches it.
"""

from __future__ import annotations

import difflib
import re
import warnings
from typing import Any

import gymnasium as gym

from dqnkit.errors import DqnkitError

# gym's Atari ids before ALE's namespace: Pong-v0, PongDeterministic-v4, PongNoFrameskip-v4...
_OLD_ATARI = re.compile(r"(?P<game>[A-Z][A-Za-z]+?)(?:NoFrameskip|Deterministic)?-v[04]")


def gym_make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)``; an id it cannot make is a one-line DqnkitError.
    So is an old Atari id, which ale_py registers too: it would train pixels in an MLP,
    without the Atari preprocessing."""
    if _ale_equivalent(env_id) is not None:
        raise DqnkitError(unknown_id_message(env_id))
    try:
        with warnings.catch_warnings():  # an old version: said below in one line, not as a coloured warning
            warnings.simplefilter("ignore", DeprecationWarning)
            return gym.make(env_id, **kwargs)
    except gym.error.DeprecatedEnv:
        raise DqnkitError(f"{env_id} is an old version; use {_newest_version(env_id)}") from None
    except gym.error.UnregisteredEnv:
        raise DqnkitError(unknown_id_message(env_id)) from None
    except TypeError as exc:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if bad is None and not kwargs:
            raise
        if bad is not None:
            raise DqnkitError(bad_argument_message(env_id, bad[1])) from None
        raise _refused_arguments(env_id, kwargs, exc) from None
    except (KeyError, ValueError, AssertionError) as exc:  # an argument the env takes, with a value it does not
        if not kwargs:
            raise
        raise _refused_arguments(env_id, kwargs, exc) from None


def _refused_arguments(env_id: str, kwargs: dict[str, Any], exc: BaseException) -> DqnkitError:
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return DqnkitError(f"{env_id} refused its arguments ({given}): {type(exc).__name__}: {exc}")


def bad_argument_message(env_id: str, name: str) -> str:
    """Why ``env_id`` refused the argument ``name`` (from ``env_kwargs``), with those it takes."""
    takes = sorted(_arguments(env_id))
    known = f"it takes {', '.join(takes)}" if takes else "it takes none"
    return f"{env_id} does not take the argument {name!r} given in `env_kwargs`; {known}"


def _arguments(env_id: str) -> list[str]:
    """The keyword arguments the env class of ``env_id`` takes (beyond render_mode)."""
    import inspect

    try:
        entry = gym.spec(env_id).entry_point
        cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        params = inspect.signature(cls).parameters.values()
    except (gym.error.Error, TypeError, ValueError, ImportError, AttributeError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "render_mode"]


def unknown_id_message(env_id: str, known: list[str] | None = None) -> str:
    """Why ``env_id`` is not an env, and which ids were likely meant."""
    old_atari = _ale_equivalent(env_id)
    if old_atari is not None:
        return (
            f"{env_id} is an old gym Atari id; dqnkit trains {old_atari} with the Atari preprocessing "
            "(its own frame skip of 4; `repeat_action_probability=0` for the NoFrameskip-v4 setting)"
        )
    ids = known if known is not None else _suggestible_ids()
    close = [i for i in ids if i.lower() == env_id.lower()] or difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see gymnasium.envs.registry for the ids"
    return f"unknown environment {env_id!r}; {hint}"


def _suggestible_ids() -> list[str]:
    """Registered ids dqnkit trains as they are: not the old Atari ids ale_py registers
    beside its ALE/ ones, nor gymnasium's JAX-only functional envs (phys2d/, tabular/)."""
    return [
        spec.id
        for spec in gym.envs.registry.values()
        if spec.namespace not in ("phys2d", "tabular")
        and not (spec.namespace is None and str(spec.entry_point).startswith("ale_py"))
    ]


def _newest_version(env_id: str) -> str:
    """``Taxi-v3`` -> ``Taxi-v4``: the newest registered version of the id's name."""
    name = env_id.rsplit("-v", 1)[0]
    versions = [s.version for s in gym.envs.registry.values() if _name(s) == name]
    versions = [v for v in versions if v is not None]
    return f"{name}-v{max(versions)}" if versions else f"the current {name} id"


def _name(spec: gym.envs.registration.EnvSpec) -> str:
    return f"{spec.namespace}/{spec.name}" if spec.namespace else spec.name


def _ale_equivalent(env_id: str) -> str | None:
    """``ALE/Pong-v5`` for ``PongNoFrameskip-v4`` (and gym's other old Atari ids), where
    ale_py is installed and has the game; else None."""
    match = _OLD_ATARI.fullmatch(env_id)
    if match is None:
        return None
    try:
        import ale_py
    except ImportError:
        return None
    gym.register_envs(ale_py)
    candidate = f"ALE/{match['game']}-v5"
    return candidate if candidate in gym.envs.registry else None
