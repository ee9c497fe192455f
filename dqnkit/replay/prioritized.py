"""Proportional prioritized replay (Schaul et al. 2016, https://arxiv.org/abs/1511.05952).

P(i) = p_i^alpha / sum_k p_k^alpha with p_i = |TD error| + eps; a batch is drawn by
stratified sampling (one prefix sum per equal slice of the total), and each sample carries
the importance-sampling weight (N * P(i))^-beta, divided by the batch's largest weight.
The lesson's version normalises all N priorities on every sample (O(N)); here sampling and
updating cost O(B log N) on a :class:`SumTree`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dqnkit.replay.sumtree import SumTree
from dqnkit.replay.uniform import Batch, UniformReplay


def to_host(values: Any) -> np.ndarray:
    """``values`` as a numpy array; a torch tensor (the update's TD errors) is copied from its
    device here, so only prioritized replay ever pays for that copy."""
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


class Priorities:
    """The sum tree and the rules of proportional PER, shared by every prioritized buffer.

    Slots with priority 0 are never drawn: buffers use that for slots that hold no
    sampleable transition.
    """

    def __init__(self, capacity: int, alpha: float, beta: float, eps: float) -> None:
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.tree = SumTree(capacity)
        self.max_priority = 1.0  # new transitions enter with the largest priority seen

    def set(self, idx: np.ndarray, value: float) -> None:
        """Set the priority of slots ``idx`` to ``value`` (0 takes them out of sampling)."""
        self.tree.update(idx, np.full(len(idx), value))

    def set_max(self, idx: np.ndarray) -> None:
        """Give slots ``idx`` the largest priority seen so far (new transitions)."""
        self.set(idx, self.max_priority**self.alpha)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Stratified proportional draw: (slots [B], IS weights [B] with max 1)."""
        total = self.tree.total
        if total <= 0:
            raise ValueError("cannot sample from an empty replay buffer")
        u = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        idx = self.tree.find(u)  # never a zero-width leaf, even where rounding puts u at a slice edge
        weights = (self.tree[idx] / total) ** -self.beta  # N cancels in the normalisation
        return idx, (weights / weights.max()).astype(np.float32)

    def update(self, idx: np.ndarray, td_errors: Any) -> None:
        """New priorities |td| + eps (duplicates: the last one wins). ``td_errors``: numpy, or
        the update's torch tensor, copied to the host here (only prioritized replay needs it)."""
        if len(idx) == 0:
            return
        priorities = np.abs(to_host(td_errors).astype(np.float64)) + self.eps
        self.tree.update(idx, priorities**self.alpha)
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def state_dict(self) -> dict[str, Any]:
        """The sum tree's nodes and the largest priority seen."""
        return {"tree": self.tree.nodes.copy(), "max_priority": self.max_priority}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content."""
        if state["tree"].shape != self.tree.nodes.shape:
            raise ValueError("replay state does not match this buffer's capacity")
        self.tree.nodes[:] = state["tree"]
        self.max_priority = float(state["max_priority"])


class PrioritizedReplay(UniformReplay):
    """A :class:`UniformReplay` whose ``sample`` follows priorities kept in a sum tree."""

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: Any = np.float32,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
        seed: int = 0,
        *,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
    ) -> None:
        super().__init__(capacity, obs_shape, obs_dtype, seed, num_envs=num_envs, n_step=n_step, gamma=gamma)
        self.priorities = Priorities(capacity, alpha, beta, eps)

    # the PER parameters read and set on the buffer, as the lesson's API does
    tree = property(lambda self: self.priorities.tree)
    max_priority = property(lambda self: self.priorities.max_priority)
    alpha = property(lambda self: self.priorities.alpha)
    beta = property(lambda self: self.priorities.beta, lambda self, value: setattr(self.priorities, "beta", value))

    def add_batch(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        horizons: np.ndarray | None = None,
    ) -> np.ndarray:
        """Store N transitions at the largest priority seen; returns their slots."""
        slots = super().add_batch(obs, actions, rewards, next_obs, terminated, horizons)
        self.priorities.set_max(slots)
        return slots

    def sample(self, batch_size: int, beta: float | None = None) -> Batch:
        """Stratified proportional sample with IS weights (max weight in the batch = 1),
        corrected with ``beta`` (default: the last one given)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if beta is not None:
            self.priorities.beta = beta
        return self._gather(*self.priorities.sample(batch_size, self.rng))

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities |td| + eps for sampled slots (duplicates: the last one wins)."""
        self.priorities.update(indices, td_errors)

    def state_dict(self, rows: bool = True) -> dict[str, Any]:
        """The transitions (unless ``rows=False``) plus the sum tree."""
        return {**super().state_dict(rows), **self.priorities.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content."""
        super().load_state_dict(state)
        self.priorities.load_state_dict(state)
