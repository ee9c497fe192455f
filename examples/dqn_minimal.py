"""DQN on CartPole-v1 on one screen, built from dqnkit's pieces (CleanRL style).

    python examples/dqn_minimal.py [total_steps]

The real loop (dqnkit/training.py) adds vector envs, evaluation, logging, checkpoints and
exact resume around exactly these steps.
"""

import sys

import numpy as np
import torch

from dqnkit import presets
from dqnkit.agent import DQNAgent
from dqnkit.algorithms import epsilon
from dqnkit.envs import make_vec_env
from dqnkit.networks import build_q_network
from dqnkit.replay import UniformReplay
from dqnkit.vector import true_next_obs

cfg = presets.get("cartpole", total_steps=int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
torch.set_num_threads(cfg.num_threads)  # one thread is fastest for a small MLP (measured)
torch.manual_seed(cfg.seed)
envs = make_vec_env(cfg.env_id, num_envs=1)  # SAME_STEP autoreset: see true_next_obs
obs_shape, n_actions = envs.single_observation_space.shape, int(envs.single_action_space.n)
agent = DQNAgent(build_q_network(obs_shape, n_actions, cfg.hidden_sizes), obs_shape, n_actions, cfg)
replay = UniformReplay(cfg.buffer_size, obs_shape, seed=cfg.seed)

obs, _ = envs.reset(seed=cfg.seed)
episode_return, returns = 0.0, []
for step in range(1, cfg.total_steps + 1):
    # 1. act epsilon-greedily
    action = agent.act(obs, epsilon(cfg, step, agent.updates))
    next_obs, reward, terminated, truncated, info = envs.step(action)
    # 2. store the real transition: the true last obs of a truncated episode, and
    #    `terminated` alone (a time limit is not a terminal state: keep bootstrapping)
    replay.add_batch(obs, action, reward, true_next_obs(next_obs, info), terminated)
    obs = next_obs
    episode_return += float(reward[0])
    if terminated[0] or truncated[0]:
        returns.append(episode_return)
        episode_return = 0.0
    # 3. learn from a random minibatch; 4. refresh the frozen target network
    if step >= cfg.learning_starts and step % cfg.train_freq == 0:
        for _ in range(cfg.gradient_steps):
            agent.learn(replay.sample(cfg.batch_size))
    if step >= cfg.learning_starts and step % cfg.target_update_interval == 0:
        agent.update_target()
    if (step % 5000 == 0 or step == cfg.total_steps) and returns:
        print(f"step {step:6d}  episodes {len(returns):4d}  mean return (last 20) {np.mean(returns[-20:]):6.1f}")
