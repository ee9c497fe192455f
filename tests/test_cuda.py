"""CUDA: every head trains, the captured update equals the eager one, resume and checkpoints
cross devices. Skipped where torch sees no GPU; run them with `pytest -m cuda` on a GPU machine."""

import copy
import json

import numpy as np
import pytest
import torch

from dqnkit import Config, load, presets, resume, train
from dqnkit.agent import DQNAgent
from dqnkit.evaluate import evaluate
from dqnkit.heads import project_distribution
from dqnkit.logger import read_metrics
from dqnkit.networks import build_q_network
from dqnkit.replay import FrameReplay
from dqnkit.replay.uniform import Batch

pytestmark = pytest.mark.cuda

HEADS = [
    {"distributional": "none"},
    {"distributional": "c51", "v_min": -10.0, "v_max": 200.0},
    {"distributional": "qr"},
]
RAINBOW = dict(double=True, dueling=True, noisy=True, prioritized=True, n_step=3)
SHORT = dict(
    total_steps=400,
    learning_starts=100,
    batch_size=32,
    buffer_size=2000,
    train_freq=2,
    gradient_steps=1,
    target_update_interval=100,
    eval_every=200,
    eval_episodes=2,
    stop_at_return=None,
    device="cuda",
    checkpoint_every=200,
)


def _params(agent: DQNAgent) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in agent.q_net.parameters()])


def test_c51_projection_on_cuda_stays_inside_the_support():
    support = torch.linspace(-10.0, 200.0, 51, device="cuda")
    probs = torch.full((4, 51), 1 / 51, device="cuda")
    projected = project_distribution(probs, support.expand(4, 51), support)
    torch.cuda.synchronize()  # a device-side assert would surface here
    assert torch.equal(projected, probs)


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h["distributional"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "ALE/Breakout-v5"])
def test_every_head_with_every_rainbow_part_trains_on_cuda(tmp_path, head, env_id):
    if env_id.startswith("ALE/"):
        pytest.importorskip("ale_py")
    atari = env_id.startswith("ALE/")
    settings = {**SHORT, **RAINBOW, **head, **({"eval_every": 0} if atari else {})}  # one (final) eval of Breakout
    summary = train(presets.get("atari" if atari else "cartpole", env_id=env_id, **settings), tmp_path / "run")
    assert summary["device"].startswith("cuda") and summary["updates"] > 0
    losses = [
        float(r["loss"])
        for r in read_metrics(tmp_path / "run" / "metrics.csv")
        if r["kind"] == "episode" and r["loss"] not in ("", None)
    ]
    assert losses and np.isfinite(losses).all()


def _agent(device: str, graph: bool, **overrides) -> DQNAgent:
    cfg = Config(
        hidden_sizes=(64,), lr=1e-3, gamma=0.9, cuda_graph=graph, n_atoms=21, v_min=-2.0, v_max=2.0, seed=3, **overrides
    )
    atoms = 1 if cfg.distributional == "none" else cfg.n_atoms
    torch.manual_seed(0)
    net = build_q_network((4, 84, 84), 4, cfg.hidden_sizes, dueling=cfg.dueling, atoms=atoms, noisy=cfg.noisy)
    return DQNAgent(net, (4, 84, 84), 4, cfg, device=device)


def _batches(n: int, b: int = 32) -> list[Batch]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        obs = rng.integers(0, 255, (b, 4, 84, 84), dtype=np.uint8)
        next_obs = rng.integers(0, 255, (b, 4, 84, 84), dtype=np.uint8)
        out.append(
            Batch(
                obs,
                rng.integers(0, 4, b),
                rng.standard_normal(b).astype(np.float32),
                next_obs,
                (rng.random(b) < 0.1).astype(np.float32),
                rng.integers(1, 4, b),
                rng.uniform(0.2, 1.0, b).astype(np.float32),
                np.arange(b),
            )
        )
    return out


GRAPH_HEADS = [
    {},
    {"distributional": "c51"},
    {"distributional": "qr"},
    {"distributional": "c51", "noisy": True, "double": True, "dueling": True},
]
GRAPH_IDS = ["td", "c51", "qr", "c51-noisy-double-dueling"]


