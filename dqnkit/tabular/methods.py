"""SARSA, Q-learning and Expected SARSA (control) and n-step TD (prediction).

Control runs all seeds at once: ``Q[seed, state, action]``, one numpy step for every seed.
The three methods differ in one line, the value they bootstrap from (:func:`_bootstrap`).
Legend: K seeds, S states, A actions, E episodes.
"""

from __future__ import annotations

import numpy as np

from dqnkit.tabular.envs import TabularMDP

METHODS = ("sarsa", "q_learning", "expected_sarsa")


def _epsilon_greedy(q_KA: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """One action per seed; ties among greedy actions broken at random. [K]"""
    k, n_a = q_KA.shape
    is_best = q_KA == q_KA.max(axis=1, keepdims=True)
    greedy = (rng.random((k, n_a)) * is_best).argmax(axis=1)  # random tie-break
    return np.where(rng.random(k) < epsilon, rng.integers(0, n_a, k), greedy)


def _bootstrap(method: str, q_next_KA: np.ndarray, next_action_K: np.ndarray, epsilon: float) -> np.ndarray:
    """The value of the next state each method learns from. [K]"""
    if method == "sarsa":  # the action actually taken next (on-policy)
        return q_next_KA[np.arange(len(q_next_KA)), next_action_K]
    if method == "q_learning":  # the greedy action (off-policy)
        return q_next_KA.max(axis=1)
    # expected SARSA: the expectation under epsilon-greedy, (1 - eps) max + eps mean
    return (1 - epsilon) * q_next_KA.max(axis=1) + epsilon * q_next_KA.mean(axis=1)


def td_control(
    mdp: TabularMDP,
    method: str,
    episodes: int = 500,
    alpha: float = 0.5,
    epsilon: float = 0.1,
    gamma: float = 1.0,
    seeds: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Train ``seeds`` independent learners; returns Q [K, S, A] and episode returns [K, E]."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    rng = np.random.default_rng(seed)
    q = np.zeros((seeds, mdp.n_states, mdp.n_actions))
    returns = np.zeros((seeds, episodes))
    seed_idx = np.arange(seeds)
    episode = np.zeros(seeds, np.int64)  # current episode of each seed
    state = np.full(seeds, mdp.start)
    action = _epsilon_greedy(q[seed_idx, state], epsilon, rng)
    active = episode < episodes
    while active.any():
        k = seed_idx[active]
        s, a = state[k], action[k]
        s2, r, done = mdp.next_state[s, a], mdp.reward[s, a], mdp.terminal[s, a]
        a2 = _epsilon_greedy(q[k, s2], epsilon, rng)
        target = r + gamma * _bootstrap(method, q[k, s2], a2, epsilon) * ~done
        q[k, s, a] += alpha * (target - q[k, s, a])
        returns[k, episode[k]] += r
        # seeds whose episode ended start the next one from the start state
        episode[k] += done
        s2 = np.where(done, mdp.start, s2)
        a2 = np.where(done, _epsilon_greedy(q[k, s2], epsilon, rng), a2)
        state[k], action[k] = s2, a2
        active = episode < episodes
    return q, returns


def greedy_path(mdp: TabularMDP, q_SA: np.ndarray, max_steps: int = 200) -> tuple[list[int], float]:
    """States visited and return collected by the greedy policy of ``q_SA`` from the start.

    A policy that loops forever gets return ``-inf``.
    """
    s, path, total = mdp.start, [mdp.start], 0.0
    for _ in range(max_steps):
        a = int(q_SA[s].argmax())
        total += mdp.reward[s, a]
        done, s = mdp.terminal[s, a], int(mdp.next_state[s, a])
        path.append(s)
        if done:
            return path, total
    return path, float("-inf")


def n_step_td(
    n: int,
    episodes: int = 10,
    alpha: float = 0.1,
    n_states: int = 19,
    gamma: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """n-step TD prediction of the random policy's values on the random walk (S&B 7.1).

    States 1..n_states are non-terminal, 0 and n_states+1 terminal (rewards -1 and +1).
    Returns V of the non-terminal states after ``episodes`` episodes. [n_states]
    """
    rng = rng if rng is not None else np.random.default_rng()
    v = np.zeros(n_states + 2)  # terminals stay 0
    for _ in range(episodes):
        # The walk ignores the agent, so the whole episode can be drawn first.
        states = [(n_states + 1) // 2]
        while 0 < states[-1] < n_states + 1:
            states.append(states[-1] + (1 if rng.random() < 0.5 else -1))
        rewards = np.zeros(len(states))  # rewards[t] is received on arriving in states[t]
        rewards[-1] = 1.0 if states[-1] == n_states + 1 else -1.0
        T = len(states) - 1
        for tau in range(T):  # update the state visited at time tau
            end = min(tau + n, T)
            g = sum(gamma ** (i - tau - 1) * rewards[i] for i in range(tau + 1, end + 1))
            if end < T:
                g += gamma**n * v[states[end]]
            v[states[tau]] += alpha * (g - v[states[tau]])
    return v[1:-1]
