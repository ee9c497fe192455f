"""Environment construction and the checks that refuse an env dqnkit cannot train on.

:class:`EnvMaker` is the one place a config becomes envs: training's vector envs (sync, async
worker processes, or ALE's C++ pool), evaluation's, films', Ape-X actors' and export's, with
the run's ``env_kwargs``, time limit and pixel path. How the loop steps them (SAME_STEP
autoreset, ``final_obs``) is :mod:`dqnkit.vector`'s.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dqnkit.env_ids import gym_make
from dqnkit.errors import DqnkitError
from dqnkit.vector import AsyncEnvs, LeanSyncVectorEnv
from dqnkit.wrappers import (
    NATURE_MIN_SIDE,
    SMALL_MIN_SIDE,
    channels_last,
    is_image,
    make_atari,
    make_minatar,
    make_pixels,
)


@dataclass(frozen=True)
class EnvMaker:
    """How a run makes its envs: the one place a config becomes envs, for training,
    evaluation, films, Ape-X actors and export alike, so every setting of the env (its
    ``gym.make`` arguments, time limit, sticky actions, the pixel path's frames, and which
    Atari pool steps it) reaches each of them. Build it with :meth:`from_config`."""

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int = 0
    repeat_action_probability: float = 0.25
    pixel_size: int = 84
    grayscale: bool = True
    frame_stack: int = 4
    backend: str = "auto"  # config's env_backend
    mode: str = "auto"  # config's vector_env

    @classmethod
    def from_config(cls, config: Any, env_id: str | None = None) -> EnvMaker:
        """The envs of ``config`` (a :class:`dqnkit.config.Config`), of ``env_id`` if given."""
        return cls(
            env_id or config.env_id,
            dict(config.env_kwargs),
            config.max_episode_steps,
            config.repeat_action_probability,
            config.pixel_size,
            config.grayscale,
            config.frame_stack,
            config.env_backend,
            config.vector_env,
        )

    @property
    def family(self) -> str:
        """:func:`env_family` of the id."""
        return env_family(self.env_id)

    @property
    def pool(self) -> str:
        """Who steps the training envs (:func:`env_backend`); gymnasium where ``env_kwargs``
        are given, which only ``gymnasium.make`` takes."""
        if self.env_kwargs and self.backend == "auto":
            return "gymnasium"
        return env_backend(self.env_id, self.backend, self.mode)

    def make(self, render_mode: str | None = None, *, training: bool = False) -> gym.Env:
        """One env with its spaces checked; ``training`` adds Atari's life-loss terminals and
        reward clipping (see :func:`make_env`)."""
        kwargs = dict(self.env_kwargs)
        if self.family == "atari":
            env = make_atari(
                self.env_id,
                training=training,
                repeat_action_probability=self.repeat_action_probability,
                render_mode=render_mode,
                env_kwargs=kwargs,
            )
        elif self.family == "minatar":
            env = make_minatar(self.env_id, render_mode, self.max_episode_steps or 100_000, env_kwargs=kwargs)
        else:
            if render_mode:
                kwargs["render_mode"] = render_mode
            if self.max_episode_steps:
                kwargs["max_episode_steps"] = self.max_episode_steps
            env = self._observations(_make(self.env_id, **kwargs))
        check_spaces(env.observation_space, env.action_space, self.env_id)
        return env

    def _observations(self, env: gym.Env) -> gym.Env:
        """Images to stacked frames, Discrete / Dict / Tuple observations to a vector."""
        space = env.observation_space
        if is_image(space):
            check_image(space, self.env_id, self.pixel_size)
            return make_pixels(env, self.pixel_size, self.grayscale, self.frame_stack)
        image = _image_part(space)
        if image is not None:
            env.close()
            raise DqnkitError(
                f"{self.env_id} has a {type(space).__name__} observation with an image ({image}); dqnkit "
                "flattens only Box and Discrete parts: register the env wrapped in an observation wrapper that "
                "keeps the image alone, e.g. gymnasium.wrappers.FilterObservation"
            )
        return _one_hot(env)

    def make_vec(self, num_envs: int, seed: int = 0) -> Any:
        """``num_envs`` training copies stepped in lockstep, SAME_STEP autoreset (see
        :func:`make_vec_env`); a C++ pool is seeded with ``seed``."""
        pool = self.pool
        if pool in ("ale", "envpool"):
            return _atari_pool(pool)(self.env_id, num_envs, seed, self.repeat_action_probability)
        fns = [functools.partial(self.make, training=True) for _ in range(num_envs)]
        mode = self.mode
        if mode == "auto":
            mode = "async" if num_envs > 1 and self.family == "atari" else "sync"
        if mode == "async":
            with _signals_left_to_this_process():
                return AsyncEnvs(fns, shared_memory=True, autoreset_mode=AutoresetMode.SAME_STEP)
        return LeanSyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)

    def eval_pool(self, episodes: int, seed: int) -> Any | None:
        """The C++ Atari pool evaluation plays ``episodes`` whole games in (the one training
        steps in: the same frames), or None where training uses gymnasium envs."""
        pool = self.pool
        if self.family != "atari" or pool == "gymnasium":
            return None
        return _atari_pool(pool)(self.env_id, episodes, seed, self.repeat_action_probability, training=False)

    def spaces(self) -> tuple[tuple[int, ...], np.dtype, int]:
        """(observation shape, observation dtype, number of actions), from one env made and
        closed: refuses an env dqnkit cannot train on, before any work starts."""
        env = self.make()
        try:
            return env.observation_space.shape, env.observation_space.dtype, int(env.action_space.n)
        finally:
            env.close()

    def stores_frames(self, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> bool:
        """Whether observations are stacks of single uint8 frames [S, H, W], which the replay
        stores once each (FrameReplay): Atari's, and the pixel path's gray or one-channel ones
        (a colour stack is [S * C, H, W]; MinAtar's channels are not frames)."""
        if len(obs_shape) != 3 or obs_shape[0] < 2 or np.dtype(obs_dtype) != np.uint8:
            return False
        if self.family == "atari":
            return obs_shape[1:] == (84, 84)
        return self.family == "vector" and obs_shape[0] == self.frame_stack

    def shows_images(self) -> bool:
        """Whether the env's own observation is an image (the pixel path), from one env made
        and closed; False where it cannot be made (which :meth:`spaces` then says why)."""
        if self.family != "vector":
            return False
        try:
            env = _make(self.env_id, **self.env_kwargs)
        except DqnkitError:
            return False
        try:
            return is_image(env.observation_space)
        finally:
            env.close()


def _atari_pool(backend: str) -> type:
    from dqnkit.atari_pool import AleAtari, EnvpoolAtari

    return AleAtari if backend == "ale" else EnvpoolAtari


def check_image(space: gym.spaces.Box, env_id: str, size: int) -> None:
    """Refuse an image too small for any of dqnkit's CNNs: one line naming its shape."""
    shape = space.shape
    h, w = shape[:2] if channels_last(shape) else shape[1:]
    if min(h, w) >= NATURE_MIN_SIDE and size:
        return  # resized to size x size (checked >= 1 by the config)
    if min(h, w) < SMALL_MIN_SIDE:
        raise DqnkitError(
            f"{env_id}'s image observation {shape} is too small for a CNN (it needs {SMALL_MIN_SIDE}x"
            f"{SMALL_MIN_SIDE} pixels or more); wrap the env to give a larger image or a flat vector"
        )


def _image_part(space: gym.Space) -> str | None:
    """The first image inside a Dict or Tuple observation, as ``key: shape``, or None."""
    parts = space.spaces.items() if isinstance(space, gym.spaces.Dict) else None
    if isinstance(space, gym.spaces.Tuple):
        parts = enumerate(space.spaces)
    for key, part in parts or ():
        if is_image(part):
            return f"{key}: {part.shape} uint8"
        inner = _image_part(part)
        if inner is not None:
            return f"{key}.{inner}"
    return None


def make_env(
    env_id: str,
    render_mode: str | None = None,
    *,
    training: bool = False,
    repeat_action_probability: float = 0.25,
    max_episode_steps: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    pixel_size: int = 84,
    grayscale: bool = True,
    frame_stack: int = 4,
) -> gym.Env:
    """One gymnasium env for ``env_id``, with its spaces checked.

    ``ALE/<Game>-v5`` ids get the Nature preprocessing (:func:`dqnkit.wrappers.make_atari`;
    ``training`` adds life-loss terminals and reward clipping) and ``MinAtar/<Game>`` ids the
    MinAtar games; every other id goes to ``gymnasium.make`` with ``env_kwargs``. An image
    observation (uint8, HxWxC or CxHxW) becomes a stack of ``frame_stack`` frames, resized
    to ``pixel_size`` (0: as they are) and gray when ``grayscale``; Discrete, Dict and Tuple
    observations a flat vector. ``max_episode_steps`` (not for Atari): gymnasium's
    TimeLimit at that many steps instead of the env's own; 0 keeps the env's own. A run's
    envs: ``EnvMaker.from_config(config).make()``.
    """
    maker = EnvMaker(
        env_id, dict(env_kwargs or {}), max_episode_steps, repeat_action_probability, pixel_size, grayscale, frame_stack
    )
    return maker.make(render_mode, training=training)


def _one_hot(env: gym.Env) -> gym.Env:
    """Discrete observations (FrozenLake, Taxi, CliffWalking's cell), and tuples or dicts of
    them (Blackjack), as the float32 one-hot vector a Q-network reads, as SB3 does; Box
    observations unchanged. (gymnasium's FlattenObservation gives one-hot int64.)"""
    space = env.observation_space
    if isinstance(space, gym.spaces.Box) or not _flattens(space):
        return env
    return gym.wrappers.DtypeObservation(gym.wrappers.FlattenObservation(env), np.float32)


def _flattens(space: gym.Space) -> bool:
    """Whether ``space`` flattens into a one-hot or numeric vector (text and graphs do not)."""
    if isinstance(space, gym.spaces.Tuple):
        return all(_flattens(s) for s in space.spaces)
    if isinstance(space, gym.spaces.Dict):
        return all(_flattens(s) for s in space.spaces.values())
    return isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary, gym.spaces.Box))


