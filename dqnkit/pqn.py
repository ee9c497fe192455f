"""PQN: parallel Q-learning without replay or target network (Gallici et al. 2025,
https://arxiv.org/abs/2407.04811).

The training loop of :mod:`dqnkit.training` collects ``rollout_steps`` vector steps from
``num_envs`` envs into a :class:`Rollout` (epsilon-greedy, as for DQN). When it is full,
:meth:`PQNAgent.learn_rollout` computes the Q(lambda) returns of every transition once,
learns from them for ``update_epochs`` passes of ``num_minibatches`` minibatches (RAdam,
global-norm clipping), and the rollout is dropped. Many envs decorrelate the data that a
replay buffer would otherwise have to; LayerNorm (``layer_norm=true``) keeps the
bootstrapped targets from diverging without a frozen target network.

Shape legend: T rollout steps, N envs, M transitions of a minibatch, A actions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dqnkit import schedules
from dqnkit.agent import LearnStats, QAgent
from dqnkit.config import Config


def lambda_returns(
    rewards_TN: torch.Tensor,
    terminated_TN: torch.Tensor,
    truncated_TN: torch.Tensor,
    next_values_TN: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Q(lambda) returns G [T, N] of a rollout, computed backwards from its last step.

    ``next_values_TN`` is max_a Q(s'_t, a) of the observation each transition really led to
    (at a truncation, the episode's final observation, not the reset one). Then
        G_t = r_t                                         the episode terminated at t
        G_t = r_t + gamma * v_t                           truncated at t, or t is the last step
        G_t = r_t + gamma * ((1 - lam) * v_t + lam * G_{t+1})   otherwise.
    lam = 0 gives the one-step Q-learning target; lam = 1 the discounted return up to the
    cut (termination, truncation or the rollout's end), bootstrapped at a truncation or end.
    """
    alive_TN = (~terminated_TN).to(rewards_TN.dtype)
    # where the next step belongs to the same episode, the lambda chain continues through it
    chained_TN = (~(terminated_TN | truncated_TN)).to(rewards_TN.dtype)
    returns_TN = torch.empty_like(rewards_TN)
    following_N = next_values_TN[-1]  # past the last step: bootstrap only
    for t in range(len(rewards_TN) - 1, -1, -1):
        v_N = next_values_TN[t]
        mixed_N = v_N + chained_TN[t] * lam * (following_N - v_N)  # (1-lam) v + lam G, or v if cut
        returns_TN[t] = rewards_TN[t] + gamma * alive_TN[t] * mixed_N
        following_N = returns_TN[t]
    return returns_TN


