"""Shared fixtures, and tiny deterministic envs whose every transition is known.

``dqnkit-test/Walk-v0``: obs = [t] (float32), reward 1 per step. With ``goal=k`` the
episode *terminates* when t reaches k; the registered time limit *truncates* it at 6.
Their transitions let tests check what the loop stores at termination vs truncation.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch


class Walk(gym.Env):
    def __init__(self, goal: int | None = None) -> None:
        self.goal = goal
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.state = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.state += 1
        terminated = self.goal is not None and self.state >= self.goal
        return np.array([self.state], dtype=np.float32), 1.0, terminated, False, {}


gym.register("dqnkit-test/Walk-v0", entry_point=Walk, max_episode_steps=6)
gym.register("dqnkit-test/WalkGoal-v0", entry_point=Walk, kwargs={"goal": 4}, max_episode_steps=6)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class NaNReward(Walk):
    """Walk whose reward turns NaN at t = 30: training must stop and say so."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, (float("nan") if self.state == 30 else reward), terminated, truncated, info


gym.register("dqnkit-test/NaNReward-v0", entry_point=NaNReward, max_episode_steps=100)


class Opaque(Walk):
    """Walk that keeps its position where dqnkit cannot snapshot it (like ALE's native state)."""

    def __getattribute__(self, name):
        if name == "state":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        self.__dict__["t"] = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.__dict__["t"] += 1
        return np.array([self.__dict__["t"]], dtype=np.float32), 1.0, False, False, {}


gym.register("dqnkit-test/Opaque-v0", entry_point=Opaque, max_episode_steps=6)


class Said(Walk):
    """Walk that says its position in words: an observation no Q-network reads."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Text(max_length=8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "zero", {}

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return str(self.state), reward, terminated, truncated, info


gym.register("dqnkit-test/Said-v0", entry_point=Said, max_episode_steps=6)


class Endless(gym.Env):
    """An env with no time limit that never ends: a greedy agent plays it until something
    cuts the episode. Its 200x300 frames change every step (two bars cross the screen), the
    worst case for a film's size and memory."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), -1.0, False, False, {}

    def _obs(self) -> np.ndarray:
        return np.array([np.sin(self.t / 10), np.cos(self.t / 10)], dtype=np.float32)

    def render(self) -> np.ndarray:
        frame = np.full((200, 300, 3), 40, np.uint8)
        column, row = self.t % 290, (3 * self.t) % 190
        frame[:, column : column + 10] = (255, 200, 0)
        frame[row : row + 10, :] = (0, 120, 255)
        return frame


gym.register("dqnkit-test/Endless-v0", entry_point=Endless)  # no max_episode_steps: no time limit
