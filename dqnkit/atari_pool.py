"""Pools of C++ Atari envs behind the vector-env interface the training loop already uses.

Two libraries step a whole batch of ALE games in their own C++ thread pools, without a
process per env: ALE's own vector env (``ale_py.vector_env.AtariVectorEnv``, part of the
``ale-py`` dqnkit already needs; ``env_backend=ale``, the default for ALE ids) and envpool
(``pip install envpool envpool-assets``; ``env_backend=envpool``). Both preprocess frames
in C++; ALE's gives exactly the frames of gymnasium's AtariPreprocessing (a test steps both
with the same actions), envpool's resize differs slightly.

Their autoreset differs from gymnasium's SAME_STEP mode: the step after an episode ends
ignores its action and returns the reset observation, a transition that must never be
stored. :class:`PooledAtari` therefore keeps the pool's episodes whole (no episodic life)
and gives the loop the same kind of transitions as dqnkit's gymnasium Atari stack:

- a lost life is ``terminated`` for learning, reported as ``final_info["_life_lost"]``, and
  the game goes on (as :class:`dqnkit.wrappers.EpisodicLife`); the next learning episode
  starts from the frame the life ended on (the wrapper stack takes a no-op step first);
- a game over (or the 27k-step limit, as ``truncated``) resets that env at once, returns
  the reset observation, puts the true last one in ``info["final_obs"]`` and the raw score
  in ``final_info["episode"]``;
- frames are stacked here (the pool gives one), repeating the first frame of every learning
  episode, as gymnasium's FrameStackObservation does at a reset: the stacks the agent acts
  on are the ones FrameReplay rebuilds, and no stack crosses an episode start;
- rewards are clipped to [-1, 1] for learning; the scores reported are the raw ones.

The pools also press FIRE at a reset their own way (ALE's for one frame, where the wrapper
stack takes a 4-frame FIRE step). With ``training=False`` a pool plays whole games with raw
rewards, for evaluation (:func:`dqnkit.evaluate.evaluate` plays in the run's pool).
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dqnkit.errors import DqnkitError

STACK = 4


def ale_game(env_id: str) -> str:
    """``ALE/TicTacToe3D-v5`` -> ALE's ROM name ``tic_tac_toe_3d``, as ale-py registers it."""
    from dqnkit.wrappers import import_ale

    if not env_id.startswith("ALE/"):
        raise ValueError(f"the C++ Atari pools run ALE/<Game>-v5 ids only, not {env_id!r}")
    import_ale(env_id)
    return gym.spec(env_id).kwargs["game"]


def envpool_task(env_id: str) -> str:
    """``ALE/Breakout-v5`` -> envpool's ``Breakout-v5`` (Config refuses envpool for other ids)."""
    if not env_id.startswith("ALE/"):
        raise ValueError(f"envpool runs ALE/<Game>-v5 ids only, not {env_id!r}")
    return env_id.removeprefix("ALE/")


def import_envpool() -> Any:
    """The envpool module, or a one-line error that says how to install it."""
    try:
        import envpool
    except ImportError:
        raise DqnkitError("env_backend=envpool needs envpool: pip install envpool envpool-assets") from None
    return envpool


