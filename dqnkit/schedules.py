"""Exploration: the schedules of epsilon and PER's beta (pure functions of a step counter),
and the randoms epsilon-greedy draws (:class:`ExplorationDraws`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def linear(start: float, end: float, duration: float, t: float) -> float:
    """``start`` at t=0, straight line to ``end`` at t=duration, ``end`` afterwards."""
    if duration <= 0 or t >= duration:
        return end
    return start + max(t / duration, 0.0) * (end - start)


def exponential(start: float, end: float, decay: float, t: int) -> float:
    """``start * decay**t``, floored at ``end`` (the lesson's per-update epsilon decay)."""
    return max(end, start * decay**t)


class ExplorationDraws:
    """The exploration randoms of the training steps, drawn from one RNG in blocks.

    Each acting call needs a uniform (the epsilon test) and a random action per env. Two
    numpy draws per call cost ~4 µs of call overhead, as much as a CartPole step; drawing
    ``BLOCK`` of each at once costs ~0.1 µs per call. Calls take the next ``n`` of both; a
    call that does not fit in what is left draws a fresh block. The block and the position
    are part of the agent's state, so a resumed run takes the same randoms.
    """

    BLOCK = 4096

    def __init__(self, rng: np.random.Generator, n_actions: int) -> None:
        self.rng, self.n_actions = rng, n_actions
        self.uniform, self.actions, self.pos = np.empty(0), np.empty(0, np.int64), 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` uniforms in [0, 1) and ``n`` random actions (views into the block)."""
        if self.pos + n > len(self.uniform):
            size = max(self.BLOCK, n)
            self.uniform = self.rng.random(size)
            self.actions = self.rng.integers(0, self.n_actions, size=size)
            self.pos = 0
        start, self.pos = self.pos, self.pos + n
        return self.uniform[start : self.pos], self.actions[start : self.pos]

    def state_dict(self) -> dict[str, Any]:
        """The RNG and what is left of the block."""
        return {
            "rng": self.rng.bit_generator.state,
            "uniform": self.uniform.copy(),
            "actions": self.actions.copy(),
            "pos": self.pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; an RNG state alone (a checkpoint from before the
        blocks) starts with an empty block."""
        if "bit_generator" in state:
            state = {"rng": state, "uniform": np.empty(0), "actions": np.empty(0, np.int64), "pos": 0}
        self.rng.bit_generator.state = state["rng"]
        self.uniform, self.actions, self.pos = state["uniform"].copy(), state["actions"].copy(), int(state["pos"])
