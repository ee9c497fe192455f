"""Greedy evaluation: play whole episodes, report their returns."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from dqnkit.agent import DQNAgent
from dqnkit.envs import make_env


class EvalResult(NamedTuple):
    """What :func:`evaluate` measured, per episode."""

    returns: np.ndarray  # [E] undiscounted episode returns (the score people report)
    discounted: np.ndarray  # [E] sum of gamma^t r_t: what Q(s_0, a_0) estimates
    start_obs: np.ndarray  # [E, *obs] the first observation of each episode


def evaluate(
    agent: DQNAgent, env_id: str, episodes: int, seed: int, epsilon: float = 0.0, gamma: float = 1.0
) -> EvalResult:
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


VIDEO_FORMATS = (".mp4", ".gif")


class Video(NamedTuple):
    """What :func:`record_video` wrote."""

    path: Path
    frames: int  # frames written: the episode's steps + 1 (its first observation)
    fps: float
    episode_return: float


def record_video(agent: DQNAgent, env_id: str, path: str | Path, seed: int = 0, epsilon: float | None = None) -> Video:
    """Play one episode and write it to ``path`` (.mp4 or .gif; needs ``dqnkit[video]``).

    The agent acts as in evaluation, with ``epsilon`` (default: the run's ``eval_epsilon``):
    a purely greedy Breakout agent that never presses FIRE after losing a life would film
    27,000 steps of a frozen screen, which is why the Atari protocol keeps ε = 0.05.
    """
    try:
        import imageio.v2  # noqa: F401  (checked before the episode is played; _write_video uses it)
    except ImportError:
        from dqnkit.errors import DqnkitError

        raise DqnkitError("--video needs imageio: pip install 'dqnkit[video]'") from None
    env = _eval_env(agent, env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames = [_video_frame(env.render())]
    rng = np.random.default_rng(seed)
    epsilon = agent.config.eval_epsilon if epsilon is None else epsilon
    done, episode_return = False, 0.0
    with agent.evaluation():
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, epsilon, rng=rng))
            episode_return += float(reward)
            frames.append(_video_frame(env.render()))
            done = terminated or truncated
    env.close()
    path = Path(path)
    fps = _video_fps(env, path.suffix)
    _write_video(path, frames, fps)
    return Video(path, len(frames), fps, episode_return)


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Write ``frames`` (even-sided, from ``_video_frame``) at their own size."""
    import imageio.v2 as imageio

    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=round(1000 / fps))  # whole ms: Pillow truncates 29.99 to 20
    else:
        # H.264 needs even sides only; imageio's default (multiples of 16) would stretch
        # Atari's 210 rows to 224 and warn about it on every video.
        imageio.mimsave(path, frames, fps=fps, macro_block_size=2)


def _video_fps(env: gym.Env, suffix: str) -> float:
    """Frames per second that play the episode in real time: an Atari step is ``frame_skip``
    frames of a 60 Hz console. A GIF stores each frame's duration in hundredths of a second,
    so its rate is rounded to one it can hold (and that rate is the one reported)."""
    try:
        fps = 60 / env.get_wrapper_attr("frame_skip")
    except AttributeError:
        fps = env.metadata.get("render_fps") or 30
    if suffix == ".gif":
        fps = 100 / max(1, round(100 / fps))
    return float(fps)


def _video_frame(frame: np.ndarray, min_side: int = 160) -> np.ndarray:
    """uint8 RGB [H, W, 3] that a video encoder takes and a person can see: float frames in
    [0, 1] (MinAtar renders 10x10 of them) become uint8, and small ones are scaled up by whole
    pixels. Sides are padded to even numbers, which H.264 needs."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    scale = -(-min_side // min(frame.shape[:2]))
    if scale > 1:
        frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
    return np.pad(frame, pad) if any(p[1] for p in pad) else frame


def _eval_env(agent: DQNAgent, env_id: str, render_mode: str | None = None) -> gym.Env:
    return make_env(env_id, render_mode, repeat_action_probability=agent.config.repeat_action_probability)
