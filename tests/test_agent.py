import copy

import numpy as np
import pytest
import torch

from dqnkit import Config
from dqnkit.agent import DQNAgent
from dqnkit.heads import td_targets
from dqnkit.networks import MLP, DuelingHead, build_q_network
from dqnkit.replay.uniform import Batch


def _agent(**overrides) -> DQNAgent:
    cfg = Config(hidden_sizes=(8,), **overrides)
    torch.manual_seed(0)
    return DQNAgent(build_q_network((3,), 2, cfg.hidden_sizes), (3,), 2, cfg)


# ---------------------------------------------------------------------- TD targets
Q_NEXT_TARGET = torch.tensor([[1.0, 5.0], [2.0, 0.0], [3.0, 4.0]])
Q_NEXT_ONLINE = torch.tensor([[9.0, 0.0], [0.0, 9.0], [0.0, 1.0]])
REWARDS = torch.tensor([1.0, -1.0, 0.5])
GAMMA = torch.full((3,), 0.9)


def test_dqn_target_takes_the_target_networks_max():
    target = td_targets(REWARDS, torch.zeros(3), GAMMA, Q_NEXT_TARGET)
    assert torch.allclose(target, torch.tensor([1 + 0.9 * 5, -1 + 0.9 * 2, 0.5 + 0.9 * 4]))


def test_double_dqn_target_lets_online_choose_and_target_evaluate():
    target = td_targets(REWARDS, torch.zeros(3), GAMMA, Q_NEXT_TARGET, Q_NEXT_ONLINE)
    # online argmax: 0, 1, 1 -> target values 1, 0, 4
    assert torch.allclose(target, torch.tensor([1 + 0.9 * 1, -1 + 0.9 * 0, 0.5 + 0.9 * 4]))


def test_termination_stops_bootstrapping_but_truncation_does_not():
    # The replay stores `terminated` only: a truncated transition arrives with 0 here
    # and must keep its bootstrap term.
    terminated = torch.tensor([1.0, 0.0, 1.0])
    target = td_targets(REWARDS, terminated, GAMMA, Q_NEXT_TARGET)
    assert torch.allclose(target, torch.tensor([1.0, -1 + 0.9 * 2, 0.5]))


def test_n_step_horizon_discounts_with_gamma_to_the_k():
    agent = _agent(gamma=0.5)
    batch = Batch(
        np.zeros((2, 3), np.float32),
        np.zeros(2, np.int64),
        np.array([1.0, 1.0], np.float32),
        np.zeros((2, 3), np.float32),
        np.zeros(2, np.float32),
        np.array([1, 3]),
        np.ones(2, np.float32),
        np.arange(2),
    )
    with torch.no_grad():
        next_v = agent.target_net(torch.zeros(1, 3)).max().item()
        q = agent.q_net(torch.zeros(1, 3))[0, 0].item()
    stats = agent.learn(batch)
    expected = np.abs(q - (1.0 + np.array([0.5, 0.125]) * next_v))
    assert np.allclose(stats.td_abs.numpy(), expected, atol=1e-6)


# --------------------------------------------------------------------- target nets
def test_hard_update_copies_exactly_and_soft_update_blends():
    hard = _agent(tau=0.0)
    with torch.no_grad():
        for p in hard.q_net.parameters():
            p.add_(1.0)
    hard.update_target()
    for p, t in zip(hard.q_net.parameters(), hard.target_net.parameters()):
        assert torch.equal(p, t)

    soft = _agent(tau=0.25)
    before = [t.clone() for t in soft.target_net.parameters()]
    with torch.no_grad():
        for p in soft.q_net.parameters():
            p.add_(1.0)
    soft.update_target()
    for p, t, b in zip(soft.q_net.parameters(), soft.target_net.parameters(), before):
        assert torch.allclose(t, 0.25 * p + 0.75 * b, atol=1e-6)


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_a_hard_copy_of_unchanged_weights_is_skipped_and_a_blend_never(tau):
    """rl-zoo's CartPole learns every 256 steps and refreshes the target every 10: a hard copy
    between two bursts of updates copies the same weights, and is skipped; after a burst the
    next copy is made, and the target equals the online net again."""
    from dqnkit.algorithms import algorithm
    from dqnkit.replay import UniformReplay

    cfg = Config(
        hidden_sizes=(8,),
        batch_size=8,
        learning_starts=40,
        train_freq=64,
        gradient_steps=2,
        target_update_interval=10,
        tau=tau,
    )
    agent = DQNAgent(build_q_network((3,), 2, cfg.hidden_sizes), (3,), 2, cfg)
    replay, algo, rng = UniformReplay(100, (3,), np.float32, seed=0), algorithm(cfg), np.random.default_rng(0)
    copies = []
    real = agent.update_target
    agent.update_target = lambda: (copies.append(agent.updates), real())
    for step in range(1, 200):
        obs = rng.random((1, 3), dtype=np.float32)
        replay.add_step(obs, np.array([1]), np.array([1.0]), obs, np.array([False]), np.array([False]))
        list(algo.learn(agent, replay, step - 1, step))
        if tau == 0 and step % 10 == 0 and step >= 40:  # every due copy leaves the target equal to the online net
            assert all(torch.equal(p, t) for p, t in zip(agent.q_net.parameters(), agent.target_net.parameters()))
    if tau == 0:  # updates at steps 64, 128 and 192: the copies at 40 (the first), 70 and 130; 3 of the 16 due
        assert copies == [0, 2, 4]
    else:  # a blend moves the target every time: none is skipped
        assert len(copies) == len(range(40, 200, 10))


