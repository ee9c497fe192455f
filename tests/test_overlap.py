"""``overlap_env_step``: the envs step while the agent learns. The next actions are chosen
before the step's updates and sent at once; everything else (what is stored, when it is
learned from, resume) is the serial loop's."""

import importlib.util

import numpy as np
import pytest

from dqnkit import load, presets, resume, train
from dqnkit.agent import DQNAgent
from dqnkit.build import load_replay
from dqnkit.checkpoint import load_checkpoint
from dqnkit.monitor import RunMonitor

# sync envs step when received, so overlapping them gains nothing (and says so): the tests
# use them anyway, where the loop's order is what they check
pytestmark = pytest.mark.filterwarnings("ignore:overlap_env_step:UserWarning")

QUIET = dict(eval_every=0, final_eval=False, stop_at_return=None)
CARTPOLE = dict(
    total_steps=800,
    learning_starts=200,
    batch_size=16,
    buffer_size=1000,
    hidden_sizes=(16,),
    train_freq=2,
    gradient_steps=1,
    target_update_interval=50,
    exploration_steps=400,
    **QUIET,
)

POOL = dict(env_id="ALE/Pong-v5", num_envs=2, total_steps=240, learning_starts=160, buffer_size=1000, train_freq=8)
POOL.update(QUIET)


def _probe(run) -> np.ndarray:
    agent = load(run)
    obs = np.random.default_rng(0).integers(0, 255, (8, *agent.obs_shape)).astype(np.float32)
    return agent.q_values(obs)


def _same_runs(a, b) -> None:
    """Same transitions stored, same episodes and updates, same network at the end."""
    if load_checkpoint(a)["config"]["algorithm"] == "dqn":  # pqn keeps no replay
        ra, rb = load_replay(a), load_replay(b)
        names = ("frames", "actions", "rewards", "kind") if hasattr(ra, "frames") else ("obs", "actions", "rewards")
        for name in names:
            assert np.array_equal(getattr(ra, name), getattr(rb, name)), name
    assert np.array_equal(_probe(a), _probe(b))


@pytest.mark.parametrize(
    ("preset", "settings"),
    [
        ("cartpole", dict(CARTPOLE, num_envs=2)),  # steps when received
        ("cartpole", dict(CARTPOLE, num_envs=2, vector_env="async")),  # step_async / step_wait
        ("pqn-cartpole", dict(total_steps=1024, num_envs=4, rollout_steps=32, hidden_sizes=(16,), **QUIET)),
        pytest.param("atari", POOL, id="ale-pool"),  # ALE's C++ pool: send / recv
        pytest.param(  # envpool's: send / recv too
            "atari",
            dict(POOL, env_backend="envpool"),
            id="envpool",
            marks=[
                pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="envpool is not installed"),
                pytest.mark.slow,
            ],
        ),
    ],
)
def test_with_random_actions_the_overlapped_loop_is_the_serial_loop(tmp_path, preset, settings):
    """With epsilon 1 the weights never choose an action, so stepping the envs while the agent
    learns must change nothing at all: the same transitions, learned from in the same order."""
    cfg = presets.get(preset, **settings, eps_start=1.0, eps_end=1.0)
    serial = train(cfg, tmp_path / "serial")
    overlapped = train(cfg.replace(overlap_env_step=True), tmp_path / "overlapped")
    assert serial["updates"] == overlapped["updates"] > 0 and serial["episodes"] == overlapped["episodes"]
    _same_runs(tmp_path / "serial", tmp_path / "overlapped")


@pytest.mark.parametrize("overlap", [False, True])
def test_overlapped_actions_are_chosen_before_the_steps_updates(tmp_path, monkeypatch, overlap):
    """Serial: act, step, learn. Overlapped: receive the step, choose and send the next
    actions, then learn while the envs step; every action chosen is stepped."""
    import dqnkit.training

    events = []
    act, learn, recv = DQNAgent.act, DQNAgent.learn, dqnkit.training.recv_step
    monkeypatch.setattr(DQNAgent, "act", lambda self, *a, **k: events.append("act") or act(self, *a, **k))
    monkeypatch.setattr(DQNAgent, "learn", lambda self, batch: events.append("learn") or learn(self, batch))
    monkeypatch.setattr(dqnkit.training, "recv_step", lambda *a: events.append("recv") or recv(*a))
    settings = dict(CARTPOLE, total_steps=300, train_freq=1)
    train(presets.get("cartpole", **settings, overlap_env_step=overlap), tmp_path / "run")
    assert events.count("act") == events.count("recv") == 300
    if overlap:  # the last step sends nothing past the end
        assert events[-8:] == ["recv", "act", "learn"] * 2 + ["recv", "learn"]
    else:
        assert events[-9:] == ["act", "recv", "learn"] * 3


def test_an_overlapped_run_resumes_bit_identically_from_a_step_in_flight(tmp_path, monkeypatch):
    """Ctrl-C while a step is under way: its actions are saved with the run, and the resumed
    run receives that step as the uninterrupted one did (sync envs step when received)."""
    cfg = presets.get("cartpole", **CARTPOLE, overlap_env_step=True, checkpoint_every=10_000)
    train(cfg, tmp_path / "straight")
    seen = [0]
    with monkeypatch.context() as patch:
        patch.setattr(RunMonitor, "advance", lambda self, steps: seen.__setitem__(0, seen[0] + steps))
        patch.setattr(RunMonitor, "interrupted", property(lambda self: seen[0] >= 501))
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "interrupted")
    saved = load_checkpoint(tmp_path / "interrupted")["loop"]
    assert saved["step"] == 501 and saved["in_flight"] is not None
    summary = resume(tmp_path / "interrupted")
    assert summary["steps"] == 800 and not summary["resumed_with_fresh_episodes"]
    assert np.array_equal(_probe(tmp_path / "interrupted"), _probe(tmp_path / "straight"))


def test_overlap_with_sync_envs_says_that_nothing_overlaps(tmp_path, recwarn):
    settings = dict(CARTPOLE, total_steps=300, overlap_env_step=True)
    with pytest.warns(UserWarning, match="CartPole-v1's envs step in this process .sync., so nothing overlaps"):
        train(presets.get("cartpole", **settings), tmp_path / "sync")
    recwarn.clear()
    train(presets.get("cartpole", **settings, num_envs=2, vector_env="async"), tmp_path / "async")
    assert not [w for w in recwarn if "nothing overlaps" in str(w.message)]
