"""Overestimation probe (van Hasselt et al. 2016, fig. 3): what the network predicts for
the start states versus the discounted return the greedy agent really collects from them.

A biased max makes plain DQN's prediction sit above the realised return; Double DQN's
decoupled target brings the two together. Switch it on for any run with
``--set log_overestimation=true``: the eval rows of metrics.csv and TensorBoard then carry
``q_pred`` and ``q_real``. (On time-limited envs the realised return is cut at the limit
while Q bootstraps past it, so a small positive gap remains even for a perfect estimate:
with gamma 0.99 and 500 steps, at most 0.66% of the value.)
"""

from __future__ import annotations

from dqnkit.agent import DQNAgent
from dqnkit.evaluate import EvalResult


def overestimation(agent: DQNAgent, result: EvalResult) -> tuple[float, float]:
    """(mean predicted max_a Q(s_0, a), mean realised discounted return) over the episodes."""
    with agent.evaluation():
        predicted = agent.q_values(result.start_obs).max(axis=1).mean()
    return float(predicted), float(result.discounted.mean())