def env_family(env_id: str) -> str:
    """``atari`` for ALE ids, ``minatar`` for MinAtar ids, ``vector`` for any other env: the
    one place that sorts ids into the families whose defaults and env stepping differ."""
    if env_id.startswith("ALE/"):
        return "atari"
    if env_id.startswith("MinAtar/"):
        return "minatar"
    return "vector"


def env_backend(env_id: str, backend: str = "auto", mode: str = "auto") -> str:
    """Who steps the training envs: ``backend`` as given, or for ``auto`` ALE's own C++ vector
    env for ALE ids (the same frames as the gymnasium stack, without a Python wrapper chain or
    a process per env) unless a gymnasium ``mode`` (sync or async) was asked for, and gymnasium
    for every other env."""
    if backend != "auto":
        return backend
    return "ale" if env_family(env_id) == "atari" and mode == "auto" else "gymnasium"


def make_vec_env(
    env_id: str,
    num_envs: int,
    repeat_action_probability: float = 0.25,
    mode: str = "auto",
    backend: str = "gymnasium",
    seed: int = 0,
    max_episode_steps: int = 0,
) -> Any:
    """``num_envs`` training copies of ``env_id`` stepped in lockstep, SAME_STEP autoreset.

    ``backend="gymnasium"`` builds dqnkit's gymnasium stack. Its ``mode`` ``sync`` steps the
    envs one after another in this process; ``async`` steps them in parallel worker processes
    (AsyncVectorEnv, observations through shared memory), with the same transitions,
    ``final_obs`` and ``final_info``; ``auto`` picks async for more than one ALE env, whose
    ~1 ms steps pay for the processes. A CartPole or MinAtar step (10-50 µs) costs less than
    a round trip to a worker: 32 MinAtar envs ran 1.8x faster in sync here.
    ``backend="ale"`` or ``"envpool"`` runs ALE ids in a C++ thread pool instead
    (:mod:`dqnkit.atari_pool`, seeded with ``seed``), with the same transition semantics;
    ``backend="auto"`` (the config's default) is :func:`env_backend`'s choice. A run's
    envs: ``EnvMaker.from_config(config).make_vec(num_envs, seed)``.
    """
    maker = EnvMaker(
        env_id,
        max_episode_steps=max_episode_steps,
        repeat_action_probability=repeat_action_probability,
        backend=backend,
        mode=mode,
    )
    return maker.make_vec(num_envs, seed)


