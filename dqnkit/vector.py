"""Stepping vector envs as the loop does: SAME_STEP autoreset, send and receive a step,
the observation a transition really led to (``final_obs``), finished episodes and Atari's
game results, and the episode in progress as plain data for exact resume.

In SAME_STEP autoreset mode (gymnasium >= 1.1), when a sub-env's episode ends ``step``
already returns the *reset* observation and puts the true last observation in
``info["final_obs"]``: every vector step yields exactly ``num_envs`` real transitions, and
:func:`true_next_obs` recovers the observation a truncated episode really ended in (the one
its TD target must bootstrap from).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import concatenate

# Every training vector env dqnkit makes (LeanSyncVectorEnv, AsyncEnvs, the Atari pools of
# dqnkit.atari_pool) has the same small interface: `send(actions)` starts a step, `recv()`
# returns it (back to back they are `step`), and `steps_apart` says whether the step runs
# in other threads or processes meanwhile.


def steps_apart(envs: Any) -> bool:
    """Whether ``envs`` step in their own threads or processes (a C++ pool, AsyncEnvs), so
    that :func:`send_step` returns at once; a sync vector env steps in :func:`recv_step`."""
    return envs.steps_apart


def send_step(envs: Any, actions: np.ndarray) -> None:
    """Start the vector step ``actions`` that :func:`recv_step` finishes."""
    envs.send(actions)


def recv_step(envs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The result of the vector step that :func:`send_step` started: what ``envs.step(actions)``
    returns (send then receive is the same step)."""
    return envs.recv()


class AsyncEnvs(gym.vector.AsyncVectorEnv):
    """gymnasium's AsyncVectorEnv (worker processes, observations in shared memory) with the
    send / receive interface: its ``step_async`` and ``step_wait``."""

    steps_apart = True

    def send(self, actions: np.ndarray) -> None:
        """Hand the step to the worker processes; :meth:`recv` waits for it."""
        self.step_async(actions)

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The step :meth:`send` started."""
        return self.step_wait()


class LeanSyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's SyncVectorEnv with SAME_STEP autoreset, stepped without its per-step
    generality: no action iterator or info merging for envs that report nothing, and a plain
    copy of the batched observations instead of a deepcopy. Same env calls in the same order,
    so the same transitions, ``final_obs`` and ``final_info`` (tests compare the two); about
    half the overhead around a CartPole step."""

    steps_apart = False  # the envs step in this process, in recv()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: np.ndarray | None = None
        if self.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"LeanSyncVectorEnv steps in SAME_STEP autoreset mode only, not {self.autoreset_mode}")
        self._box = isinstance(self.single_observation_space, gym.spaces.Box)

    def send(self, actions: np.ndarray) -> None:
        """Keep ``actions`` for :meth:`recv`, which steps the envs."""
        self._sent = actions

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The step of the actions :meth:`send` kept."""
        actions, self._sent = self._sent, None
        return self.step(actions)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env once (``actions`` [N]); an env that ended is reset in the same step."""
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            obs, self._rewards[i], self._terminations[i], self._truncations[i], env_info = env.step(actions[i])
            if self._terminations[i] or self._truncations[i]:
                infos = self._add_info(infos, {"final_obs": obs, "final_info": env_info}, i)
                obs, env_info = env.reset()
            self._env_obs[i] = obs
            if self._box:  # what concatenate's np.stack would write, row by row (6 µs less per step)
                self._observations[i] = obs
            if env_info:
                infos = self._add_info(infos, env_info, i)
        if not self._box:
            self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        # (no _autoreset_envs update: only the NEXT_STEP and DISABLED modes read it)
        return (
            self._observations.copy(),
            self._rewards.copy(),
            self._terminations.copy(),
            self._truncations.copy(),
            infos,
        )


