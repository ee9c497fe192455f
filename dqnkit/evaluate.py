"""Greedy evaluation: play whole episodes, report their returns."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from dqnkit.agent import DQNAgent
from dqnkit.envs import env_backend, env_family, make_env


class EvalResult(NamedTuple):
    """What :func:`evaluate` measured, per episode."""

    returns: np.ndarray  # [E] undiscounted episode returns (the score people report)
    discounted: np.ndarray  # [E] sum of gamma^t r_t: what Q(s_0, a_0) estimates
    start_obs: np.ndarray  # [E, *obs] the first observation of each episode


def evaluate(
    agent: DQNAgent, env_id: str, episodes: int, seed: int, epsilon: float = 0.0, gamma: float = 1.0
) -> EvalResult:
    """Play ``episodes`` episodes side by side, each step one batched forward pass.

    Atari games are played whole, with real (unclipped) scores, in the C++ pool the run
    trains in (``env_backend`` ale or envpool: the same frames it learned from, its games
    stepped in parallel threads, the pool seeded with ``seed``); every other env, and Atari
    with ``env_backend=gymnasium``, as one gymnasium env per episode, episode i seeded
    ``seed + i``. The episodes of an env without a time limit end at
    :data:`EVAL_STEP_LIMIT` steps, with a warning.
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
                if steps == envs.step_limit and playing.any():
                    _cut_short(env_id, playing)
    finally:
        envs.close()
    return EvalResult(returns, discounted, start_obs)


# An env without a time limit (CliffWalking-v1, one's own) and a greedy agent that walks in
# circles would play forever: evaluation cuts such episodes here, as Atari's v5 limit does.
EVAL_STEP_LIMIT = 27_000


def _step_limit(env: gym.Env, env_id: str) -> int | None:
    """:data:`EVAL_STEP_LIMIT` for an env that has no time limit of its own, else None
    (Atari's v5 envs end a game at 108,000 frames, inside ALE)."""
    limited = env.spec is not None and env.spec.max_episode_steps
    return None if limited or env_family(env_id) == "atari" else EVAL_STEP_LIMIT


def _cut_short(env_id: str, playing: np.ndarray) -> None:
    """End the episodes still ``playing`` (in place), saying why."""
    warnings.warn(
        f"{env_id} has no time limit and {np.count_nonzero(playing)} evaluation episode(s) went "
        f"{EVAL_STEP_LIMIT:,} steps without ending: cut there (register the env with max_episode_steps)",
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
    cfg = agent.config
    backend = env_backend(env_id, cfg.env_backend, cfg.vector_env)
    if env_family(env_id) != "atari" or backend == "gymnasium":
        return None
    from dqnkit.atari_pool import AleAtari, EnvpoolAtari

    pool = AleAtari if backend == "ale" else EnvpoolAtari
    return _PooledGames(pool(env_id, episodes, seed, cfg.repeat_action_probability, training=False))


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
    27,000 steps of a frozen screen, which is why the Atari protocol keeps ε = 0.05. Frames
    go to the encoder as they are played, not held: such an episode is 2.7 GB of frames.
    """
    path = Path(path)
    suffix = path.suffix.lower()  # play.GIF is a GIF
    require_video_writer(suffix)
    # rgb_array frames need no screen: without this, pygame's SDL (CartPole, Box2D) printed
    # "error: XDG_RUNTIME_DIR is invalid or not set" wherever there is no display session
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = _eval_env(agent, env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    epsilon = agent.config.eval_epsilon if epsilon is None else epsilon
    fps = _video_fps(env, suffix)
    done, episode_return, frames, limit = False, 0.0, 1, _step_limit(env, env_id)
    with _video_writer(path, suffix, fps) as writer, agent.evaluation():
        writer.append_data(_video_frame(env.render()))
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, epsilon, rng=rng))
            episode_return += float(reward)
            writer.append_data(_video_frame(env.render()))
            frames += 1
            done = terminated or truncated or frames - 1 == limit
    env.close()
    return Video(path, frames, fps, episode_return)


def require_video_writer(suffix: str) -> None:
    """Refuse (exit 2) a ``suffix`` video before anything is played or trained, where its
    writer is missing: imageio, and for .mp4 imageio-ffmpeg (an H.264 encoder)."""
    try:
        import imageio.v2  # noqa: F401

        if suffix == ".mp4":
            import imageio_ffmpeg  # noqa: F401
    except ImportError as exc:
        from dqnkit.errors import DqnkitError

        raise DqnkitError(f"{suffix} videos need {exc.name}: pip install 'dqnkit[video]'") from None


def _video_writer(path: Path, suffix: str, fps: float) -> Any:
    """An imageio writer (``suffix`` .gif or .mp4) for frames from ``_video_frame`` (even-sided), at their own size."""
    import imageio.v2 as imageio

    if suffix == ".gif":
        return imageio.get_writer(path, mode="I", duration=round(1000 / fps))  # whole ms: Pillow truncates 29.99 to 20
    # H.264 needs even sides only; imageio's default (multiples of 16) would stretch
    # Atari's 210 rows to 224 and warn about it on every video.
    return imageio.get_writer(path, mode="I", fps=fps, macro_block_size=2)


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