class PooledAtari:
    """``num_envs`` Atari games in a C++ pool, with SAME_STEP autoreset and life-loss
    terminals. A subclass builds the pool (:meth:`_make_pool`: a gymnasium-style vector env
    giving one 84x84 frame per env, raw rewards, game overs as ``terminated``,
    ``info["lives"]``) and says how to reset all or some of its games."""

    steps_apart = True  # the pool's threads play a step between send() and recv()

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int = 0,
        repeat_action_probability: float = 0.25,
        max_episode_steps: int = 27_000,
        *,
        training: bool = True,
    ) -> None:
        self._pool = self._make_pool(env_id, num_envs, seed, repeat_action_probability, max_episode_steps)
        self.num_envs, self._seed = num_envs, seed
        self._training = training  # False (evaluation): whole games, raw rewards, as make_env(training=False)
        frame = self._pool.single_observation_space.shape[1:]
        self.single_observation_space = gym.spaces.Box(0, 255, (STACK, *frame), np.uint8)
        self.single_action_space = self._pool.single_action_space
        self._stack = np.zeros((num_envs, STACK, *frame), np.uint8)
        self._lives = np.zeros(num_envs, np.int64)
        self._score = np.zeros(num_envs)  # raw game score so far
        self._length = np.zeros(num_envs, np.int64)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every game; ``seed`` is taken at construction (the pools seed their envs then)."""
        frames, info = self._reset_all()
        self._start(np.arange(self.num_envs), frames[:, -1])
        self._lives[:] = info["lives"]
        self._score[:], self._length[:] = 0.0, 0
        return self._stack.copy(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One vector step with gymnasium's SAME_STEP semantics (final_obs, life losses, raw scores)."""
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        """Start a vector step: the pool's threads play it while this thread goes on."""
        self._pool.send(np.asarray(actions))

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The result of the step :meth:`send` started, as :meth:`step` returns it."""
        frames, raw, game_over, truncated, info = self._pool.recv()
        assert (info["env_id"] == np.arange(self.num_envs)).all()  # a synchronous pool answers in order
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[:, -1] = frames[:, -1]
        self._score += raw
        self._length += 1
        life_lost = (info["lives"] < self._lives) & ~game_over & ~truncated & self._training
        self._lives[:] = info["lives"]
        terminated = game_over | life_lost
        ended = terminated | truncated
        out: dict[str, Any] = {}
        if ended.any():
            out = self._end(np.flatnonzero(ended), game_over | truncated, life_lost)
        rewards = np.clip(raw, -1.0, 1.0) if self._training else raw
        return self._stack.copy(), rewards, terminated, truncated, out

    def close(self) -> None:
        """Release envpool's threads."""
        self._pool.close()

    # ------------------------------------------------------------------ internals
    def _start(self, ids: np.ndarray, first_frames: np.ndarray) -> None:
        self._stack[ids] = first_frames[:, None]  # the first frame repeated through the stack

    def _end(self, ended: np.ndarray, game_ended: np.ndarray, life_lost: np.ndarray) -> dict[str, Any]:
        """SAME_STEP bookkeeping for the envs whose learning episode ended this step."""
        n = self.num_envs
        final_obs = np.empty(n, dtype=object)
        final_obs[ended] = list(self._stack[ended])  # fancy indexing copies
        mask = np.zeros(n, bool)
        mask[ended] = True
        games = np.flatnonzero(game_ended)
        final_info = {
            "_life_lost": life_lost,
            "episode": {"r": self._score.copy(), "l": self._length.copy()},
            "_episode": game_ended,
        }
        if len(games):
            frames, lives = self._reset_games(games)
            self._lives[games] = lives
            self._score[games], self._length[games] = 0.0, 0
            self._start(games, frames[:, -1])
        lives = np.flatnonzero(life_lost)
        self._start(lives, self._stack[lives, -1])  # the next life's episode starts on its first frame
        return {"final_obs": final_obs, "_final_obs": mask, "final_info": final_info}

    def _make_pool(self, env_id: str, num_envs: int, seed: int, sticky: float, max_episode_steps: int) -> Any:
        """The pool: Nature preprocessing, one frame per env, no episodic life, raw rewards."""
        raise NotImplementedError

    def _reset_all(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every game: (frames [N, 1, H, W], info with "lives")."""
        raise NotImplementedError

    def _reset_games(self, games: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reset the games ``games`` at once (their next step is a real one, not an autoreset):
        (their frames [G, 1, H, W], their lives [G])."""
        raise NotImplementedError


class AleAtari(PooledAtari):
    """The games in ALE's own C++ vector env (``ale_py.vector_env.AtariVectorEnv``), with the
    Nature preprocessing of dqnkit's gymnasium stack: noop starts, FIRE at reset, 4-frame
    skip with max-pooling, 84x84 grayscale, sticky actions, the v5 envs' 108k-frame limit."""

    def _make_pool(self, env_id: str, num_envs: int, seed: int, sticky: float, max_episode_steps: int) -> Any:
        from ale_py.vector_env import AtariVectorEnv

        return AtariVectorEnv(
            ale_game(env_id),
            num_envs,
            num_threads=min(num_envs, os.cpu_count() or 1),
            repeat_action_probability=sticky,
            autoreset_mode=AutoresetMode.NEXT_STEP,
            stack_num=1,
            frameskip=4,
            noop_max=30,
            use_fire_reset=True,
            episodic_life=False,
            reward_clipping=False,
            max_num_frames_per_episode=4 * max_episode_steps,
        )  # seeded at the first reset

    def _reset_all(self) -> tuple[np.ndarray, dict[str, Any]]:
        return self._pool.reset(seed=self._seed)

    def _reset_games(self, games: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros(self.num_envs, bool)
        mask[games] = True
        frames, info = self._pool.reset(options={"reset_mask": mask})  # the others report, untouched
        return frames[games], info["lives"][games]


class EnvpoolAtari(PooledAtari):
    """The games in envpool's thread pool (its own resize, close to gymnasium's)."""

    def _make_pool(self, env_id: str, num_envs: int, seed: int, sticky: float, max_episode_steps: int) -> Any:
        return import_envpool().make_gymnasium(
            envpool_task(env_id),
            num_envs=num_envs,
            seed=seed,
            episodic_life=False,
            reward_clip=False,
            stack_num=1,
            repeat_action_probability=sticky,
            noop_max=30,
            frame_skip=4,
            use_fire_reset=True,
            max_episode_steps=max_episode_steps,
        )

    def _reset_all(self) -> tuple[np.ndarray, dict[str, Any]]:
        return self._pool.reset()

    def _reset_games(self, games: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, info = self._pool.reset(env_id=games)
        assert (info["env_id"] == games).all()
        return frames, info["lives"]
