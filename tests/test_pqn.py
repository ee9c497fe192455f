"""PQN: its Q(lambda) returns, its rollout, its refusals, exact resume, and that it learns."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from dqnkit import Config, load, presets, resume, train
from dqnkit.build import build_agent
from dqnkit.errors import ConfigError, DqnkitError
from dqnkit.pqn import PQNAgent, Rollout, lambda_returns

GAMMA = 0.9


def _returns(rewards, terminated, truncated, values, lam):
    as_t = lambda a, dtype: torch.tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    return lambda_returns(
        as_t(rewards, torch.float64),
        as_t(terminated, torch.bool),
        as_t(truncated, torch.bool),
        as_t(values, torch.float64),
        GAMMA,
        lam,
    ).numpy()


def test_lambda_returns_match_a_hand_worked_rollout():
    # one env, five steps: the episode terminates at t=1, a new one is truncated at t=3, and
    # a third runs past the rollout's end. v_t is max Q of the observation step t led to.
    rewards = [[1.0], [1.0], [1.0], [1.0], [1.0]]
    terminated = [[False], [True], [False], [False], [False]]
    truncated = [[False], [False], [False], [True], [False]]
    values = [[10.0], [20.0], [30.0], [40.0], [50.0]]
    g4 = 1 + 0.9 * 50  # the rollout's last step: bootstrap only = 46
    g3 = 1 + 0.9 * 40  # truncated: bootstrap from the final observation, no chain = 37
    g2 = 1 + 0.9 * (0.5 * 30 + 0.5 * g3)  # = 31.15
    g1 = 1.0  # terminated: no bootstrap at all
    g0 = 1 + 0.9 * (0.5 * 10 + 0.5 * g1)  # = 5.95
    got = _returns(rewards, terminated, truncated, values, lam=0.5)
    np.testing.assert_allclose(got[:, 0], [g0, g1, g2, g3, g4])
    np.testing.assert_allclose(got[:, 0], [5.95, 1.0, 31.15, 37.0, 46.0])


def _random_rollout(seed, t=9, n=4):
    rng = np.random.default_rng(seed)
    terminated = rng.random((t, n)) < 0.15
    truncated = (rng.random((t, n)) < 0.15) & ~terminated
    return rng.normal(size=(t, n)), terminated, truncated, rng.normal(size=(t, n)) * 5


@pytest.mark.parametrize("seed", range(5))
def test_lambda_zero_is_the_one_step_q_learning_target(seed):
    rewards, terminated, truncated, values = _random_rollout(seed)
    expected = rewards + GAMMA * ~terminated * values
    np.testing.assert_allclose(_returns(rewards, terminated, truncated, values, lam=0.0), expected)


@pytest.mark.parametrize("seed", range(5))
def test_lambda_one_is_the_discounted_return_up_to_the_cut(seed):
    rewards, terminated, truncated, values = _random_rollout(seed)
    t_len, n = rewards.shape
    expected = np.zeros_like(rewards)
    for env in range(n):
        for t in range(t_len):
            total, discount, k = 0.0, 1.0, t
            while True:  # sum rewards forward until the episode or the rollout is cut
                total += discount * rewards[k, env]
                discount *= GAMMA
                if terminated[k, env]:
                    break
                if truncated[k, env] or k == t_len - 1:
                    total += discount * values[k, env]  # bootstrap where cut without termination
                    break
                k += 1
            expected[t, env] = total
    np.testing.assert_allclose(_returns(rewards, terminated, truncated, values, lam=1.0), expected)


def test_rollout_fills_refuses_overflow_and_round_trips_mid_rollout():
    rollout = Rollout(3, 2, (4,), np.dtype(np.float32))
    obs = np.ones((2, 4), np.float32)
    done, not_done = np.array([False, True]), np.zeros(2, bool)
    for t in range(2):
        rollout.add_step(obs * t, np.array([0, 1]), np.array([1.0, 2.0]), obs, done, not_done)
    other = Rollout(3, 2, (4,), np.dtype(np.float32))
    other.load_state_dict(rollout.state_dict())
    assert other.t == 2 and not other.full
    np.testing.assert_array_equal(other.obs[:2], rollout.obs[:2])
    np.testing.assert_array_equal(other.terminated[:2], [[False, True], [False, True]])
    other.add_step(obs, np.array([1, 1]), np.zeros(2), obs, np.zeros(2, bool), np.zeros(2, bool))
    assert other.full
    with pytest.raises(RuntimeError, match="full"):
        other.add_step(obs, np.array([1, 1]), np.zeros(2), obs, np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match="shape"):
        Rollout(3, 5, (4,), np.dtype(np.float32)).load_state_dict(rollout.state_dict())


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "key, value",
    [("buffer_size", 5000), ("prioritized", True), ("target_update_interval", 10), ("double", True), ("n_step", 3)],
)
def test_dqn_keys_are_refused_with_pqn(key, value):
    with pytest.raises(ConfigError, match=f"{key}=.* is a dqn key that algorithm=pqn would ignore"):
        presets.get("pqn-cartpole", **{key: value})


@pytest.mark.parametrize("key, value", [("q_lambda", 0.9), ("rollout_steps", 16), ("anneal_lr", True)])
def test_pqn_keys_are_refused_with_dqn(key, value):
    with pytest.raises(ConfigError, match=f"{key}=.* is a pqn key that algorithm=dqn would ignore"):
        presets.get("cartpole", **{key: value})


def test_a_rollout_that_does_not_split_into_minibatches_is_refused():
    with pytest.raises(ConfigError, match="do not split into num_minibatches=3"):
        presets.get("pqn-cartpole", num_minibatches=3)
    with pytest.raises(ConfigError, match="below one rollout"):
        presets.get("pqn-cartpole", total_steps=100)


def test_cli_refuses_a_dqn_key_with_pqn_in_one_line_with_exit_2(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dqnkit", "train", "--preset", "pqn-cartpole", "--set", "buffer_size=10"]
    proc = subprocess.run([*cmd, "--run-dir", str(run)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "buffer_size" in proc.stderr
    assert not run.exists()


def test_apex_refuses_pqn(tmp_path):
    from dqnkit.distributed import apex

    with pytest.raises(DqnkitError, match="apex distributes DQN"):
        apex.run(presets.get("pqn-cartpole"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ agent and runs
SMALL = dict(
    total_steps=3000,
    num_envs=4,
    rollout_steps=32,
    num_minibatches=4,
    hidden_sizes=(32, 32),
    exploration_steps=1000,
    anneal_lr=False,  # an extended run would anneal differently: resume is compared at equal lr
    eval_every=1000,
    eval_episodes=2,
    stop_at_return=None,
)


def test_agent_state_round_trips_the_optimizer_rngs_and_counters():
    cfg = presets.get("pqn-cartpole", **{**SMALL, "anneal_lr": True})
    agent = build_agent(cfg, (4,), 2)
    rollout = Rollout(cfg.rollout_steps, cfg.num_envs, (4,), np.dtype(np.float32))
    rng = np.random.default_rng(0)
    while not rollout.full:
        obs = rng.normal(size=(4, 4)).astype(np.float32)
        rollout.add_step(obs, agent.act(obs, 0.5), np.ones(4), obs, rng.random(4) < 0.1, np.zeros(4, bool))
    agent.learn_rollout(rollout)
    twin = build_agent(cfg, (4,), 2)
    twin.load_state_dict(agent.state_dict())  # live tensors: the twin must copy, not share, Adam's moments
    assert isinstance(twin, PQNAgent) and twin.rollouts == 1 and twin.updates == 16
    assert twin.learning_rate() == agent.learning_rate() < cfg.lr
    a, b = agent.learn_rollout(rollout), twin.learn_rollout(rollout)
    assert torch.equal(a.loss, b.loss)
    for p, q in zip(agent.q_net.parameters(), twin.q_net.parameters()):
        assert torch.equal(p, q)


def test_resume_mid_rollout_is_bit_identical(tmp_path):
    cfg = presets.get("pqn-cartpole", **SMALL)
    probe = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    train(cfg, tmp_path / "straight")
    # 1400 steps = 350 vector steps: the checkpoint holds a rollout 30 of 32 steps full
    train(cfg.replace(total_steps=1400, checkpoint_every=700), tmp_path / "resumed")
    summary = resume(tmp_path / "resumed", total_steps=3000)
    assert summary["steps"] == 3000
    assert np.array_equal(load(tmp_path / "resumed").q_values(probe), load(tmp_path / "straight").q_values(probe))


@pytest.mark.slow  # learning to a score
def test_pqn_learns_cartpole_and_its_run_loads_for_evaluation(tmp_path):
    summary = train(presets.get("pqn-cartpole", total_steps=40_000, seed=0), tmp_path / "run")
    # random play scores about 22; seeds 0-5 gave 155-388 here at 40k steps: a wide margin
    assert summary["eval_return_mean"] >= 100, summary
    agent = load(tmp_path / "run")
    assert isinstance(agent, PQNAgent) and agent.q_net(torch.zeros(1, 4)).shape == (1, 2)


def test_layer_norm_networks_act_the_same_in_numpy_and_torch():
    agent = build_agent(Config(layer_norm=True, hidden_sizes=(16, 8)), (4,), 3)
    assert agent._numpy_layers and all(norm is not None for _, _, norm in agent._numpy_layers[:-1])
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32) * 3
    np.testing.assert_allclose(agent._numpy_q(obs), agent.q_values(obs), rtol=1e-5, atol=1e-5)


def test_load_replay_of_a_pqn_run_says_it_keeps_none(tmp_path):
    from dqnkit.build import load_replay

    train(presets.get("pqn-cartpole", **{**SMALL, "total_steps": 256, "eval_every": 0}), tmp_path / "run")
    with pytest.raises(DqnkitError, match="pqn run: it learns from short rollouts and keeps no replay"):
        load_replay(tmp_path / "run")
