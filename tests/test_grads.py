"""The flat gradient buffer: the update is torch's own zero_grad / backward / clip_grad_norm_ /
Adam, and it stays so when something else resets the gradients."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dqnkit import Config
from dqnkit.agent import DQNAgent
from dqnkit.grads import GradBuffer
from dqnkit.heads import batch_loss
from dqnkit.networks import build_q_network
from dqnkit.pqn import PQNAgent
from dqnkit.replay.uniform import Batch


def _batch(rng: np.random.Generator, size: int = 16) -> Batch:
    return Batch(
        rng.standard_normal((size, 3)).astype(np.float32) * 5,  # large inputs: large gradients
        rng.integers(0, 2, size),
        rng.standard_normal(size).astype(np.float32) * 10,
        rng.standard_normal((size, 3)).astype(np.float32),
        (rng.random(size) < 0.2).astype(np.float32),
        np.ones(size, dtype=np.int64),
        np.ones(size, dtype=np.float32),
        None,
    )


def _agent(**overrides) -> DQNAgent:
    cfg = Config(hidden_sizes=(16, 16), lr=1e-2, **overrides)
    torch.manual_seed(0)
    return DQNAgent(build_q_network((3,), 2, cfg.hidden_sizes), (3,), 2, cfg)


def _torch_update(agent: DQNAgent, batch: Batch) -> None:
    """The update as torch's own utilities write it: what the buffer must reproduce."""
    per_sample_B, _, _ = agent._losses(agent._tensors(batch))
    agent.optimizer.zero_grad(set_to_none=True)
    batch_loss(per_sample_B, agent._tensor(batch.weights)).backward()
    if agent.config.max_grad_norm > 0:
        nn.utils.clip_grad_norm_(agent.q_net.parameters(), agent.config.max_grad_norm)
    agent.optimizer.step()


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5, 1e6])
def test_updates_match_torchs_zero_grad_backward_clip_and_adam(max_grad_norm):
    ours, reference = _agent(max_grad_norm=max_grad_norm), _agent(max_grad_norm=max_grad_norm)
    rng = np.random.default_rng(0)
    for _ in range(30):
        batch = _batch(rng)
        ours.learn(batch)
        _torch_update(reference, batch)
    for mine, theirs in zip(ours.q_net.parameters(), reference.q_net.parameters()):
        if max_grad_norm == 0.5:  # the clipped norm is summed in another order: last bits differ
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
        else:  # nothing is scaled (a coefficient of exactly 1): bit-identical
            assert torch.equal(mine, theirs)
    assert not all(torch.equal(p, q) for p, q in zip(ours.q_net.parameters(), _agent().q_net.parameters()))


def test_clipping_bounds_the_global_norm_and_leaves_small_gradients_alone():
    params = [nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(5))]
    grads = GradBuffer(params)
    grads.zero_()
    grads.flat.copy_(torch.arange(17, dtype=torch.float32))
    expected = [p.grad.clone() for p in params]
    norm = float(torch.linalg.vector_norm(grads.flat))
    grads.clip_norm_(norm * 2)
    assert all(torch.equal(p.grad, e) for p, e in zip(params, expected))
    grads.clip_norm_(1.0)
    clipped = torch.cat([p.grad.flatten() for p in params])
    assert float(torch.linalg.vector_norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(params[0].grad, expected[0] / norm, rtol=1e-5, atol=1e-7)


def test_gradients_reset_to_none_by_someone_else_are_taken_back_into_the_buffer():
    agent = _agent(max_grad_norm=0.5)
    reference = copy.deepcopy(agent)
    rng = np.random.default_rng(1)
    agent.learn(_batch(rng))
    agent.optimizer.zero_grad(set_to_none=True)  # as a CUDA graph's capture does
    agent.learn(batch := _batch(rng))
    assert all(p.grad is view for p, view in zip(agent.q_net.parameters(), agent._grads.views))
    # the second update's gradients are the batch's alone (zeroed first) and clipped
    assert float(torch.linalg.vector_norm(agent._grads.flat)) == pytest.approx(0.5, rel=1e-4)
    _torch_update(reference, _batch(np.random.default_rng(1)))
    _torch_update(reference, batch)
    for mine, theirs in zip(agent.q_net.parameters(), reference.q_net.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_an_agent_that_only_acts_allocates_no_gradients():
    agent = _agent()
    agent.act(np.zeros(3, dtype=np.float32))
    assert agent._grads is None
    assert all(p.grad is None for p in agent.q_net.parameters())
    assert all(p.grad is None for p in agent.target_net.parameters())


def test_pqn_steps_through_the_same_buffer():
    cfg = Config(algorithm="pqn", hidden_sizes=(16,), max_grad_norm=0.1, num_envs=2, rollout_steps=4)
    torch.manual_seed(0)
    agent = PQNAgent(build_q_network((3,), 2, cfg.hidden_sizes), (3,), 2, cfg)
    obs, actions, returns = torch.randn(8, 3) * 5, torch.randint(0, 2, (8,)), torch.randn(8) * 10
    agent._step(obs, actions, returns)
    assert all(p.grad is view for p, view in zip(agent.q_net.parameters(), agent._grads.views))
    assert float(torch.linalg.vector_norm(agent._grads.flat)) == pytest.approx(0.1, rel=1e-4)
