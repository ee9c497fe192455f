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


class FireOnReset(gym.Wrapper):
    """Press FIRE after every reset, for games that show nothing until it is pressed.

    Without it an agent can spend most of its early exploration in a frozen start screen.
    """

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        """Reset, then press FIRE (resetting again if that ended the episode)."""
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


class EpisodicLife(gym.Wrapper):
    """A lost life ends the learning episode (``terminated``), but the game goes on.

    Mnih et al. 2015: a life's end is a real terminal state for the value of the current life,
    and it tells the agent that dying is bad without waiting for the game to end. ``reset``
    only restarts the game once it is really over; otherwise it continues with a no-op step.
    ``info["life_lost"]`` marks the ends that are not game overs, so the training loop logs
    whole games only.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
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
        """A real reset after a game over; after a lost life, a no-op step that continues the game."""
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op itself ended the game
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        self.game_over = False
        return obs, info


class ChannelsFirst(gym.ObservationWrapper):
    """MinAtar's boolean [10, 10, C] grid -> uint8 [C, 10, 10], the layout torch convolutions take."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, (c, h, w), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """[10, 10, C] bool -> [C, 10, 10] uint8."""
        return np.ascontiguousarray(np.moveaxis(observation, -1, 0), dtype=np.uint8)


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
    env_id: str, *, training: bool, repeat_action_probability: float = 0.25, render_mode: str | None = None
) -> gym.Env:
    """``ALE/<Game>-v5`` with the Nature preprocessing (module docstring); [4, 84, 84] uint8."""
    import_ale(env_id)
    kwargs: dict[str, Any] = {"frameskip": 1, "repeat_action_probability": repeat_action_probability}
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


def make_minatar(env_id: str, render_mode: str | None = None, max_episode_steps: int = 100_000) -> gym.Env:
    """A MinAtar game (Young & Tian 2019) as a gymnasium env with uint8 [C, 10, 10] observations."""
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
        env = gym.make(
            minatar_id(env_id),
            max_episode_steps=max_episode_steps,
            disable_env_checker=True,
            **({"render_mode": render_mode} if render_mode else {}),
        )
    except gym.error.Error as exc:
        raise DqnkitError(f"cannot create environment {env_id!r}: {exc}") from None
    return ChannelsFirst(env)
