"""Greedy evaluation: play whole episodes, report their returns."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from dqnkit.agent import DQNAgent
from dqnkit.envs import EnvMaker, env_family, has_time_limit
from dqnkit.video import (
    FrameWriter,
    default_max_steps,
    open_video,
    quiet_sdl,
    remove_partial,
    require_video_writer,
    video_fps,
    video_frame,
)


class EvalResult(NamedTuple):
    """What :func:`evaluate` measured, per episode."""

    returns: np.ndarray  # [E] undiscounted episode returns (the score people report)
    discounted: np.ndarray  # [E] sum of gamma^t r_t: what Q(s_0, a_0) estimates
    start_obs: np.ndarray  # [E, *obs] the first observation of each episode


class EvaluationStopped(Exception):
    """The ``stop`` callback of :func:`evaluate` turned true: the evaluation was abandoned."""


def evaluate(
    agent: DQNAgent,
    env_id: str,
    episodes: int,
    seed: int,
    epsilon: float = 0.0,
    gamma: float = 1.0,
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Play ``episodes`` episodes side by side, each step one batched forward pass.

    Atari games are played whole, with real (unclipped) scores, in the C++ pool the run
    trains in (``env_backend`` ale or envpool: the same frames it learned from, its games
    stepped in parallel threads, the pool seeded with ``seed``); every other env, and Atari
    with ``env_backend=gymnasium``, as one gymnasium env per episode, episode i seeded
    ``seed + i``. The episodes of an env without a time limit end at
    :data:`EVAL_STEP_LIMIT` steps, with a warning. ``stop`` is asked after every step: once
    it says True, the evaluation is abandoned (:class:`EvaluationStopped`), which is how a
    run's Ctrl-C or SIGTERM ends ten Atari games within a step instead of minutes later.
    """
    envs = _pooled_games(agent, env_id, episodes, seed) or _GymEpisodes(agent, env_id, episodes, seed)
    try:
        obs = envs.reset()
        start_obs = obs.copy()
        rng = np.random.default_rng(seed)
        returns, discounted, discount = np.zeros(episodes), np.zeros(episodes), np.ones(episodes)
        playing, steps = np.ones(episodes, bool), 0
        with agent.evaluation():  # noisy nets act on their mean weights
            while playing.any():
                active = np.flatnonzero(playing)
                actions = np.zeros(episodes, np.int64)  # an ended game's env gets any action: it is not read
                actions[active] = agent.act(obs[active], epsilon, rng=rng)
                obs, rewards, ended = envs.step(actions, playing)
                returns[active] += rewards[active]
                discounted[active] += discount[active] * rewards[active]
                discount[active] *= gamma
                playing[active] = ~ended[active]
                steps += 1
                if stop is not None and playing.any() and stop():
                    raise EvaluationStopped(f"stopped after {steps:,} steps")
                if steps == envs.step_limit and playing.any():
                    _cut_short(env_id, playing)
    finally:
        envs.close()
    return EvalResult(returns, discounted, start_obs)


# An env without a time limit (CliffWalking-v1, one's own) and a greedy agent that walks in
# circles would play forever: evaluation cuts such episodes here, as Atari's v5 limit does.
EVAL_STEP_LIMIT = 27_000


def warn_if_endless(config: Any, training: bool) -> None:
    """Say, before anything is played, that ``config``'s env has no time limit (nor a
    ``max_episode_steps``): where its episodes end, and how to cut them."""
    if has_time_limit(config.env_id, config.max_episode_steps):
        return
    if training:
        played, how = "a training episode lasts until the env ends it, and evaluation", "cuts every episode at N steps"
    else:
        played, how = "evaluation", "in the config of a run trained with it cuts them at N steps"
    warnings.warn(
        f"{config.env_id} has no time limit: {played} episodes are cut at {EVAL_STEP_LIMIT:,} steps; "
        f"`max_episode_steps=N` {how}",
        stacklevel=3,
    )


def _step_limit(env: gym.Env, env_id: str) -> int | None:
    """:data:`EVAL_STEP_LIMIT` for an env that has no time limit of its own, else None
    (Atari's v5 envs end a game at 108,000 frames, inside ALE)."""
    limited = env.spec is not None and env.spec.max_episode_steps
    return None if limited or env_family(env_id) == "atari" else EVAL_STEP_LIMIT


def _cut_short(env_id: str, playing: np.ndarray) -> None:
    """End the episodes still ``playing`` (in place), saying why."""
    warnings.warn(
        f"{env_id} has no time limit and {np.count_nonzero(playing)} evaluation episode(s) went "
        f"{EVAL_STEP_LIMIT:,} steps without ending: cut there (`max_episode_steps=N` cuts every episode at N)",
        stacklevel=3,
    )
    playing[:] = False