class Rollout:
    """The transitions of one rollout, [T, N] each, written one vector step at a time.

    ``add_step`` is the replay's (:class:`dqnkit.replay.UniformReplay`), so the training loop
    stores a step the same way whatever the algorithm. ``next_obs`` holds the observation
    each transition really led to (``final_obs`` where an episode ended).
    """

    def __init__(self, steps: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> None:
        self.steps = steps
        self.obs = np.zeros((steps, num_envs, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros_like(self.obs)
        self.actions = np.zeros((steps, num_envs), dtype=np.int64)
        self.rewards = np.zeros((steps, num_envs), dtype=np.float32)
        self.terminated = np.zeros((steps, num_envs), dtype=bool)
        self.truncated = np.zeros((steps, num_envs), dtype=bool)
        self.t = 0  # vector steps written

    _COLUMNS = ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")

    def add_step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Write one vector step ([N] each, [N, *obs] observations)."""
        if self.full:
            raise RuntimeError("the rollout is full: learn from it and clear it first")
        t = self.t
        self.obs[t], self.next_obs[t], self.actions[t] = obs, next_obs, actions
        self.rewards[t], self.terminated[t], self.truncated[t] = rewards, terminated, truncated
        self.t += 1

    @property
    def full(self) -> bool:
        """All ``steps`` vector steps are written: time to learn."""
        return self.t == self.steps

    def clear(self) -> None:
        """Drop the rollout (its arrays are overwritten by the next one)."""
        self.t = 0

    def state_dict(self) -> dict[str, Any]:
        """The steps written so far: a run checkpointed mid-rollout resumes it exactly."""
        return {"t": self.t, **{name: getattr(self, name)[: self.t].copy() for name in self._COLUMNS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content (shapes must match this rollout's)."""
        t = int(state["t"])
        if t > self.steps:
            raise ValueError(f"checkpoint rollout holds {t} steps, this one {self.steps}")
        for name in self._COLUMNS:
            column = getattr(self, name)
            if state[name].shape[1:] != column.shape[1:]:
                raise ValueError(f"rollout {name} has shape {state[name].shape[1:]}, expected {column.shape[1:]}")
            column[:t] = state[name]
        self.t = t


class PQNAgent(QAgent):
    """A Q-network trained by RAdam on rollouts; acting and evaluation as :class:`QAgent`.

    No target network: the Q(lambda) targets of a rollout are computed once, by the network
    as it was when the rollout ended, and held fixed for its epochs.
    """

    def __init__(
        self,
        q_net: nn.Module,
        obs_shape: tuple[int, ...],
        n_actions: int,
        config: Config,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(q_net, obs_shape, n_actions, config, device)
        self.shuffle = np.random.default_rng([config.seed, 3])  # minibatch order only
        self.rollouts = 0  # rollouts learned from

    def _build_optimizer(self) -> torch.optim.RAdam:
        # foreach: one multi-tensor kernel per operation; the default per-parameter loop is
        # about 4x slower for a small MLP on this CPU (measured).
        return torch.optim.RAdam(self.q_net.parameters(), lr=self.config.lr, eps=self.config.adam_eps, foreach=True)

    def learning_rate(self) -> float:
        """``lr``, or with ``anneal_lr`` lowered linearly to 0 over the run's rollouts."""
        cfg = self.config
        if not cfg.anneal_lr:
            return cfg.lr
        return schedules.linear(cfg.lr, 0.0, cfg.total_steps // cfg.rollout_size, self.rollouts)

    def learn_rollout(self, rollout: Rollout) -> LearnStats:
        """Q(lambda) targets of the full ``rollout``, then ``update_epochs`` x
        ``num_minibatches`` gradient steps. Loss and mean Q are averaged over the minibatches;
        ``td_abs`` is the last minibatch's (PQN has no priorities to feed)."""
        cfg = self.config
        obs_B = self._tensor(rollout.obs).flatten(0, 1)  # B = T * N
        actions_B = self._tensor(rollout.actions).flatten()
        with torch.no_grad():
            next_q = self.q_net(self._tensor(rollout.next_obs).flatten(0, 1))
            next_values_TN = next_q.max(dim=1).values.view(rollout.actions.shape)
            returns_B = lambda_returns(
                self._tensor(rollout.rewards),
                self._tensor(rollout.terminated),
                self._tensor(rollout.truncated),
                next_values_TN,
                cfg.gamma,
                cfg.q_lambda,
            ).flatten()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        size = len(actions_B) // cfg.num_minibatches
        loss_sum, q_sum = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for _ in range(cfg.update_epochs):
            order = self._tensor(self.shuffle.permutation(len(actions_B)))
            for start in range(0, len(actions_B), size):
                idx_M = order[start : start + size]
                stats = self._step(obs_B[idx_M], actions_B[idx_M], returns_B[idx_M])
                loss_sum, q_sum = loss_sum + stats.loss, q_sum + stats.q_mean
        self.rollouts += 1
        n = cfg.update_epochs * cfg.num_minibatches
        return stats._replace(loss=loss_sum / n, q_mean=q_sum / n)

    def _step(self, obs_M: torch.Tensor, actions_M: torch.Tensor, returns_M: torch.Tensor) -> LearnStats:
        """One gradient step of Q(s, a) towards the fixed lambda-returns."""
        q_M = self.q_net(obs_M).gather(1, actions_M[:, None]).squeeze(1)
        td_M = returns_M - q_M
        loss_fn = F.mse_loss if self.config.loss == "mse" else F.smooth_l1_loss
        loss = loss_fn(q_M, returns_M)
        self._descend(loss)
        self.updates += 1
        return LearnStats(loss.detach(), td_M.detach().abs(), q_M.detach().mean())

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Network, optimizer, both RNGs and the counters: all a resume needs."""
        return {
            "q_net": self.q_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.draws.state_dict(),
            "shuffle": self.shuffle.bit_generator.state,
            "updates": self.updates,
            "rollouts": self.rollouts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content onto this agent's device."""
        self.q_net.load_state_dict(state["q_net"])
        self._load_optimizer(state["optimizer"])
        self.draws.load_state_dict(state["rng"])
        self.shuffle.bit_generator.state = state["shuffle"]
        self.updates, self.rollouts = int(state["updates"]), int(state["rollouts"])
