"""Atari (ALE) and MinAtar: the preprocessing stack, life loss vs game over, and short runs
through the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
from gymnasium.wrappers import ClipReward

from dqnkit.envs import make_env, make_vec_env
from dqnkit.networks import MinAtarCNN, NatureCNN, build_q_network
from dqnkit.vector import game_results
from dqnkit.wrappers import EpisodicLife

pytest.importorskip("ale_py")
pytest.importorskip("minatar")


def _layers(env):
    out = []
    while True:
        out.append(type(env))
        if not hasattr(env, "env"):
            return out
        env = env.env


def test_atari_training_stack_is_the_nature_preprocessing():
    env = make_env("ALE/Breakout-v5", training=True, repeat_action_probability=0.0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert (obs == obs[-1]).all()  # a reset repeats its first frame through the stack
    assert EpisodicLife in _layers(env) and ClipReward in _layers(env)
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    env.close()


def test_evaluation_env_plays_whole_games_with_real_scores():
    env = make_env("ALE/Breakout-v5")
    assert EpisodicLife not in _layers(env) and ClipReward not in _layers(env)
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.25  # v5 default
    env.close()


def test_a_lost_life_ends_the_learning_episode_but_not_the_game():
    env = make_env("ALE/Breakout-v5", training=True)
    env.reset(seed=1)
    lives = env.unwrapped.ale.lives()
    rng = np.random.default_rng(0)
    for _ in range(5000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        if terminated:
            break
    assert terminated and info.get("life_lost")
    env.reset()
    assert env.unwrapped.ale.lives() == lives - 1  # the game went on
    env.close()


def test_the_vector_loop_sees_life_losses_apart_from_game_overs():
    envs = make_vec_env("ALE/Breakout-v5", 2)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    life_losses, games = 0, []
    while not games:
        _, _, terminated, truncated, info = envs.step(rng.integers(4, size=2))
        results = game_results(info)
        assert set(results) == set(np.flatnonzero(terminated | truncated).tolist())
        life_losses += sum(r is None for r in results.values())
        games += [r for r in results.values() if r is not None]
    assert life_losses >= 4  # Breakout has five lives
    score, length = games[0]
    assert score >= 0 and length > 50
    envs.close()


def test_minatar_ids_and_layout():
    env = make_env("MinAtar/Breakout")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 10, 10) and obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}
    assert env.action_space.n == 3  # minimal action set
    env.close()
    from dqnkit.errors import DqnkitError

    with pytest.raises(DqnkitError, match="unknown MinAtar game"):
        make_env("MinAtar/Pong")


def test_networks_fit_their_inputs():
    assert isinstance(build_q_network((4, 84, 84), 4, (64,)), NatureCNN)
    assert isinstance(build_q_network((4, 10, 10), 3, (64,)), MinAtarCNN)
    import torch

    q = build_q_network((4, 84, 84), 6, (64,), dueling=True)(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
    assert q.shape == (2, 6)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dqnkit.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_the_emulators_banner_is_not_printed():
    """ALE printed "A.L.E: Arcade Learning Environment ... [Powered by Stella]" on stderr at
    every run and evaluation; a fresh process makes both kinds of Atari env."""
    code = (
        "from dqnkit.envs import make_env, make_vec_env\n"
        "make_env('ALE/Pong-v5', training=True).reset(seed=0)\n"
        "make_vec_env('ALE/Pong-v5', 2, 0.25, 'sync', 'ale', 0).reset(seed=0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.slow
def test_short_breakout_run_through_the_cli(tmp_path):
    run = tmp_path / "breakout"
    proc = _cli(
        "train",
        "--preset",
        "atari",
        "--steps",
        "600",
        "--run-dir",
        str(run),
        "--quiet",
        "--set",
        "learning_starts=300",
        "--set",
        "buffer_size=2000",
        "--set",
        "eval_episodes=1",
        "--set",
        "prioritized=true",
        "--set",
        "n_step=3",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 600 and summary["updates"] == 76 and summary["episodes"] >= 1
    proc = _cli("train", "--resume", str(run), "--steps", "700", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["resumed_with_fresh_episodes"] is True


@pytest.mark.slow
def test_short_minatar_run_through_the_cli(tmp_path):
    run = tmp_path / "minatar"
    proc = _cli(
        "train",
        "--preset",
        "minatar",
        "--steps",
        "1500",
        "--run-dir",
        str(run),
        "--quiet",
        "--set",
        "learning_starts=500",
        "--set",
        "eval_episodes=2",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1500 and summary["updates"] == 1001


@pytest.mark.slow  # ~15-35 s: the fast suite keeps the shorter tests of the same code
def test_stacks_gathered_on_the_device_train_the_same_agent(tmp_path):
    """frame_gather=device (the CUDA default; here the mirror is on the CPU) learns exactly what
    the host gather learns, through PER and 3-step returns, and again after a resume from an
    incremental checkpoint (the mirror is rebuilt from the restored ring; an Atari resume
    starts fresh episodes, the same ones for both)."""
    import torch

    from dqnkit import load, presets, resume, train

    cfg = presets.get(
        "atari", total_steps=300, learning_starts=150, buffer_size=1000, prioritized=True, n_step=3,
        eval_every=0, final_eval=False, checkpoint_every=100, device="cpu", num_threads=0,
    )  # fmt: skip
    agents = {}
    for gather in ("host", "device"):
        train(cfg.replace(frame_gather=gather), tmp_path / gather)
        train(cfg.replace(frame_gather=gather, total_steps=200), tmp_path / f"{gather}-resumed")
        with pytest.warns(UserWarning, match="fresh episodes"):
            resume(tmp_path / f"{gather}-resumed", total_steps=300)
        agents[gather] = load(tmp_path / gather), load(tmp_path / f"{gather}-resumed")
    for host, device in zip(agents["host"], agents["device"]):
        assert device.updates == host.updates == 38
        for a, b in zip(host.q_net.parameters(), device.q_net.parameters()):
            assert torch.equal(a, b)
    full, resumed = agents["host"]
    assert not all(torch.equal(a, b) for a, b in zip(full.q_net.parameters(), resumed.q_net.parameters()))
