"""What a run checks of its own numbers: the non-finite checks that stop it (a loss, a
reward, an observation), and the overestimation probe.

Overestimation probe (van Hasselt et al. 2016, fig. 3): what the network predicts for
the start states versus the discounted return the greedy agent really collects from them.

A biased max makes plain DQN's prediction sit above the realised return; Double DQN's
decoupled target brings the two together. Switch it on for any run with
``--set log_overestimation=true``: the eval rows of metrics.csv and TensorBoard then carry
``q_pred`` and ``q_real``. (On time-limited envs the realised return is cut at the limit
while Q bootstraps past it, so a small positive gap remains even for a perfect estimate:
with gamma 0.99 and 500 steps, at most 0.66% of the value.)
"""

from __future__ import annotations

import numpy as np
import torch

from dqnkit.agent import DQNAgent
from dqnkit.errors import NonFiniteError
from dqnkit.evaluate import EvalResult


def overestimation(agent: DQNAgent, result: EvalResult) -> tuple[float, float]:
    """(mean predicted max_a Q(s_0, a), mean realised discounted return) over the episodes."""
    with agent.evaluation():
        predicted = agent.q_values(result.start_obs).max(axis=1).mean()
    return float(predicted), float(result.discounted.mean())


def check_loss(loss_sum: torch.Tensor, step: int) -> None:
    """A non-finite loss stops the run with a named error (the last checkpoint stays)."""
    if not torch.isfinite(loss_sum):
        raise NonFiniteError(
            f"non-finite loss by step {step} (try a lower lr or max_grad_norm); the last checkpoint is kept"
        )


def check_transition(rewards: np.ndarray, next_obs: np.ndarray, step: int) -> None:
    """Non-finite rewards or observations stop the run before they reach the replay."""
    if not np.isfinite(rewards).all():
        raise NonFiniteError(f"non-finite reward {rewards.tolist()} at step {step}; the last checkpoint is kept")
    if next_obs.dtype.kind == "f" and not np.isfinite(next_obs).all():
        raise NonFiniteError(f"non-finite observation at step {step}; the last checkpoint is kept")
