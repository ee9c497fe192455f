"""The C++ Atari pools for ALE ids (ALE's own vector env, the default, and envpool): the
same transition semantics as the gymnasium backend (SAME_STEP autoreset with final_obs, life
loss as a learning terminal, raw game scores, truncation that bootstraps), ALE's frames equal
to gymnasium's preprocessing, and the refusals."""

import contextlib
import importlib.util

import numpy as np
import pytest

from dqnkit import Config, presets, train
from dqnkit.atari_pool import AleAtari, EnvpoolAtari
from dqnkit.cli import main
from dqnkit.envs import env_backend, make_vec_env
from dqnkit.errors import ConfigError
from dqnkit.vector import finished_episodes, true_next_obs

pytest.importorskip("ale_py")
BACKENDS = [
    "ale",
    pytest.param(
        "envpool",
        marks=[
            pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="envpool is not installed"),
            pytest.mark.slow,  # the second backend, in the slow suite; the fast suite checks ALE's pool
        ],
    ),
]
POOLS = {"ale": AleAtari, "envpool": EnvpoolAtari}


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_stored_transition_crosses_an_episode_start(backend):
    envs = make_vec_env("ALE/Breakout-v5", 3, backend=backend, seed=1)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_game_bootstraps_from_its_true_last_frame(backend):
    envs = POOLS[backend]("ALE/Breakout-v5", 2, seed=0, max_episode_steps=40)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_episodes(backend):
    def run(seed):
        envs = make_vec_env("ALE/Breakout-v5", 2, backend=backend, seed=seed)
        out = [(obs.sum(), r.tolist()) for obs, r, *_ in _rollout(envs, 300)]
        envs.close()
        return out

    assert run(5) == run(5) != run(6)


@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "ALE/Pong-v5", "ALE/MsPacman-v5"])
def test_ale_frames_are_gymnasiums_preprocessing(env_id):
    """ALE's C++ vector env resizes, max-pools and grays exactly as gymnasium's
    AtariPreprocessing: step for step the same frames, rewards and game overs (no sticky
    actions or no-op starts, whose randoms the two draw differently; without FIRE at reset,
    which ALE presses for one frame and dqnkit's wrapper stack for one 4-frame step). Games
    with lives and FIRE, without lives (Pong), and without FIRE (Ms. Pac-Man)."""
    import ale_py
    import gymnasium as gym
    from ale_py.vector_env import AtariVectorEnv
    from gymnasium.wrappers import AtariPreprocessing

    from dqnkit.atari_pool import ale_game

    gym.register_envs(ale_py)
    env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0)
    env = AtariPreprocessing(env, noop_max=0, frame_skip=4, screen_size=84, grayscale_obs=True)
    pool = AtariVectorEnv(
        ale_game(env_id), 1, repeat_action_probability=0.0, stack_num=1, noop_max=0, use_fire_reset=False,
        reward_clipping=False, autoreset_mode="NextStep",
    )  # fmt: skip
    frame, _ = env.reset(seed=3)
    frames, _ = pool.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(150):
        np.testing.assert_array_equal(frames[0, -1], frame)
        action = int(rng.integers(0, env.action_space.n))
        frame, reward, game_over, _, _ = env.step(action)
        frames, rewards, game_overs, _, _ = pool.step(np.array([action]))
        assert rewards[0] == reward and game_overs[0] == game_over
    env.close()
    pool.close()


def test_the_ale_pool_is_the_default_for_ale_ids_unless_gymnasium_stepping_is_asked_for():
    assert env_backend("ALE/Breakout-v5") == "ale"
    assert env_backend("ALE/Breakout-v5", "auto", "async") == env_backend("ALE/Breakout-v5", "gymnasium") == "gymnasium"
    assert env_backend("MinAtar/Breakout") == env_backend("CartPole-v1") == "gymnasium"
    assert env_backend("ALE/Pong-v5", "envpool") == "envpool"
    with pytest.raises(ConfigError, match="vector_env=async says how gymnasium envs are stepped"):
        Config(env_id="ALE/Pong-v5", env_backend="ale", vector_env="async")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_evaluation_pool_plays_whole_games_with_raw_rewards(backend):
    """training=False: the same games (same seed, same actions) as a training pool, but a
    lost life neither ends the episode nor restarts the stack, and rewards are not clipped."""
    pools = [POOLS[backend]("ALE/MsPacman-v5", 2, seed=3, training=training) for training in (True, False)]
    np.testing.assert_array_equal(*(pool.reset()[0] for pool in pools))
    rng = np.random.default_rng(0)
    first_terminal = game_over = None
    for t in range(5000):
        actions = rng.integers(pools[0].single_action_space.n, size=2)
        (obs_t, r_t, term_t, trunc_t, _), (obs_e, r_e, term_e, trunc_e, _) = (p.step(actions) for p in pools)
        np.testing.assert_array_equal(r_t, np.clip(r_e, -1, 1))  # one game, its rewards clipped for learning
        if first_terminal is None and term_t[0]:
            first_terminal = t  # from here the training pool's stack restarts
        elif first_terminal is None:
            np.testing.assert_array_equal(obs_t[0], obs_e[0])  # the same frames until then
        if term_e[0] or trunc_e[0]:
            game_over = t
            break
    for pool in pools:
        pool.close()
    assert first_terminal is not None and game_over is not None and game_over > first_terminal
    assert r_e.max() > 1 or np.abs(r_e).max() == 0  # MsPacman scores 10 a pellet: raw scores are seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_plays_whole_games_in_the_runs_pool(backend):
    from dqnkit.evaluate import _pooled_games, evaluate

    class RandomAgent:  # evaluation's env side alone
        config = presets.get("atari", env_backend=backend, repeat_action_probability=0.0)
        evaluation = staticmethod(contextlib.nullcontext)

        def act(self, obs, epsilon, rng):
            return rng.integers(4, size=len(obs))

    agent = RandomAgent()
    first, again = (evaluate(agent, "ALE/Breakout-v5", 3, seed=7, epsilon=1.0) for _ in range(2))
    np.testing.assert_array_equal(first.returns, again.returns)  # the seed fixes the games
    assert first.start_obs.shape == (3, 4, 84, 84) and (first.returns >= 0).all()
    assert not np.array_equal(first.returns, evaluate(agent, "ALE/Breakout-v5", 3, seed=8, epsilon=1.0).returns)
    pooled = _pooled_games(agent, "ALE/Breakout-v5", 3, seed=7)
    assert pooled is not None
    pooled.close()
    agent.config = agent.config.replace(env_backend="gymnasium")  # the run trains in gymnasium envs: so it evaluates
    assert _pooled_games(agent, "ALE/Breakout-v5", 3, seed=7) is None


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_runs_on_a_pool(tmp_path, backend):
    cfg = presets.get(
        "atari",
        env_backend=backend,
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


@pytest.mark.parametrize("backend", ["ale", "envpool"])
def test_a_pool_is_refused_for_other_envs(capsys, backend):
    with pytest.raises(ConfigError, match="ALE"):
        Config(env_id="CartPole-v1", env_backend=backend)
    assert main(["train", "--env", "CartPole-v1", "--set", f"env_backend={backend}", "--steps", "2000"]) == 2
    assert f"env_backend={backend} runs ALE" in capsys.readouterr().err