@contextlib.contextmanager
def _signals_left_to_this_process() -> Iterator[None]:
    """Worker processes started inside ignore Ctrl-C and SIGTERM (they inherit it): those are
    for the training process, which stops the run at a consistent point, saves it and closes
    its envs. Ctrl-C reaches a terminal's whole process group, and a worker it killed took
    the run down, without its checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and only it receives signals)
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_env_id(env: str | EnvMaker) -> tuple[tuple[int, ...], np.dtype, int]:
    """Refuse an unknown or unsupported env (an id, or a run's :class:`EnvMaker`) before any
    work starts. Returns (observation shape, observation dtype, number of actions)."""
    return (EnvMaker(env) if isinstance(env, str) else env).spaces()


def has_time_limit(env_id: str, max_episode_steps: int = 0) -> bool:
    """Whether ``env_id``'s episodes end by time: ``max_episode_steps`` is set, the id's
    registration has a limit, or it is an Atari or MinAtar game (which always do).
    (Read from gymnasium's registry: call after the env was made once, which imports the
    module of a ``module:Env-v0`` id.)"""
    if max_episode_steps or env_family(env_id) != "vector":
        return True
    try:
        return gym.spec(env_id.split(":")[-1]).max_episode_steps is not None
    except gym.error.Error:
        return True  # an id the registry does not hold as such: nothing to say about it


def check_spaces(obs_space: gym.Space, action_space: gym.Space, env_id: str) -> None:
    """DQN needs a finite set of actions and an array observation."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise DqnkitError(
            f"{env_id} has a {type(action_space).__name__} action space; DQN needs Discrete actions "
            "(for continuous control use an actor-critic method such as SAC or TD3)"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        raise DqnkitError(
            f"{env_id} has a {type(obs_space).__name__} observation space; dqnkit needs an array "
            "observation (a Box, or Discrete ones it turns into one-hot vectors)"
        )


def _make(env_id: str, **kwargs: Any) -> gym.Env:
    if ":" in env_id:  # gymnasium's "module:Env-v0": importing the module registers the env
        _import_env_module(env_id)
    try:
        return gym_make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise DqnkitError(f"cannot create environment {env_id!r}: {exc}") from None
    except ModuleNotFoundError as exc:
        raise DqnkitError(
            f"environment {env_id!r} needs the missing package {exc.name!r}; install the matching "
            "extra, e.g. pip install 'dqnkit[box2d]'"
        ) from None


def _import_env_module(env_id: str) -> None:
    """Import the module of a ``module:Env-v0`` id here, where its failure can be told apart
    (gymnasium's own import re-raises it as a ModuleNotFoundError without a name)."""
    module = env_id.split(":", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise DqnkitError(
            f"environment {env_id!r}: cannot import {module!r}, the module that registers it ({exc}); "
            "put its directory on PYTHONPATH (the dqnkit command does not look in the current directory)"
        ) from None
