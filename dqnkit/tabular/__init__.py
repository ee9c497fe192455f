"""Tabular TD methods, the ancestors of DQN: SARSA, Q-learning, Expected SARSA on
CliffWalking and n-step TD prediction on the 19-state random walk (Sutton & Barto ch. 6-7)."""

from dqnkit.tabular.envs import TabularMDP, cliff_walking, random_walk_values
from dqnkit.tabular.methods import greedy_path, n_step_td, td_control

__all__ = ["TabularMDP", "cliff_walking", "greedy_path", "n_step_td", "random_walk_values", "td_control"]