def finished_episodes(
    ep_return: np.ndarray,
    ep_length: np.ndarray,
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    info: dict[str, Any],
) -> list[tuple[float, int]]:
    """Add one vector step to the running episode counters [N] (updated in place); return
    ``(return, length)`` of every episode the step finished, and reset their counters.
    ``info`` is the SAME_STEP vector env's: ``info["_final_obs"]`` marks the envs whose
    episode ended (``terminated | truncated``), and is absent when none did.

    An Atari life loss ends a learning episode but not the game: its counters reset and
    nothing is returned. A game over returns the raw score and length of the whole game.
    """
    ep_return += rewards
    ep_length += 1
    ended = info.get("_final_obs")  # SAME_STEP marks exactly the envs that ended, and only then
    if ended is None:  # most steps: nothing more to do
        return []
    games = game_results(info)
    finished = []
    for i in np.flatnonzero(ended):
        result = games.get(int(i), (float(ep_return[i]), int(ep_length[i])))
        ep_return[i], ep_length[i] = 0.0, 0
        if result is not None:
            finished.append(result)
    return finished


def game_results(info: dict[str, Any]) -> dict[int, tuple[float, int] | None]:
    """Sub-envs whose step ended something other than a plain episode.

    Atari training envs end a learning episode at every lost life: those map to None (not a
    game over, nothing to log). At a real game over they report the raw, unclipped score and
    length of the whole game, which map to ``(return, length)``. Envs that report neither are
    absent: their episode is the one the loop counted itself.
    """
    final = info.get("final_info")
    if final is None:
        return {}
    out: dict[int, tuple[float, int] | None] = {}
    for i in np.flatnonzero(final.get("_life_lost", ())):
        out[int(i)] = None
    stats = final.get("episode")
    if stats is not None:
        for i in np.flatnonzero(final["_episode"]):
            out[int(i)] = (float(stats["r"][i]), int(stats["l"][i]))
    return out


def true_next_obs(next_obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """The observation each transition really led to: the reset observation is replaced by
    ``info["final_obs"]`` for sub-envs whose episode just ended. [N, *obs]"""
    if "_final_obs" not in info:
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(info["_final_obs"]):
        real[i] = info["final_obs"][i]
    return real


# --------------------------------------------------------------------------- env state
# Exact resume needs the episode in progress. Classic-control envs keep it in plain
# attributes (CartPole: `state`, `steps_beyond_terminated`) plus the env's np_random, and
# the wrappers keep theirs (TimeLimit: `_elapsed_steps`). Envs whose state lives in native
# code (ALE) cannot be captured this way: they restart their episode on resume.

_PLAIN = (bool, int, float, str, type(None), np.ndarray, np.generic)


def get_env_states(envs: gym.vector.VectorEnv) -> list[dict[str, Any] | None]:
    """:func:`get_env_state` of each sub-env; all None for an AsyncVectorEnv, whose envs live
    in worker processes (its runs resume with fresh episodes, as ALE runs do)."""
    subs = getattr(envs, "envs", None)
    return [None] * envs.num_envs if subs is None else [get_env_state(env) for env in subs]


def get_env_state(env: gym.Env) -> dict[str, Any] | None:
    """Plain-data snapshot of ``env`` and its wrappers, or None if it cannot be captured."""
    base = env.unwrapped
    module = type(base).__module__
    # an env that keeps its episode in plain attributes: a `state` (classic control, one's own),
    # or gymnasium's toy-text grids and cards (FrozenLake's `s`, Blackjack's hands)
    plain = hasattr(base, "state") or module.startswith("gymnasium.envs.toy_text")
    # native state: the emulator's, or a Box2D world (CarRacing's `state` is only its last frame)
    if not plain or module.startswith(("ale_py", "gymnasium.envs.box2d")):
        return None
    layers = []
    layer: Any = env
    while True:
        if any(isinstance(v, deque) for v in vars(layer).values()):
            return None  # a frame stack in progress (the pixel path's): not plain data
        layers.append({k: _copy(v) for k, v in vars(layer).items() if _is_plain(v)})
        if layer is base:
            break
        layer = layer.env
    return {"layers": layers, "np_random": base.np_random.bit_generator.state}


def set_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`get_env_state` on an env built the same way."""
    layer: Any = env
    for values in state["layers"]:
        for key, value in values.items():
            setattr(layer, key, _copy(value))
        if layer is env.unwrapped:
            break
        layer = layer.env
    env.unwrapped.np_random.bit_generator.state = state["np_random"]


def _is_plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, (np.ndarray, np.generic)):  # numbers only: FrozenLake's map is bytes, fixed by its id
        return value.dtype.kind in "biufc"
    return isinstance(value, _PLAIN)


def _copy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, np.generic):
        return value.item()
    return value
