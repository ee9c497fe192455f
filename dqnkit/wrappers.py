"""Atari and MinAtar env stacks: the Nature DQN preprocessing, built from gymnasium's own
wrappers where it has them, and the three small ones it lacks.

Training env (``make_atari(..., training=True)``), innermost first::

    ALE/<Game>-v5 (frameskip=1, sticky actions configurable)
    AtariPreprocessing       up to 30 no-op starts, skip 4 with max over the last two frames, 84x84 gray
    RecordEpisodeStatistics  raw game score over all lives -> final_info["episode"]
    FireOnReset              press FIRE after a reset, for games that wait for it (Breakout, ...)
    EpisodicLife             a lost life ends the *learning* episode (terminated), not the game
    ClipReward               rewards clipped to [-1, 1]
    FrameStackObservation    4 frames -> uint8 [4, 84, 84] (first frame repeated at a reset)

The evaluation env drops EpisodicLife and ClipReward, so evaluation reports the real game score.

Any other env whose observation is an image (uint8, HxWxC or CxHxW) gets
:func:`make_pixels`: :class:`PixelFrames` (resize, grayscale, channels first) and a frame
stack, the same layout as Atari's.

Every wrapper here records its constructor arguments (``RecordConstructorArgs``), so that
``env.spec`` makes the same stack again, as gymnasium's env checker asks.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, ClipReward, FrameStackObservation, RecordEpisodeStatistics

from dqnkit.env_ids import gym_make
from dqnkit.errors import DqnkitError

MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")


class FireOnReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Press FIRE after every reset, for games that show nothing until it is pressed.

    Without it an agent can spend most of its early exploration in a frozen start screen.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        """Reset, then press FIRE (resetting again if that ended the episode)."""
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


class EpisodicLife(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A lost life ends the learning episode (``terminated``), but the game goes on.

    Mnih et al. 2015: a life's end is a real terminal state for the value of the current life,
    and it tells the agent that dying is bad without waiting for the game to end. ``reset``
    only restarts the game once it is really over; otherwise it continues with a no-op step.
    ``info["life_lost"]`` marks the ends that are not game overs, so the training loop logs
    whole games only.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self.lives = 0
        self.game_over = True

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step; a lost life (not the last) comes back as ``terminated`` with ``info['life_lost']``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives and not self.game_over:
            terminated, info = True, {**info, "life_lost": True}
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        """A real reset after a game over or when given a seed (a seed asks for a new game,
        gymnasium's contract); after a lost life, a no-op step that continues the game."""
        if self.game_over or kwargs.get("seed") is not None:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op itself ended the game
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        self.game_over = False
        return obs, info


class ChannelsFirst(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MinAtar's boolean [10, 10, C] grid -> uint8 [C, 10, 10], the layout torch convolutions
    take. A seed given to ``reset`` also seeds the env's ``np_random``: MinAtar seeds its game
    but not gymnasium's generator, which gymnasium's checker requires (the game, and so every
    trajectory, is as before)."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, (c, h, w), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Reset; with a seed, the game and the env's ``np_random`` both."""
        if seed is not None:
            self.env.unwrapped._np_random, _ = gym.utils.seeding.np_random(seed)
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """[10, 10, C] bool -> [C, 10, 10] uint8."""
        return np.ascontiguousarray(np.moveaxis(observation, -1, 0), dtype=np.uint8)


# The Nature CNN's strides (8/4, 4/2, 3/1) need a side of 36 pixels; smaller images keep
# their size and get the MinAtar CNN (one 3x3 convolution), which needs 3.
NATURE_MIN_SIDE = 36
SMALL_MIN_SIDE = 3


def is_image(space: gym.Space) -> bool:
    """Whether ``space`` is an image: a uint8 Box of rank 3 (HxWxC or CxHxW)."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8


def channels_last(shape: tuple[int, ...]) -> bool:
    """HxWxC unless the first axis looks like the channels (at most 4, and the last more)."""
    return not (shape[0] <= 4 < shape[-1])


class PixelFrames(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """An image observation as the frames a CNN reads: channels first, resized to ``size``
    x ``size`` (0: as it is; an image under :data:`NATURE_MIN_SIDE` a side is never enlarged),
    RGB(A) turned gray when ``grayscale``. Gray frames come out [H, W] (so that a frame
    stack is [S, H, W], as Atari's), others [C, H, W]."""

    def __init__(self, env: gym.Env, size: int = 84, grayscale: bool = True) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, size=size, grayscale=grayscale)
        gym.ObservationWrapper.__init__(self, env)
        shape = env.observation_space.shape
        self._last = channels_last(shape)
        h, w, c = shape if self._last else (shape[1], shape[2], shape[0])
        self._size = (size, size) if size and min(h, w) >= NATURE_MIN_SIDE and (h, w) != (size, size) else None
        self._gray = grayscale and c in (3, 4)
        h, w = self._size or (h, w)
        out = (h, w) if self._gray or c == 1 else (c, h, w)
        self.observation_space = gym.spaces.Box(0, 255, out, np.uint8)
        self._cv2 = _cv2(env) if self._size else None

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """One image -> [H, W] (gray, or a single channel) or [C, H, W] uint8."""
        frame = observation if self._last else np.moveaxis(observation, 0, -1)  # HWC from here
        if self._size:
            frame = self._cv2.resize(frame, self._size[::-1], interpolation=self._cv2.INTER_AREA)
            frame = frame.reshape(*self._size, -1)  # cv2 drops a single channel
        if self._gray:
            frame = frame[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            return np.ascontiguousarray(np.round(frame).astype(np.uint8))
        if frame.shape[-1] == 1:
            return np.ascontiguousarray(frame[..., 0])
        return np.ascontiguousarray(np.moveaxis(frame, -1, 0))


def _cv2(env: gym.Env) -> Any:
    """OpenCV, which resizes frames, or a one-line error naming the extra."""
    try:
        import cv2
    except ImportError:
        name = env.spec.id if env.spec else "this env"
        raise DqnkitError(
            f"resizing {name}'s image observations needs OpenCV: pip install 'dqnkit[pixels]' "
            "(or `pixel_size=0` keeps their size)"
        ) from None
    return cv2


def make_pixels(env: gym.Env, size: int = 84, grayscale: bool = True, stack: int = 4) -> gym.Env:
    """``env``'s image observations as stacked frames: uint8 [S, H, W] (gray or single-channel)
    or [S * C, H, W] (colour), the S latest frames, the first repeated after a reset."""
    env = FrameStackObservation(PixelFrames(env, size, grayscale), stack)
    shape = env.observation_space.shape
    if len(shape) == 4:  # [S, C, H, W] colour frames: their channels side by side for the CNN
        env = gym.wrappers.ReshapeObservation(env, (shape[0] * shape[1], *shape[2:]))
    return env


def import_ale(env_id: str) -> Any:
    """ale_py with its ids registered in gymnasium, or a one-line error naming the extra. The
    emulator's start-up banner ("A.L.E: Arcade Learning Environment ... [Powered by Stella]"
    on stderr, with every run and evaluation) is left out; its warnings and errors still print."""
    try:
        import ale_py
    except ImportError:
        raise DqnkitError(f"{env_id} needs the Atari emulator: pip install 'dqnkit[atari]'") from None
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    gym.register_envs(ale_py)
    return ale_py


def make_atari(
    env_id: str,
    *,
    training: bool,
    repeat_action_probability: float = 0.25,
    render_mode: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> gym.Env:
    """``ALE/<Game>-v5`` with the Nature preprocessing (module docstring); [4, 84, 84] uint8.
    ``env_kwargs``: more arguments for ``gymnasium.make`` (ALE's ``mode``, ``difficulty``...)."""
    import_ale(env_id)
    kwargs: dict[str, Any] = {
        **(env_kwargs or {}),
        "frameskip": 1,
        "repeat_action_probability": repeat_action_probability,
    }
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        env = gym_make(env_id, **kwargs)
        env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
    except gym.error.DependencyNotInstalled:
        raise DqnkitError(f"{env_id} needs OpenCV for resizing frames: pip install 'dqnkit[atari]'") from None
    except gym.error.Error as exc:
        raise DqnkitError(f"cannot create environment {env_id!r}: {exc}") from None
    env = RecordEpisodeStatistics(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireOnReset(env)
    if training:
        env = ClipReward(EpisodicLife(env), -1.0, 1.0)
    return FrameStackObservation(env, 4)


def minatar_id(env_id: str) -> str:
    """``MinAtar/Breakout`` -> ``MinAtar/Breakout-v1`` (minimal action set); versioned ids pass."""
    name = env_id.split("/", 1)[1]
    if "-v" in name:
        return env_id
    if name not in MINATAR_GAMES:
        close = difflib.get_close_matches(name, MINATAR_GAMES, n=1) or [
            g for g in MINATAR_GAMES if g.lower() == name.lower()
        ]
        hint = f"did you mean MinAtar/{close[0]}? " if close else ""
        raise DqnkitError(f"unknown MinAtar game {name!r}; {hint}the games: {', '.join(MINATAR_GAMES)}")
    return f"MinAtar/{name}-v1"


def make_minatar(
    env_id: str,
    render_mode: str | None = None,
    max_episode_steps: int = 100_000,
    env_kwargs: dict[str, Any] | None = None,
) -> gym.Env:
    """A MinAtar game (Young & Tian 2019) as a gymnasium env with uint8 [C, 10, 10]
    observations; ``env_kwargs``: more arguments for ``gymnasium.make`` (``sticky_action_prob``...)."""
    try:
        import minatar.gym
    except ImportError:
        raise DqnkitError(f"{env_id} needs MinAtar: pip install 'dqnkit[minatar]'") from None
    if not any(k.startswith("MinAtar/") for k in gym.envs.registry):
        minatar.gym.register_envs()
    try:
        # MinAtar games have no time limit; the default cap only stops a greedy policy that never loses.
        # No env checker: it warns that MinAtar declares no render fps and renders float64
        # frames, both of which the video writer handles (a default rate; frames made uint8).
        env = gym_make(
            minatar_id(env_id),
            **(env_kwargs or {}),
            max_episode_steps=max_episode_steps,
            disable_env_checker=True,
            **({"render_mode": render_mode} if render_mode else {}),
        )
    except gym.error.Error as exc:
        raise DqnkitError(f"cannot create environment {env_id!r}: {exc}") from None
    return ChannelsFirst(env)