@pytest.fixture
def exact_kernels():
    """cuDNN's deterministic algorithms and no TF32, so that float rounding is all that differs."""
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = True, False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.mark.parametrize("head", GRAPH_HEADS, ids=GRAPH_IDS)
def test_n_graphed_updates_each_equal_the_eager_update_from_the_same_state(head, exact_kernels):
    """The graphed agent takes 10 updates; before each, the eager agent is given its state, so
    every update is compared on its own. (Run side by side without that, two agents drift apart
    as rounding compounds through Adam, graph or not: on an H200 with TF32 convolutions, |td|
    differed by up to 0.014 after 20 updates on random frames.) Measured there: loss and |td|
    within 1e-5 relative, parameters within 1.6e-6 absolute after a step of up to lr = 1e-3."""
    graphed, eager = _agent("cuda", True, **head), _agent("cuda", False, **head)
    for batch in _batches(10):
        # networks, Adam's moments, the noise generator (copied: Adam would share the same tensors)
        eager.load_state_dict(copy.deepcopy(graphed.state_dict()))
        a, b = graphed.learn(batch), eager.learn(batch)
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.td_abs, b.td_abs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_params(graphed), _params(eager), rtol=1e-5, atol=1e-5)
    assert graphed._graphed is not None and eager._graphed is None and graphed.updates == 10


def test_stacks_gathered_on_the_gpu_feed_the_graphed_update(exact_kernels):
    """frame_gather=device: the mirror on the GPU gives the host gather's batches, and the
    graphed update fed from it (device-to-device copies) learns what it learns from the host."""
    host, mirrored = (FrameReplay(2000, num_envs=2, n_step=3, seed=1) for _ in range(2))
    mirrored.keep_frames_on("cuda")
    rng = np.random.default_rng(0)
    for _ in range(300):
        step = (
            rng.integers(0, 255, (2, 4, 84, 84), dtype=np.uint8), rng.integers(0, 4, 2), rng.normal(size=2),
            rng.integers(0, 255, (2, 4, 84, 84), dtype=np.uint8), rng.random(2) < 0.02, rng.random(2) < 0.01,
        )  # fmt: skip
        host.add_step(*step)
        mirrored.add_step(*step)
    from_host, from_device = _agent("cuda", True), _agent("cuda", True)
    for _ in range(5):
        a, b = host.sample(32), mirrored.sample(32)
        assert b.obs.is_cuda and torch.equal(b.next_obs.cpu(), torch.from_numpy(a.next_obs))
        x, y = from_host.learn(a), from_device.learn(b)
        torch.testing.assert_close(x.td_abs, y.td_abs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_params(from_host), _params(from_device), rtol=1e-6, atol=1e-6)
    assert from_device._graphed is not None


@pytest.mark.parametrize("head", [{}, {"distributional": "c51"}], ids=["td", "c51"])
def test_graphed_acting_follows_the_network_through_updates(head, exact_kernels):
    agent = _agent("cuda", True, **head)
    rng = np.random.default_rng(1)
    for batch in _batches(3):
        for size in (8, 1):
            obs = rng.integers(0, 255, (size, 4, 84, 84), dtype=np.uint8)
            actions = agent.act(obs, epsilon=0.0)
            eager_q = agent.q_values(obs)  # the eager forward pass of the same weights
            np.testing.assert_allclose(agent._graphed_acts[size]._q.cpu().numpy(), eager_q, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(actions, eager_q.argmax(axis=1))
        agent.learn(batch)  # the graphed acts must read the updated weights
    assert set(agent._graphed_acts) == {8, 1}
    with agent.evaluation():  # greedy evaluation runs eagerly
        agent.act(rng.integers(0, 255, (3, 4, 84, 84), dtype=np.uint8), greedy=True)
    assert 3 not in agent._graphed_acts
    noisy = _agent("cuda", True, noisy=True)
    noisy.act(rng.integers(0, 255, (8, 4, 84, 84), dtype=np.uint8), epsilon=0.0)
    assert noisy._graphed_acts == {}


def test_graphed_updates_keep_the_noise_stream_fresh():
    agent = _agent("cuda", True, noisy=True)
    noise = []
    for batch in _batches(3):
        agent.learn(batch)
        noise.append(agent.q_net.head.net[0].eps_out.clone())
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[1], noise[2])


def test_resume_on_cuda_matches_the_uninterrupted_run(tmp_path):
    # schedules in absolute steps, so the 300-step run is the first half of the 600-step one
    cfg = presets.get(
        "cartpole",
        **{**SHORT, "total_steps": 600, "eval_every": 0},
        **RAINBOW,
        distributional="c51",
        exploration_steps=200,
        per_beta_steps=600,
    )
    train(cfg, tmp_path / "full")
    train(cfg.replace(total_steps=300), tmp_path / "half")
    resume(tmp_path / "half", total_steps=600)
    # scatter_add (C51) and cuBLAS may sum in another order between runs: equal within float tolerance
    torch.testing.assert_close(_params(load(tmp_path / "half")), _params(load(tmp_path / "full")), rtol=1e-4, atol=1e-5)


