"""The envpool backend for ALE ids: the same transition semantics as the gymnasium backend
(SAME_STEP autoreset with final_obs, life loss as a learning terminal, raw game scores,
truncation that bootstraps), and the refusals."""

import numpy as np
import pytest

from dqnkit import Config, presets, train
from dqnkit.cli import main
from dqnkit.envs import finished_episodes, make_vec_env, true_next_obs
from dqnkit.errors import ConfigError

envpool = pytest.importorskip("envpool")
from dqnkit.envpool_env import EnvpoolAtari  # noqa: E402


def _rollout(envs, steps: int, seed: int = 0):
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n = envs.num_envs
    ep_return, ep_length = np.zeros(n), np.zeros(n, np.int64)
    for _ in range(steps):
        next_obs, rewards, terminated, truncated, info = envs.step(rng.integers(envs.single_action_space.n, size=n))
        games = finished_episodes(ep_return, ep_length, rewards, terminated, truncated, info)
        yield obs, rewards, terminated, truncated, true_next_obs(next_obs, info), next_obs, info, games
        obs = next_obs


def test_no_stored_transition_crosses_an_episode_start():
    envs = make_vec_env("ALE/Breakout-v5", 3, backend="envpool", seed=1)
    assert envs.single_observation_space.shape == (4, 84, 84)
    ends = life_losses = games = 0
    for obs, rewards, terminated, truncated, real_next, next_obs, info, finished in _rollout(envs, 1500):
        assert obs.dtype == np.uint8 and set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
        # every stored transition is one real step: next_obs's stack is obs's shifted by one frame
        np.testing.assert_array_equal(real_next[:, :-1], obs[:, 1:])
        for i in np.flatnonzero(terminated | truncated):  # a new episode starts on one frame, repeated
            assert (next_obs[i] == next_obs[i, -1]).all()
            ends += 1
        life_losses += int(info.get("final_info", {}).get("_life_lost", np.zeros(3, bool)).sum())
        games += len(finished)
        assert all(score >= 0 and length > 0 for score, length in finished)
    envs.close()
    assert life_losses >= 4 and ends >= life_losses and games >= 1  # random play loses lives and games


def test_a_truncated_game_bootstraps_from_its_true_last_frame():
    envs = EnvpoolAtari("ALE/Breakout-v5", 2, seed=0, max_episode_steps=40)
    truncations = 0
    for obs, _, terminated, truncated, real_next, next_obs, _, finished in _rollout(envs, 120):
        for i in np.flatnonzero(truncated):
            assert not terminated[i]  # a time limit never stops bootstrapping
            np.testing.assert_array_equal(real_next[i, :-1], obs[i, 1:])  # the real last frame, not the reset
            assert not np.array_equal(real_next[i], next_obs[i])
            truncations += 1
        assert all(length <= 40 for _, length in finished)
    envs.close()
    assert truncations >= 2


def test_same_seed_same_episodes():
    def scores():
        envs = make_vec_env("ALE/Breakout-v5", 2, backend="envpool", seed=5)
        out = [r.tolist() for _, r, *_ in _rollout(envs, 300)]
        envs.close()
        return out

    assert scores() == scores()


@pytest.mark.slow
def test_training_runs_on_envpool(tmp_path):
    cfg = presets.get(
        "atari",
        env_backend="envpool",
        num_envs=4,
        total_steps=800,
        learning_starts=200,
        buffer_size=2000,
        eval_every=0,
        eval_episodes=1,
        eval_epsilon=1.0,
        device="cpu",
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 800 and summary["updates"] == (800 - 200) // 4 + 1  # one at step 200 itself
    assert summary["episodes"] >= 0 and np.isfinite(summary["eval_return_mean"])


def test_envpool_is_refused_for_other_envs(capsys):
    with pytest.raises(ConfigError, match="ALE"):
        Config(env_id="CartPole-v1", env_backend="envpool")
    assert main(["train", "--env", "CartPole-v1", "--set", "env_backend=envpool", "--steps", "2000"]) == 2
    assert "env_backend=envpool runs ALE" in capsys.readouterr().err