def test_learning_does_not_move_the_target_network():
    agent = _agent()
    before = copy.deepcopy(agent.target_net.state_dict())
    batch = Batch(
        np.random.rand(8, 3).astype(np.float32),
        np.ones(8, np.int64),
        np.ones(8, np.float32),
        np.random.rand(8, 3).astype(np.float32),
        np.zeros(8, np.float32),
        np.ones(8, np.int64),
        np.ones(8, np.float32),
        np.arange(8),
    )
    for _ in range(5):
        agent.learn(batch)
    for k, v in agent.target_net.state_dict().items():
        assert torch.equal(v, before[k])
    assert agent.updates == 5


@pytest.mark.parametrize("loss", ["huber", "mse"])
@pytest.mark.parametrize("double", [False, True])
def test_learn_fits_a_fixed_regression_target(loss, double):
    """With terminated=1 the target is just the reward: Q(s, a) must converge to it."""
    agent = _agent(loss=loss, double=double, lr=1e-2)
    rng = np.random.default_rng(0)
    obs = rng.random((32, 3)).astype(np.float32)
    actions = rng.integers(0, 2, 32)
    rewards = (obs.sum(1) + actions).astype(np.float32)
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
    first = agent.learn(batch).loss.item()
    for _ in range(300):
        last = agent.learn(batch).loss.item()
    assert last < 0.05 * first


def test_importance_weights_scale_the_loss():
    a, b = _agent(), _agent()
    batch = Batch(
        np.ones((4, 3), np.float32),
        np.zeros(4, np.int64),
        np.ones(4, np.float32),
        np.ones((4, 3), np.float32),
        np.ones(4, np.float32),
        np.ones(4, np.int64),
        np.ones(4, np.float32),
        np.arange(4),
    )
    loss_full = a.learn(batch).loss.item()
    loss_half = b.learn(batch._replace(weights=np.full(4, 0.5, np.float32))).loss.item()
    assert loss_half == pytest.approx(0.5 * loss_full, rel=1e-5)


# -------------------------------------------------------------------------- acting
def test_epsilon_one_is_uniform_and_zero_is_greedy():
    agent = _agent()
    obs = np.random.default_rng(0).random((4000, 3)).astype(np.float32)
    random_actions = agent.act(obs, epsilon=1.0)
    assert abs(random_actions.mean() - 0.5) < 0.05
    greedy = agent.act(obs, epsilon=0.0)
    assert np.array_equal(greedy, agent.q_values(obs).argmax(1))
    assert isinstance(agent.act(obs[0], greedy=True), int)


def test_each_env_explores_on_its_own_draw_and_the_rest_act_greedily():
    agent = _agent()
    obs = np.random.default_rng(1).random((64, 3)).astype(np.float32)
    state = agent.draws.state_dict()
    uniform, random_actions = (x.copy() for x in agent.draws.take(64))
    agent.draws.load_state_dict(state)
    actions = agent.act(obs, epsilon=0.5)
    explored = uniform < 0.5
    assert 0 < explored.sum() < 64 and actions.dtype == np.int64
    assert np.array_equal(actions[explored], random_actions[explored])
    assert np.array_equal(actions[~explored], agent.q_values(obs[~explored]).argmax(1))


def test_exploration_draws_continue_exactly_after_a_restore_mid_block():
    from dqnkit.schedules import ExplorationDraws

    def stream(draws: ExplorationDraws, calls: int) -> list[np.ndarray]:
        return [np.concatenate([u, a]) for u, a in (draws.take(3) for _ in range(calls))]

    calls = ExplorationDraws.BLOCK // 3 * 2  # past two block refills (4096 is not a multiple of 3)
    a = ExplorationDraws(np.random.default_rng(7), 4)
    b = ExplorationDraws(np.random.default_rng(99), 4)
    first = stream(a, 1000)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert all(np.array_equal(x, y) for x, y in zip(stream(a, calls), stream(b, calls)))
    assert all(np.isin(x[3:], np.arange(4)).all() and (x[:3] < 1).all() for x in first)


