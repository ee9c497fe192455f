"""Rainbow's parts: the C51 projection and the quantile loss against hand computations,
noisy layers, expected Q-values, and each part learning and resuming inside the one agent."""

import numpy as np
import pytest
import torch

from dqnkit import Config, load, presets, resume, train
from dqnkit.agent import DQNAgent
from dqnkit.heads import bootstrap, project_distribution, quantile_huber_loss
from dqnkit.networks import NoisyLinear, build_q_network
from dqnkit.replay.uniform import Batch

SUPPORT = torch.arange(5.0)  # atoms 0, 1, 2, 3, 4


def _project(probs, reward, gamma, terminated):
    atoms = bootstrap(
        torch.tensor([reward]), torch.tensor([float(terminated)]), torch.tensor([gamma]), SUPPORT.expand(1, 5)
    )
    return project_distribution(torch.tensor([probs]), atoms, SUPPORT)[0].tolist()


def test_c51_projection_by_hand():
    # shifted atoms 0.5, 1.0, 1.5, 2.0, 2.5 split between their neighbours (1.0 and 2.0 land exactly)
    got = _project([0.1, 0.2, 0.3, 0.4, 0.0], 0.5, 0.5, False)
    assert got == pytest.approx([0.05, 0.4, 0.55, 0.0, 0.0])


def test_c51_projection_clips_at_the_edges():
    assert _project([0.2] * 5, 10.0, 0.9, False) == pytest.approx([0, 0, 0, 0, 1])
    assert _project([0.2] * 5, -10.0, 0.9, False) == pytest.approx([1, 0, 0, 0, 0])
    assert _project([0.2] * 5, 4.0, 1.0, False) == pytest.approx([0, 0, 0, 0, 1])  # 4..8 clipped to the top atom


def test_c51_projection_of_a_terminal_transition_is_the_reward():
    # no bootstrap: every atom collapses onto r = 2.3, split 0.7 / 0.3 between atoms 2 and 3
    assert _project([0.1, 0.2, 0.3, 0.4, 0.0], 2.3, 0.99, True) == pytest.approx([0, 0, 0.7, 0.3, 0])


@pytest.mark.parametrize(
    "v_min, v_max, k", [(-10.0, 200.0, 51), (-5.0, 100.0, 101), (-10.0, 10.0, 51), (-3.3, 21.0, 33), (0.0, 1.0, 2)]
)
def test_c51_projection_indexes_inside_the_support_and_keeps_mass_on_its_atoms(v_min, v_max, k):
    # (-10, 200, 51): (z - v_min) / delta gives 50.000004 at the top atom in float32, whose ceil
    # indexed one past the support (the CUDA device-side assert of issue 14)
    support = torch.linspace(v_min, v_max, k)
    probs = torch.softmax(torch.randn(3, k, generator=torch.Generator().manual_seed(0)), dim=1)
    same = project_distribution(probs, support.expand(3, k), support)  # r = 0, gamma^k = 1: atoms on the support
    assert torch.equal(same, probs)
    for shift in (v_max - v_min, -(v_max - v_min), 0.37, 1e-6):  # far past both edges, between atoms, a hair off
        projected = project_distribution(probs, support.expand(3, k) + shift, support)
        assert torch.allclose(projected.sum(dim=1), torch.ones(3))
        assert (projected >= 0).all()


def test_quantile_huber_loss_closed_form():
    # quantiles 0, 1 at tau 1/4, 3/4; targets 0.5, 3; kappa 1 (worked in the comment of the test file)
    # u = [[0.5, 3], [-0.5, 2]], Huber = [[0.125, 2.5], [0.125, 1.5]], weights [[.25, .25], [.25, .75]]
    loss = quantile_huber_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 3.0]]), kappa=1.0)
    assert loss.item() == pytest.approx((0.25 * 0.125 + 0.25 * 2.5) / 2 + (0.25 * 0.125 + 0.75 * 1.5) / 2)


def test_quantile_loss_is_minimised_at_the_quantiles():
    targets = torch.randn(1, 2000)
    true_q = torch.quantile(targets[0], torch.tensor([0.25, 0.75]))
    best = quantile_huber_loss(true_q[None], targets, kappa=1e-3)
    assert (quantile_huber_loss(true_q[None] + 0.1, targets, kappa=1e-3) > best).item()
    assert (quantile_huber_loss(true_q[None] - 0.1, targets, kappa=1e-3) > best).item()


