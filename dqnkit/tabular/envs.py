"""Small MDPs as transition tables, so that many seeds step in one numpy operation."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class TabularMDP:
    """A deterministic MDP: ``next_state[s, a]``, ``reward[s, a]``, ``terminal[s, a]``."""

    next_state: np.ndarray  # [S, A] int64
    reward: np.ndarray  # [S, A] float64
    terminal: np.ndarray  # [S, A] bool
    start: int
    shape: tuple[int, int] | None = None  # grid (rows, cols), for drawing paths
    hazards: tuple[int, ...] = ()  # cells drawn as danger (the cliff)

    @property
    def n_states(self) -> int:
        """Number of states."""
        return self.next_state.shape[0]

    @property
    def n_actions(self) -> int:
        """Number of actions."""
        return self.next_state.shape[1]


def cliff_walking() -> TabularMDP:
    """gymnasium's ``CliffWalking-v1`` (4x12; -1 a step; the cliff costs -100 and sends you
    back to the start without ending the episode), read from its transition table ``P``."""
    env = gym.make("CliffWalking-v1").unwrapped
    n_s, n_a = env.observation_space.n, env.action_space.n
    nxt, rew, term = np.zeros((n_s, n_a), np.int64), np.zeros((n_s, n_a)), np.zeros((n_s, n_a), bool)
    for s in range(n_s):
        for a in range(n_a):
            ((prob, s2, r, done),) = env.P[s][a]  # deterministic: exactly one outcome
            assert prob == 1.0
            nxt[s, a], rew[s, a], term[s, a] = s2, r, done
    cliff = tuple(int(c) for c in np.flatnonzero(env._cliff))
    return TabularMDP(
        nxt, rew, term, start=int(env.initial_state_distrib.argmax()), shape=tuple(env.shape), hazards=cliff
    )


def random_walk_values(n: int = 19) -> np.ndarray:
    """True state values of the n-state random walk with rewards -1 / +1 at the ends, gamma 1:
    linear from -1 to +1 (exclusive). Index 0 is the leftmost non-terminal state. [n]"""
    return np.arange(1, n + 1) * 2 / (n + 1) - 1