class _GymEpisodes:
    """One gymnasium env per episode, stepped one after another (only those still playing)."""

    def __init__(self, agent: DQNAgent, env_id: str, episodes: int, seed: int) -> None:
        self.envs, self.seed = [_eval_env(agent, env_id) for _ in range(episodes)], seed
        self.step_limit = _step_limit(self.envs[0], env_id)

    def reset(self) -> np.ndarray:
        self.obs = np.stack([env.reset(seed=self.seed + i)[0] for i, env in enumerate(self.envs)])
        return self.obs

    def step(self, actions: np.ndarray, playing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(observations [E, *obs], rewards [E], ended [E]); the observations are this
        object's buffer, which the next step writes: :func:`evaluate` reads them before."""
        rewards, ended = np.zeros(len(self.envs)), np.zeros(len(self.envs), bool)
        for i in np.flatnonzero(playing):
            self.obs[i], rewards[i], terminated, truncated, _ = self.envs[i].step(actions[i])
            ended[i] = terminated or truncated
        return self.obs, rewards, ended

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _PooledGames:
    """Whole Atari games in a C++ pool, one per episode: the pool steps every game each
    step; a game that has ended is reset by the pool and no longer read."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.step_limit = pool, None  # the pool ends games at the v5 envs' limit

    def reset(self) -> np.ndarray:
        return self.pool.reset()[0]

    def step(self, actions: np.ndarray, playing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs, rewards, terminated, truncated, _ = self.pool.step(actions)
        return obs, rewards, terminated | truncated  # training=False: terminated is a game over

    def close(self) -> None:
        self.pool.close()


def _pooled_games(agent: DQNAgent, env_id: str, episodes: int, seed: int) -> _PooledGames | None:
    """The run's C++ Atari pool for evaluation, or None where the run trains in gymnasium envs."""
    pool = EnvMaker.from_config(agent.config, env_id).eval_pool(episodes, seed)
    return None if pool is None else _PooledGames(pool)


class Video(NamedTuple):
    """What :func:`record_video` wrote."""

    path: Path
    frames: int  # frames written: the steps filmed + 1 (the episode's first observation)
    fps: float
    episode_return: float  # the return of the steps filmed
    cut: bool  # the film stopped before the episode ended: at ``max_steps``, or asked to stop


def record_video(
    agent: DQNAgent,
    env_id: str,
    path: str | Path,
    seed: int = 0,
    epsilon: float | None = None,
    max_steps: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> Video:
    """Play one episode and write it to ``path`` (.gif, or .mp4 with ``dqnkit[video]``).

    The agent acts as in evaluation, with ``epsilon`` (default: the run's ``eval_epsilon``):
    a purely greedy Breakout agent that never presses FIRE after losing a life would film
    27,000 steps of a frozen screen, which is why the Atari protocol keeps ε = 0.05. Frames
    go to disk as they are played (:mod:`dqnkit.video`), so memory does not grow with the
    film. The film ends with the episode, after ``max_steps`` steps (default: five minutes
    of playback, :func:`~dqnkit.video.default_max_steps`), or when ``stop()`` turns true;
    ``cut`` says it ended early. Ctrl-C or SIGTERM (a KeyboardInterrupt) closes the file
    with the frames filmed so far, a valid video, or deletes it where it cannot be closed.
    """
    path = Path(path)
    suffix = path.suffix.lower()  # play.GIF is a GIF
    require_video_writer(suffix)
    quiet_sdl()
    env = _eval_env(agent, env_id, render_mode="rgb_array")
    try:
        fps = video_fps(env, suffix)
        max_steps = max_steps or default_max_steps(fps)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        epsilon = agent.config.eval_epsilon if epsilon is None else epsilon
        writer = open_video(path, fps)
        steps, episode_return, done = 0, 0.0, False
        try:
            with agent.evaluation():
                writer.append(video_frame(env.render()))
                while not done and steps < max_steps and not (stop is not None and stop()):
                    obs, reward, terminated, truncated, _ = env.step(agent.act(obs, epsilon, rng=rng))
                    episode_return += float(reward)
                    writer.append(video_frame(env.render()))
                    steps, done = steps + 1, terminated or truncated
        except BaseException:
            _close_or_remove(writer, path)
            raise
        try:
            writer.close()
        except BaseException:
            remove_partial(path)
            raise
    finally:
        env.close()
    return Video(path, steps + 1, fps, episode_return, cut=not done)


def _close_or_remove(writer: FrameWriter, path: Path) -> None:
    """After an error or a stop mid-film: the frames so far as a valid file, or no file."""
    try:
        writer.close()
    except BaseException:  # a second Ctrl-C, or an encoder that failed: no half-written file
        remove_partial(path)


def _eval_env(agent: DQNAgent, env_id: str, render_mode: str | None = None) -> gym.Env:
    return EnvMaker.from_config(agent.config, env_id).make(render_mode)
