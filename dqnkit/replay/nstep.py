"""n-step return folding between the env and the replay (Sutton & Barto 7.1; Rainbow).

Each env's last ``n`` steps wait in a queue. Once ``n`` are there, the oldest leaves as one
transition ``(s_t, a_t, R, s_{t+k}, terminated, k)`` with ``R = sum_{i<k} gamma^i r_{t+i}``;
the agent then bootstraps with ``gamma^k`` from ``s_{t+k}``. When an episode ends, every
waiting step leaves at once with a shorter ``k``:

- terminated: ``terminated = 1``, no bootstrap (the true return is complete);
- truncated (time limit): ``terminated = 0``, bootstrap from the truncated final state.

With ``n = 1`` it passes transitions through unchanged.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import numpy as np


class Transitions(NamedTuple):
    """Transitions ready for ``replay.add_batch`` (leading dimension: how many)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray  # discounted sum of up to n rewards
    next_obs: np.ndarray
    terminated: np.ndarray
    horizons: np.ndarray  # k: the bootstrap discount is gamma ** k


class NStepFolder:
    """Folds per-step transitions of ``num_envs`` envs into n-step transitions."""

    def __init__(self, n: int, gamma: float, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: Any) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.gamma = n, gamma
        self.obs_shape, self.obs_dtype = tuple(obs_shape), np.dtype(obs_dtype)
        self.queues: list[deque] = [deque() for _ in range(num_envs)]  # (obs, action, reward) per env

    def push(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> Transitions:
        """One vector step in (``next_obs`` = true next observations); finished transitions out."""
        if self.n == 1:
            return Transitions(obs, actions, rewards, next_obs, terminated, np.ones(len(actions), np.int64))
        out: list[tuple] = []
        for i, queue in enumerate(self.queues):
            queue.append((obs[i], int(actions[i]), float(rewards[i])))
            if terminated[i] or truncated[i]:
                while queue:  # the episode is over: every waiting step is complete
                    out.append(self._fold(queue, next_obs[i], bool(terminated[i])))
                    queue.popleft()
            elif len(queue) == self.n:
                out.append(self._fold(queue, next_obs[i], False))
                queue.popleft()
        return self._stack(out)

    def _fold(self, queue: deque, last_obs: np.ndarray, terminated: bool) -> tuple:
        ret = 0.0
        for k, (_, _, reward) in enumerate(queue):
            ret += self.gamma**k * reward
        first_obs, first_action, _ = queue[0]
        return first_obs, first_action, ret, last_obs, terminated, len(queue)

    def _stack(self, rows: list[tuple]) -> Transitions:
        if not rows:
            empty = np.zeros((0, *self.obs_shape), self.obs_dtype)
            return Transitions(
                empty,
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
                empty.copy(),
                np.zeros(0, bool),
                np.zeros(0, np.int64),
            )
        obs, actions, rets, next_obs, terms, ks = zip(*rows)
        return Transitions(
            np.stack(obs),
            np.array(actions, np.int64),
            np.array(rets, np.float32),
            np.stack(next_obs),
            np.array(terms, bool),
            np.array(ks, np.int64),
        )

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The steps still waiting in each env's queue."""
        return {"queues": [[(np.array(o), a, r) for o, a, r in q] for q in self.queues]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the waiting steps."""
        self.queues = [deque((np.asarray(o), int(a), float(r)) for o, a, r in q) for q in state["queues"]]