def test_exploration_draws_load_a_checkpoint_from_before_the_blocks():
    """An older checkpoint holds only the RNG state: the block starts empty and is drawn from it."""
    from dqnkit.schedules import ExplorationDraws

    rng = np.random.default_rng(5)
    old_state = rng.bit_generator.state
    draws = ExplorationDraws(np.random.default_rng(0), 2)
    draws.load_state_dict(old_state)
    uniform, _ = draws.take(2)
    assert np.array_equal(uniform, np.random.default_rng(5).random(ExplorationDraws.BLOCK)[:2])


@pytest.mark.parametrize("shape", [(4,), (2, 4), (3, 4), (2, 3, 1)])
def test_observations_of_another_shape_are_refused_in_one_line(shape):
    agent = _agent()  # observations (3,)
    message = r"do not fit this agent's \(3,\) \(one observation, or a batch \[B, 3\]\)"
    for call in (lambda obs: agent.act(obs, epsilon=0.0), agent.q_values):
        with pytest.raises(ValueError, match=message):
            call(np.zeros(shape, np.float32))
    assert agent.act(np.zeros(3, np.float32)) in (0, 1) and agent.q_values([[0.0, 0.0, 0.0]]).shape == (1, 2)
    one = np.array([0.1, -0.2, 0.3], np.float32)  # one observation gives its row of the batch's
    np.testing.assert_array_equal(agent.q_values(one), agent.q_values(one[None])[0])


def test_dueling_head_is_identifiable():
    head = DuelingHead(5, 4, 16)
    x = torch.randn(7, 5)
    q = head(x)
    value = head.value(x)
    # mean over actions of Q equals V: the advantages are centred
    assert torch.allclose(q.mean(dim=1, keepdim=True), value, atol=1e-6)
    assert MLP(3, 4, (16, 16), dueling=True)(torch.randn(2, 3)).shape == (2, 4)


def test_nature_cnn_is_chosen_for_frames():
    net = build_q_network((4, 84, 84), 6, (64,))
    out = net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
    assert out.shape == (2, 6) and type(net).__name__ == "NatureCNN"


def test_numpy_acting_path_matches_the_network():
    """Acting uses a numpy copy-free view of a plain MLP; it must follow the live weights."""
    from dqnkit import presets
    from dqnkit.build import build_agent

    agent = build_agent(presets.get("cartpole-zoo"), (4,), 2)
    assert agent._numpy_layers
    obs = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    np.testing.assert_allclose(agent._numpy_q(obs), agent.q_values(obs), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in agent.q_net.parameters():
            p.add_(0.5)  # in place, as the optimizer updates them
    np.testing.assert_allclose(agent._numpy_q(obs), agent.q_values(obs), rtol=1e-5, atol=1e-5)
    assert (agent.act(obs, 0.0) == agent.q_values(obs).argmax(axis=1)).mean() > 0.99


def test_an_old_runs_direct_update_key_is_read_and_dropped():
    """Runs trained while the CPU update could bypass autograd keep ``direct_update`` in their
    config.json and checkpoints: they still load, resume and serve as --config."""
    from dqnkit.config import from_dict

    assert from_dict({"direct_update": True, "lr": 0.01}).lr == 0.01


def test_an_agent_loaded_from_another_does_not_share_its_adam_state():
    """``b.load_state_dict(a.state_dict())`` gives b its own copy: torch's
    ``Optimizer.load_state_dict`` keeps the given moment tensors, so without one a's next
    step would move b's Adam moments too (and b's step would then differ from a copy's)."""
    rng = np.random.default_rng(0)
    obs = rng.random((16, 3)).astype(np.float32)
    ones = np.ones(16, np.float32)
    batch = Batch(obs, rng.integers(0, 2, 16), ones, obs, ones, np.ones(16, np.int64), ones, np.arange(16))
    a, b = _agent(), _agent()
    for _ in range(3):
        a.learn(batch)
    b.load_state_dict(a.state_dict())
    reference = copy.deepcopy(b.state_dict())
    a.learn(batch)
    after = b.state_dict()["optimizer"]["state"]
    for key, state in reference["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(after[key][name], value), (key, name)


def test_a_failed_capture_of_acting_warns_once_and_acts_eagerly(monkeypatch):
    """Where CUDA cannot capture the acting forward pass, acting goes on eagerly with the same
    actions, after one warning (the capture is not retried every step)."""
    from dqnkit import cuda_graph

    attempts = []

    def fail(self, q_values, device, example):
        attempts.append(len(example))
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(cuda_graph.GraphedAct, "__init__", fail)
    cfg = Config()
    torch.manual_seed(0)
    agent = DQNAgent(build_q_network((4, 84, 84), 3, cfg.hidden_sizes), (4, 84, 84), 3, cfg)
    agent._act_graph_wanted = True  # as on CUDA
    obs = np.random.default_rng(0).integers(0, 255, (2, 4, 84, 84), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"capture of acting failed \(operation not permitted"):
        actions = agent.act(obs, epsilon=0.0)
    np.testing.assert_array_equal(actions, agent.q_values(obs).argmax(axis=1))
    agent.act(obs, epsilon=0.0)
    assert attempts == [2] and agent._graphed_acts == {}
