"""The update without autograd must be the autograd update, bit for bit."""

import numpy as np
import pytest
import torch

from dqnkit import Config
from dqnkit.agent import DQNAgent
from dqnkit.networks import build_q_network
from dqnkit.replay.uniform import Batch


def _net(obs_shape: tuple[int, ...], cfg: Config) -> torch.nn.Module:
    atoms = 1 if cfg.distributional == "none" else cfg.n_atoms
    return build_q_network(
        obs_shape, 3, cfg.hidden_sizes, dueling=cfg.dueling, atoms=atoms, noisy=cfg.noisy, layer_norm=cfg.layer_norm
    )


def _pair(obs_shape: tuple[int, ...] = (5,), **overrides) -> tuple[DQNAgent, DQNAgent]:
    """Two agents with the same initial weights: one with the direct update, one without."""
    agents = []
    for direct in (True, False):
        cfg = Config(**{"hidden_sizes": (32, 24), "direct_update": direct, **overrides})
        torch.manual_seed(0)
        agents.append(DQNAgent(_net(obs_shape, cfg), obs_shape, 3, cfg))
    assert (agents[0]._direct_update is not None) and agents[1]._direct_update is None
    return agents[0], agents[1]


def _batch(rng: np.random.Generator, b: int) -> Batch:
    """Rewards, terminations, n-step horizons and IS weights that all vary."""
    return Batch(
        rng.standard_normal((b, 5)).astype(np.float32),
        rng.integers(0, 3, b),
        rng.standard_normal(b).astype(np.float32),
        rng.standard_normal((b, 5)).astype(np.float32),
        (rng.random(b) < 0.2).astype(np.float32),
        rng.integers(1, 4, b),
        rng.uniform(0.2, 1.0, b).astype(np.float32),
        np.arange(b),
    )


@pytest.mark.parametrize(
    "overrides",
    [
        dict(loss="mse"),
        dict(loss="huber"),
        dict(loss="huber", double=True, max_grad_norm=0.5),
        dict(loss="mse", double=True, gamma=0.9, tau=0.3),
        dict(loss="huber", dueling=True),
        dict(loss="mse", dueling=True, double=True, max_grad_norm=0.5),
        dict(loss="huber", dueling=True, hidden_sizes=(16,)),  # no body: the streams read the obs
        dict(loss="huber", hidden_sizes=(16,)),
        dict(loss="mse", hidden_sizes=(24, 16, 8)),
        dict(distributional="c51", n_atoms=11, v_min=-3.0, v_max=4.0),
        dict(distributional="c51", n_atoms=11, v_min=-3.0, v_max=4.0, dueling=True, double=True, max_grad_norm=0.5),
        dict(distributional="qr", n_atoms=8),
        dict(distributional="qr", n_atoms=8, qr_kappa=0.7, dueling=True, double=True, max_grad_norm=0.5),
        dict(noisy=True),
        dict(noisy=True, dueling=True, double=True, distributional="c51", n_atoms=11, v_max=4.0, n_step=3),
    ],
    ids=[
        "mse",
        "huber",
        "huber-double-clip",
        "mse-double-soft",
        "dueling",
        "dueling-double-clip",
        "dueling-no-body",
        "one-layer",
        "three-layers",
        "c51",
        "c51-dueling-double-clip",
        "qr",
        "qr-kappa-dueling-double-clip",
        "noisy",
        "rainbow",
    ],
)
@pytest.mark.parametrize("batch_size", [64, 37])
def test_direct_update_is_the_autograd_update_bit_for_bit(overrides, batch_size):
    direct, eager = _pair(lr=3e-3, **overrides)
    rng = np.random.default_rng(1)
    for i in range(40):
        batch = _batch(rng, batch_size)
        got, want = direct.learn(batch), eager.learn(batch)
        for name in ("loss", "td_abs", "q_mean"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (i, name)
        if i % 10 == 9:
            direct.update_target(), eager.update_target()
    for p, q in zip(direct.q_net.parameters(), eager.q_net.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
    for p, q in zip(direct.q_net.parameters(), eager.q_net.parameters()):
        for key, value in direct.optimizer.state[p].items():
            assert torch.equal(value, eager.optimizer.state[q][key])


def test_direct_update_learns():
    """Not only equal to autograd on random data: it fits a regression target."""
    direct, _ = _pair(lr=1e-2, loss="mse")
    rng = np.random.default_rng(0)
    batch = _batch(rng, 32)._replace(terminated=np.ones(32, np.float32), weights=np.ones(32, np.float32))
    first = direct.learn(batch).loss.item()
    for _ in range(300):
        last = direct.learn(batch).loss.item()
    assert last < 0.05 * first


def test_a_registered_hook_sends_the_update_through_autograd():
    direct, _ = _pair()
    batch = _batch(np.random.default_rng(0), 16)
    seen = []
    handle = direct.q_net.body[0].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    direct.learn(batch)
    assert (16, 32) in seen  # the update's forward ran through the module
    handle.remove()
    seen.clear()
    direct.learn(batch)
    assert not seen
    grads = []
    handle = next(direct.q_net.parameters()).register_hook(lambda grad: grads.append(grad))
    direct.learn(batch)
    assert grads
    handle.remove()
    calls = []
    handle = torch.nn.modules.module.register_module_full_backward_hook(lambda *args: calls.append(1))
    with pytest.warns(UserWarning, match="no inputs require gradients"):  # torch's note on the obs
        direct.learn(batch)
    handle.remove()
    assert calls  # a hook for every module's backward ran: the update went through autograd


@pytest.mark.parametrize(
    "overrides",
    [dict(layer_norm=True), dict(layer_norm=True, dueling=True)],
    ids=["layer-norm", "layer-norm-dueling"],
)
def test_networks_it_cannot_see_through_use_autograd(overrides):
    cfg = Config(hidden_sizes=(8,), **overrides)
    assert DQNAgent(_net((5,), cfg), (5,), 3, cfg)._direct_update is None


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(dueling=True), dict(distributional="c51", n_atoms=5, v_max=3.0, dueling=True, noisy=True)],
    ids=["plain", "dueling", "c51-dueling-noisy"],
)
@pytest.mark.parametrize("obs_shape", [(4, 10, 10), (4, 84, 84)], ids=["minatar-cnn", "nature-cnn"])
def test_cnn_update_is_the_autograd_update_bit_for_bit(obs_shape, overrides):
    direct, eager = _pair(obs_shape, hidden_sizes=(64,), loss="huber", max_grad_norm=10.0, lr=1e-3, **overrides)
    rng = np.random.default_rng(0)
    for i in range(4):
        batch = _batch(rng, 8)
        frames = lambda: rng.integers(0, 256 if obs_shape[1] == 84 else 2, (8, *obs_shape), dtype=np.uint8)  # noqa: E731
        batch = batch._replace(obs=frames(), next_obs=frames())
        got, want = direct.learn(batch), eager.learn(batch)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), i
    for p, q in zip(direct.q_net.parameters(), eager.q_net.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)


def test_noisy_layers_in_eval_mode_update_their_means_alone_as_autograd_does():
    direct, eager = _pair(noisy=True)
    rng = np.random.default_rng(3)
    first, second = _batch(rng, 16), _batch(rng, 16)
    for agent in (direct, eager):
        agent.learn(first)  # sigma has a gradient from a training-mode update
        agent.q_net.eval()
        agent.learn(second)
    for p, q in zip(direct.q_net.parameters(), eager.q_net.parameters()):
        assert torch.equal(p, q) and (p.grad is None) == (q.grad is None)
    assert direct.q_net.body[0].weight_sigma.grad is None
