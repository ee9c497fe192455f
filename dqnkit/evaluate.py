"""Greedy evaluation: play whole episodes, report their returns."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from dqnkit.agent import DQNAgent
from dqnkit.envs import make_env


class EvalResult(NamedTuple):
    returns: np.ndarray  # [E] undiscounted episode returns (the score people report)
    discounted: np.ndarray  # [E] sum of gamma^t r_t: what Q(s_0, a_0) estimates
    start_obs: np.ndarray  # [E, *obs] the first observation of each episode


def evaluate(agent: DQNAgent, env_id: str, episodes: int, seed: int, epsilon: float = 0.0,
             gamma: float = 1.0) -> EvalResult:
    """Play ``episodes`` episodes, episode i seeded ``seed + i``.

    All episodes run side by side so that each step is one batched forward pass. Atari
    games are played whole, with real (unclipped) scores.
    """
    envs = [_eval_env(agent, env_id) for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    start_obs = np.stack(obs)
    rng = np.random.default_rng(seed)
    returns, discounted, discount = np.zeros(episodes), np.zeros(episodes), np.ones(episodes)
    active = list(range(episodes))
    with agent.evaluation():  # noisy nets act on their mean weights
        while active:
            actions = agent.act(np.stack([obs[i] for i in active]), epsilon, rng=rng)
            still_running = []
            for i, action in zip(active, actions):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += reward
                discounted[i] += discount[i] * reward
                discount[i] *= gamma
                if not (terminated or truncated):
                    still_running.append(i)
            active = still_running
    for env in envs:
        env.close()
    return EvalResult(returns, discounted, start_obs)


def record_video(agent: DQNAgent, env_id: str, path: str | Path, seed: int = 0) -> Path:
    """Play one greedy episode and write it to ``path`` (.mp4 or .gif; needs ``dqnkit[video]``)."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        from dqnkit.errors import DqnkitError

        raise DqnkitError("--video needs imageio: pip install 'dqnkit[video]'") from None
    env = _eval_env(agent, env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    done = False
    with agent.evaluation():
        while not done:
            obs, _, terminated, truncated, _ = env.step(agent.act(obs, greedy=True))
            frames.append(env.render())
            done = terminated or truncated
    env.close()
    path = Path(path)
    fps = env.metadata.get("render_fps", 30)
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps)
    else:
        imageio.mimsave(path, frames, fps=fps)
    return path


def _eval_env(agent: DQNAgent, env_id: str, render_mode: str | None = None) -> gym.Env:
    return make_env(env_id, render_mode, repeat_action_probability=agent.config.repeat_action_probability)