def test_a_cuda_checkpoint_loads_and_evaluates_on_the_cpu(tmp_path):
    summary = train(presets.get("cartpole", **SHORT, **RAINBOW, log_overestimation=True), tmp_path / "run")
    on_gpu, on_cpu = load(tmp_path / "run"), load(tmp_path / "run", device="cpu")
    assert on_gpu.device.type == "cuda" and on_cpu.device.type == "cpu"
    obs = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    with on_gpu.evaluation(), on_cpu.evaluation():
        np.testing.assert_allclose(on_cpu.q_values(obs), on_gpu.q_values(obs), rtol=1e-4, atol=1e-5)
    assert len(evaluate(on_cpu, "CartPole-v1", 2, seed=0).returns) == 2
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["kind"] == "eval"]
    assert evals and all(np.isfinite(float(r["q_pred"])) and np.isfinite(float(r["q_real"])) for r in evals)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["device"] == summary["device"]


def test_a_run_trained_with_device_cuda_resumes_on_the_cpu(tmp_path):
    """Its optimizer state, replay and loss sums come back on the CPU (the run goes on, not bit for bit)."""
    cfg = presets.get("cartpole", **{**SHORT, "total_steps": 600, "eval_every": 0}, **RAINBOW, device="cuda")
    train(cfg.replace(total_steps=300), tmp_path / "run")
    summary = resume(tmp_path / "run", total_steps=600, changes={"device": "cpu"})
    assert summary["steps"] == 600 and summary["device"] == "cpu"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"] == "cpu"


@pytest.mark.parametrize("env_id", ["CartPole-v1", "ALE/Breakout-v5"])
def test_pqn_trains_resumes_and_loads_on_the_cpu(tmp_path, env_id):
    atari = env_id.startswith("ALE/")
    if atari:
        pytest.importorskip("ale_py")
    cfg = presets.get(
        "pqn-atari" if atari else "pqn-cartpole",
        total_steps=512,
        num_envs=4,
        rollout_steps=32,
        num_minibatches=4,
        exploration_steps=256,
        anneal_lr=False,
        eval_every=0,
        eval_episodes=1,
        stop_at_return=None,
        device="cuda",
        vector_env="sync",
    )
    summary = train(cfg, tmp_path / "full")
    assert summary["device"].startswith("cuda")
    assert summary["updates"] == 4 * 4 * cfg.update_epochs  # 4 rollouts of 4 minibatches
    # a rollout and a half, then on to the end: the same as the run never stopped
    train(cfg.replace(total_steps=192), tmp_path / "half")
    resume(tmp_path / "half", total_steps=512)
    if not atari:  # ALE resumes with fresh episodes, so only CartPole can match exactly
        torch.testing.assert_close(
            _params(load(tmp_path / "half")), _params(load(tmp_path / "full")), rtol=1e-4, atol=1e-5
        )
    on_cpu = load(tmp_path / "full", device="cpu")
    assert on_cpu.device.type == "cpu"
    assert len(evaluate(on_cpu, env_id, 1, seed=0).returns) == 1


def test_an_overlapped_atari_run_on_cuda_is_the_serial_run_with_random_actions(tmp_path, exact_kernels):
    """overlap_env_step where it is meant to pay: ALE's pool steps while the graphed updates
    run. With epsilon 1 no action depends on the weights, so it is the serial run."""
    pytest.importorskip("ale_py")
    cfg = presets.get(
        "atari",
        env_id="ALE/Pong-v5",
        num_envs=4,
        total_steps=800,
        learning_starts=400,
        buffer_size=2000,
        eps_start=1.0,
        eps_end=1.0,
        eval_every=0,
        final_eval=False,
        stop_at_return=None,
        device="cuda",
    )
    serial = train(cfg, tmp_path / "serial")
    overlapped = train(cfg.replace(overlap_env_step=True), tmp_path / "overlapped")
    assert serial["updates"] == overlapped["updates"] > 0 and serial["episodes"] == overlapped["episodes"]
    torch.testing.assert_close(
        _params(load(tmp_path / "overlapped")), _params(load(tmp_path / "serial")), rtol=1e-4, atol=1e-5
    )
