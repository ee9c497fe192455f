"""DQN and PQN as a run sees them: what each stores, when each learns, and when a run's
events fall. The loop (:mod:`dqnkit.training`) and Ape-X's learner ask these objects instead
of testing ``config.algorithm``; :func:`algorithm` makes that choice, once.

Steps are env steps summed over envs (or over Ape-X's actors). An event due "every k steps"
falls in the iteration whose steps cross a multiple of k (:func:`crossed`), so that a vector
step of N envs never skips one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dqnkit import schedules
from dqnkit.agent import DQNAgent, LearnStats
from dqnkit.config import Config
from dqnkit.errors import ConfigError, first_line
from dqnkit.pqn import PQNAgent, Rollout
from dqnkit.replay import FrameReplay, PrioritizedFrameReplay, PrioritizedReplay, UniformReplay

Storage = UniformReplay | FrameReplay | Rollout  # what the loop's transitions go to (add_step)


def crossed(prev: int, now: int, every: int) -> int:
    """How many multiples of ``every`` lie in (prev, now]: events due this iteration."""
    return now // every - prev // every if every > 0 else 0


def epsilon(config: Config, step: int, updates: int) -> float:
    """Exploration rate now: linear in env steps, or exponential in gradient steps."""
    start, end = config.epsilon_range
    if config.eps_schedule == "exponential":
        return schedules.exponential(start, end, config.eps_decay, updates)
    return schedules.linear(start, end, config.exploration_duration, step)


def per_beta(config: Config, step: int) -> float:
    """Prioritized replay's importance-sampling exponent now: ``per_beta`` -> ``per_beta_final``
    over ``per_beta_steps`` env steps (default: the whole run)."""
    return schedules.linear(config.per_beta, config.per_beta_final, config.per_beta_steps or config.total_steps, step)


class DQN:
    """Replay, ``gradient_steps`` updates every ``train_freq`` steps once ``learning_starts``
    are in, and the target refreshed every ``target_update_interval`` steps."""

    agent_class: type[DQNAgent] = DQNAgent
    keeps_replay = True  # checkpoints keep its storage as replay_checkpoint says; load_replay reads it

    def __init__(self, config: Config) -> None:
        self.config = config
        self._copied_at: int | None = None  # the agent's update count at its last hard target copy

    # ------------------------------------------------------------------ when
    def epsilon(self, step: int, updates: int) -> float:
        """Exploration rate after ``step`` steps and ``updates`` updates (:func:`epsilon`)."""
        return epsilon(self.config, step, updates)

    def evaluation_due(self, prev: int, now: int) -> bool:
        """A greedy evaluation every ``eval_every`` steps (never for 0)."""
        return crossed(prev, now, self.config.eval_every) > 0

    def checkpoint_due(self, prev: int, now: int) -> bool:
        """A checkpoint every ``checkpoint_interval`` steps; the run's last is written as it ends."""
        return crossed(prev, now, self.config.checkpoint_interval) > 0 and now < self.config.total_steps

    def updates_due(self, prev: int, now: int) -> int:
        """Updates due in the steps (prev, now] (none before ``learning_starts``)."""
        cfg = self.config
        return crossed(prev, now, cfg.train_freq) * cfg.gradient_steps if now >= cfg.learning_starts else 0

    def updates_owed(self, step: int, updates: int) -> float:
        """Updates a learner that ran ``updates`` is behind after ``step`` steps, at the same
        replay ratio (Ape-X's learner, which cannot count iterations, keeps to it so)."""
        cfg = self.config
        if step < cfg.learning_starts:
            return 0.0
        return max(0.0, (step - cfg.learning_starts) * cfg.gradient_steps / cfg.train_freq - updates)

    def target_syncs_due(self, prev: int, now: int) -> int:
        """Target updates due in (prev, now]: repeated hard copies are one copy."""
        due = crossed(prev, now, self.config.target_update_interval)
        return min(due, 1) if self.config.tau == 0 else due

    def target_sync_after(self, updates: int) -> bool:
        """Whether the target refreshes after update number ``updates``, counted in updates
        instead of steps: as many updates apart as the loop makes between two refreshes."""
        cfg = self.config
        apart = max(1, round(cfg.target_update_interval * cfg.gradient_steps / cfg.train_freq))
        return cfg.tau > 0 or updates % apart == 0

    # ------------------------------------------------------------------ what
    def storage(self, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> Storage:
        """Where transitions go: the replay :func:`build_replay` builds."""
        return build_replay(self.config, obs_shape, obs_dtype)

    def learn(self, agent: DQNAgent, replay: Storage, prev: int, now: int, hold: int = 0) -> Iterator[LearnStats]:
        """The updates due in the steps (prev, now], each sampled, learned and its |TD errors|
        handed back to the replay (a no-op for uniform replay), then the target updates due.
        ``hold``: no updates before this step (a resumed run's emptied replay refills)."""
        if now < hold:
            return
        beta = per_beta(self.config, now)
        for _ in range(self.updates_due(prev, now)):
            batch = replay.sample(self.config.batch_size, beta)
            stats = agent.learn(batch)
            replay.update_priorities(batch.indices, stats.td_abs)
            yield stats
        if now >= self.config.learning_starts:
            for _ in range(self.target_syncs_due(prev, now)):
                self._sync_target(agent)

    def _sync_target(self, agent: DQNAgent) -> None:
        """Refresh the target. A hard copy with no update since the last one would copy the
        same weights: skipped (rl-zoo's CartPole refreshes every 10 steps but learns every 256:
        24 of 25 copies are due between two bursts of updates). A noisy net's noise, which a
        copy would take along, is drawn again before the target's is ever read."""
        if self.config.tau == 0:
            if agent.updates == self._copied_at:
                return
            self._copied_at = agent.updates
        agent.update_target()


class PQN(DQN):
    """No replay and no target: a rollout of ``rollout_steps`` vector steps, learned from
    (``epochs`` x ``minibatches``, Q(lambda) targets) as soon as it is full, then dropped."""

    agent_class: type[PQNAgent] = PQNAgent
    keeps_replay = False  # a rollout is small: checkpoints keep it whole

    def storage(self, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> Storage:
        """Where transitions go: a rollout of ``rollout_steps`` x ``num_envs``."""
        return Rollout(self.config.rollout_steps, self.config.num_envs, obs_shape, obs_dtype)

    def learn(self, agent: PQNAgent, rollout: Storage, prev: int, now: int, hold: int = 0) -> Iterator[LearnStats]:
        """The rollout's learning, once it is full; then the rollout starts again."""
        if rollout.full:
            yield agent.learn_rollout(rollout)
            rollout.clear()


def algorithm(config: Config) -> DQN:
    """The object that knows ``config.algorithm``: :class:`DQN` or :class:`PQN`."""
    return PQN(config) if config.algorithm == "pqn" else DQN(config)


def build_replay(config: Config, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> UniformReplay | FrameReplay:
    """FrameReplay for stacked uint8 frames [S, H, W] (each frame stored once), else the
    record-array replay; prioritized when ``config.prioritized``. Every one takes a vector
    step (``add_step``, n-step folding inside), samples with a beta and takes priorities back."""
    try:
        return _replay(config, obs_shape, obs_dtype)
    except MemoryError as exc:  # numpy asked the kernel for more than it will promise
        why = first_line(exc).split(" for an array")[0] or "out of memory"
        raise ConfigError(f"buffer_size {config.buffer_size:,}: {why}; lower buffer_size") from None


def _replay(config: Config, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> UniformReplay | FrameReplay:
    per = dict(alpha=config.per_alpha, beta=config.per_beta, eps=config.per_eps)
    steps = dict(num_envs=config.num_envs, n_step=config.n_step, gamma=config.gamma)
    seed = config.seed + 1
    if stores_frames(obs_shape, obs_dtype, config):
        if config.prioritized:
            return PrioritizedFrameReplay(config.buffer_size, obs_shape[1:], obs_shape[0], seed, **steps, **per)
        return FrameReplay(config.buffer_size, obs_shape[1:], obs_shape[0], seed, **steps)
    if config.prioritized:
        return PrioritizedReplay(config.buffer_size, obs_shape, obs_dtype, seed=seed, **steps, **per)
    return UniformReplay(config.buffer_size, obs_shape, obs_dtype, seed=seed, **steps)


def stores_frames(obs_shape: tuple[int, ...], obs_dtype: np.dtype, config: Config) -> bool:
    """Stacked uint8 frames [S, H, W] (Atari's, the pixel path's): the replay keeps each
    frame once (FrameReplay). See :meth:`dqnkit.envs.EnvMaker.stores_frames`."""
    from dqnkit.envs import EnvMaker  # envs imports gymnasium, which the algorithms need not

    return EnvMaker.from_config(config).stores_frames(obs_shape, obs_dtype)