def test_noisy_layer_resamples_and_is_deterministic_under_a_seed():
    torch.manual_seed(0)
    layer = NoisyLinear(4, 3)
    x = torch.ones(2, 4)
    gen = torch.Generator().manual_seed(5)
    layer.reset_noise(gen)
    first = layer(x)
    layer.reset_noise(gen)
    assert not torch.equal(first, layer(x))  # new noise, new output
    gen2 = torch.Generator().manual_seed(5)
    layer.reset_noise(gen2)
    assert torch.equal(first, layer(x))  # same seed, same noise
    layer.eval()
    mean = layer(x)
    layer.reset_noise(gen)
    assert torch.equal(mean, layer(x))  # eval mode ignores the noise


def test_noisy_network_replaces_every_linear_layer():
    net = build_q_network((4,), 2, (16, 16), dueling=True, atoms=51, noisy=True)
    assert not any(type(m) is torch.nn.Linear for m in net.modules())
    assert net(torch.zeros(3, 4)).shape == (3, 2, 51)


def test_noisy_config_turns_epsilon_off_unless_it_is_set():
    assert Config(noisy=True).epsilon_range == (0.0, 0.0)
    assert Config(noisy=True, eps_start=0.5).epsilon_range == (0.5, 0.05)
    assert Config().epsilon_range == (1.0, 0.05)


def _agent(**overrides) -> DQNAgent:
    cfg = Config(hidden_sizes=(32,), lr=1e-2, gamma=0.9, **overrides)
    atoms = 1 if cfg.distributional == "none" else cfg.n_atoms
    torch.manual_seed(0)
    net = build_q_network((3,), 2, cfg.hidden_sizes, dueling=cfg.dueling, atoms=atoms, noisy=cfg.noisy)
    return DQNAgent(net, (3,), 2, cfg)


@pytest.mark.parametrize("kind", ["c51", pytest.param("qr", marks=pytest.mark.slow)])
def test_q_values_are_the_expected_value(kind):
    agent = _agent(distributional=kind, n_atoms=11, v_min=-5.0, v_max=5.0)
    obs = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    out = agent.q_net(torch.as_tensor(obs)).detach()
    expected = (out.softmax(2) * agent.support).sum(2) if kind == "c51" else out.mean(2)
    np.testing.assert_allclose(agent.q_values(obs), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["none", "c51", "qr"])
@pytest.mark.parametrize("extras", [{}, {"double": True, "dueling": True, "noisy": True}])
def test_each_head_learns_a_terminal_reward(kind, extras):
    """A one-step problem: action 0 pays 1, action 1 pays -1, then the episode ends."""
    agent = _agent(distributional=kind, n_atoms=21, v_min=-2.0, v_max=2.0, **extras)
    rng = np.random.default_rng(0)
    for _ in range(300):
        obs = rng.standard_normal((32, 3)).astype(np.float32)
        actions = rng.integers(0, 2, 32)
        rewards = np.where(actions == 0, 1.0, -1.0).astype(np.float32)
        batch = Batch(
            obs,
            actions,
            rewards,
            obs,
            np.ones(32, np.float32),
            np.ones(32, np.int64),
            np.ones(32, np.float32),
            np.arange(32),
        )
        stats = agent.learn(batch)
    assert stats.td_abs.shape == (32,) and (stats.td_abs >= 0).all()
    with agent.evaluation():
        q = agent.q_values(rng.standard_normal((64, 3)).astype(np.float32))
    np.testing.assert_allclose(q.mean(axis=0), [1.0, -1.0], atol=0.15)


TINY = dict(
    total_steps=800,
    learning_starts=100,
    batch_size=16,
    buffer_size=1000,
    hidden_sizes=(16, 16),
    eval_every=400,
    eval_episodes=2,
    train_freq=2,
    gradient_steps=1,
    target_update_interval=50,
    stop_at_return=None,
    per_beta_steps=800,
    n_atoms=11,
    v_max=20.0,
)


@pytest.mark.parametrize("kind", ["c51", pytest.param("qr", marks=pytest.mark.slow)])
def test_resume_is_exact_with_noisy_distributional_rainbow(tmp_path, kind):
    extras = dict(TINY, distributional=kind, noisy=True, prioritized=True, n_step=3, dueling=True, double=True)
    train(presets.get("cartpole", **extras), tmp_path / "full")
    train(presets.get("cartpole", **{**extras, "total_steps": 500}), tmp_path / "split")
    resume(tmp_path / "split", total_steps=800)
    probe = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    a, b = load(tmp_path / "full"), load(tmp_path / "split")
    with a.evaluation(), b.evaluation():
        assert np.array_equal(a.q_values(probe), b.q_values(probe))
