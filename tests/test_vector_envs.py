"""Parallel vector envs: AsyncVectorEnv must give exactly the transitions SyncVectorEnv gives,
with the same SAME_STEP autoreset (reset observation returned, true last one in final_obs)."""

import gymnasium as gym
import numpy as np
import pytest

from dqnkit import presets, train
from dqnkit.envs import make_env, make_vec_env
from dqnkit.vector import finished_episodes, get_env_state, get_env_states, true_next_obs


def _rollout(env_id: str, num_envs: int, mode: str, steps: int) -> list[tuple]:
    envs = make_vec_env(env_id, num_envs, mode=mode)
    obs, _ = envs.reset(seed=3)
    rng = np.random.default_rng(0)
    ep_return, ep_length = np.zeros(num_envs), np.zeros(num_envs, np.int64)
    out = []
    for _ in range(steps):
        actions = rng.integers(envs.single_action_space.n, size=num_envs)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        real_next = true_next_obs(next_obs, info)
        games = finished_episodes(ep_return, ep_length, rewards, terminated, truncated, info)
        out.append((obs.copy(), rewards, terminated, truncated, real_next.copy(), games))
        obs = next_obs
    envs.close()
    return out


@pytest.mark.parametrize(
    "env_id, steps", [("CartPole-v1", 300), ("dqnkit-test/WalkGoal-v0", 20), ("dqnkit-test/Walk-v0", 20)]
)
def test_async_envs_give_the_sync_transitions(env_id, steps):
    sync, parallel = _rollout(env_id, 3, "sync", steps), _rollout(env_id, 3, "async", steps)
    assert any(t[2].any() or t[3].any() for t in sync)  # episodes ended inside the window
    for a, b in zip(sync, parallel):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_async_breakout_gives_the_sync_transitions_and_game_results():
    pytest.importorskip("ale_py")
    sync, parallel = _rollout("ALE/Breakout-v5", 2, "sync", 400), _rollout("ALE/Breakout-v5", 2, "async", 400)
    assert any(t[2].any() for t in sync)  # life losses inside the window
    for a, b in zip(sync, parallel):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "env_id, env_kwargs, captured",
    [
        ("CartPole-v1", {}, True),  # its episode is plain data: a resumed run continues it
        ("FrozenLake-v1", {}, True),
        ("LunarLander-v3", {}, False),  # a Box2D world: resumed runs start fresh episodes
        ("CarRacing-v3", {"continuous": False}, False),  # its `state` is only its last frame
    ],
)
def test_an_episode_in_progress_is_captured_only_where_it_is_plain_data(env_id, env_kwargs, captured):
    pytest.importorskip("Box2D")
    env = make_env(env_id, env_kwargs=env_kwargs)
    env.reset(seed=0)
    assert (get_env_state(env) is not None) is captured
    env.close()


def test_auto_picks_processes_for_atari_only():
    cartpole = make_vec_env("CartPole-v1", 2)
    assert isinstance(cartpole, gym.vector.SyncVectorEnv)
    assert all(s is not None for s in get_env_states(cartpole))
    cartpole.close()
    pytest.importorskip("minatar")
    minatar = make_vec_env("MinAtar/Breakout", 2)  # a step cheaper than a round trip to a worker
    assert isinstance(minatar, gym.vector.SyncVectorEnv)
    minatar.close()
    pytest.importorskip("ale_py")
    atari = make_vec_env("ALE/Breakout-v5", 2)
    assert isinstance(atari, gym.vector.AsyncVectorEnv)
    assert get_env_states(atari) == [None, None]  # worker processes: fresh episodes on resume
    atari.close()
    assert isinstance(make_vec_env("ALE/Breakout-v5", 1), gym.vector.SyncVectorEnv)


def test_async_workers_leave_ctrl_c_and_sigterm_to_the_training_process():
    """Ctrl-C reaches the terminal's whole process group: a worker it killed took the run
    down without its checkpoint. The workers ignore both signals; this process keeps its own."""
    import os
    import signal
    import time

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    envs = make_vec_env("CartPole-v1", 2, mode="async")
    try:
        envs.reset(seed=0)
        for process in envs.processes:
            os.kill(process.pid, signal.SIGINT)
            os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert all(process.is_alive() for process in envs.processes)
        assert envs.step(np.zeros(2, np.int64))[0].shape == (2, 4)  # and they still step
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        envs.close()


@pytest.mark.slow
def test_async_training_run_resumes_with_fresh_episodes(tmp_path):
    cfg = presets.get(
        "cartpole",
        total_steps=600,
        learning_starts=100,
        num_envs=2,
        vector_env="async",
        eval_every=0,
        eval_episodes=1,
        stop_at_return=None,
    )
    train(cfg, tmp_path / "run")
    from dqnkit.training import resume

    with pytest.warns(UserWarning, match="fresh episodes"):
        summary = resume(tmp_path / "run", total_steps=800)
    assert summary["steps"] == 800 and summary["resumed_with_fresh_episodes"]


def test_envpool_missing_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    import sys

    from dqnkit.cli import main

    pytest.importorskip("ale_py")
    monkeypatch.setitem(sys.modules, "envpool", None)  # as if it were not installed
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--env",
            "ALE/Breakout-v5",
            "--set",
            "env_backend=envpool",
            "--steps",
            "2000",
            "--set",
            "learning_starts=100",
            "--run-dir",
            str(run),
        ]
    )
    assert code == 2 and "pip install envpool envpool-assets" in capsys.readouterr().err
    assert not run.exists()  # refused before anything was written


def _same(a, b) -> None:
    """Equal step outputs: arrays, nested info dicts, object arrays of final observations."""
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a.keys() - {"t"}:  # RecordEpisodeStatistics' "t" is wall time
            _same(a[key], b[key])
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                _same(x, y)
    else:
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype


@pytest.mark.parametrize("env_id, num_envs, steps", [("CartPole-v1", 3, 300), ("ALE/Breakout-v5", 2, 300)])
def test_lean_sync_steps_exactly_as_gymnasiums_sync_vector_env(env_id, num_envs, steps):
    from gymnasium.vector import AutoresetMode

    from dqnkit.envs import make_env
    from dqnkit.vector import LeanSyncVectorEnv

    if env_id.startswith("ALE/"):
        pytest.importorskip("ale_py")
    fns = [lambda: make_env(env_id, training=True) for _ in range(num_envs)]
    lean = LeanSyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    reference = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    _same(lean.reset(seed=5), reference.reset(seed=5))
    rng, ended = np.random.default_rng(0), 0
    for _ in range(steps):
        actions = rng.integers(lean.single_action_space.n, size=num_envs)
        ours, theirs = lean.step(actions), reference.step(actions)
        _same(ours, theirs)
        ended += int(ours[2].any() or ours[3].any())
        # finished_episodes reads the envs that ended off this mask, present only when one did
        np.testing.assert_array_equal(ours[4].get("_final_obs", np.zeros(num_envs, bool)), ours[2] | ours[3])
    assert ended  # episodes (or lives) ended inside the window
    lean.close(), reference.close()
    with pytest.raises(ValueError, match="SAME_STEP"):
        LeanSyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
