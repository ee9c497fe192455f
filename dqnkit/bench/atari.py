"""``dqnkit bench atari``: what Atari training costs on this machine.

- env steps/s of the preprocessed training env (random actions): dqnkit's gymnasium stack
  with 1 and ``envs`` (default 4) vector envs (in worker processes), ALE's own C++ vector
  env with 1 and ``envs`` (``env_backend=ale``, the training default), and ``envs`` in
  envpool when it is installed;
- replay bytes per transition: FrameReplay against storing stacked obs and next_obs
  naively, and against Stable-Baselines3's ReplayBuffer(optimize_memory_usage=True), whose
  arrays are built here in the same process (when SB3 is installed);
- the time to sample a batch of 32 from each filled buffer;
- gradient updates/s of the Nature CNN at batch 32 on the device ``auto`` picks;
- an evaluation's env side: seconds to play ``eval_games`` evaluation games (default 10,
  the ``atari`` preset's ``eval_episodes``; whole games, random actions) as one gymnasium
  env per game and in ALE's pool.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit import presets
from dqnkit.bench import report
from dqnkit.build import build_agent, resolve_device
from dqnkit.envs import make_vec_env
from dqnkit.evaluate import evaluate
from dqnkit.replay import FrameReplay

ENV_ID = "ALE/Breakout-v5"


def _timed(fn: Any, seconds: float, sync: Any = lambda: None) -> tuple[int, float]:
    """Calls of ``fn`` in about ``seconds``: (calls, elapsed). One call first, untimed: it
    pays the one-time costs (the optimizer's build, a CUDA graph's capture). ``sync`` waits for
    queued device work, so that the elapsed time includes it."""
    fn()
    sync()
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return calls, time.perf_counter() - start


def _env_sps(num_envs: int, seconds: float, backend: str = "gymnasium") -> float:
    envs = make_vec_env(ENV_ID, num_envs, backend=backend)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    calls, elapsed = _timed(lambda: envs.step(rng.integers(4, size=num_envs)), seconds)
    envs.close()
    return calls * num_envs / elapsed


class _RandomPlayer:
    """Plays at random, so that timing :func:`evaluate` times its env side alone."""

    def __init__(self, backend: str) -> None:
        self.config = presets.get("atari", env_backend=backend)

    def evaluation(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(4, size=len(obs))


def _eval_seconds(backend: str, games: int) -> float:
    start = time.perf_counter()
    evaluate(_RandomPlayer(backend), ENV_ID, games, seed=0, epsilon=1.0)  # type: ignore[arg-type]
    return time.perf_counter() - start


def _stream(transitions: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The same synthetic Atari steps for every buffer: (obs, action, next_obs, done),
    random frames, 200-step episodes."""
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, (1, 4, 84, 84), dtype=np.uint8)
    for t in range(transitions):
        next_obs = np.concatenate([obs[:, 1:], rng.integers(0, 255, (1, 1, 84, 84), dtype=np.uint8)], axis=1)
        yield obs, np.array([t % 4]), next_obs, np.array([t % 200 == 199])
        obs = next_obs


def _fill_frame_replay(transitions: int) -> FrameReplay:
    replay = FrameReplay(transitions + transitions // 10, seed=0)
    for obs, action, next_obs, done in _stream(transitions):
        replay.add_step(obs, action, np.array([1.0]), next_obs, done, np.array([False]))
    return replay


def _sb3_buffer(transitions: int) -> Any | None:
    try:
        import gymnasium as gym
        from stable_baselines3.common.buffers import ReplayBuffer
    except ImportError:
        return None
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    buf = ReplayBuffer(
        transitions,
        space,
        gym.spaces.Discrete(4),
        device="cpu",
        optimize_memory_usage=True,
        handle_timeout_termination=False,
    )
    for obs, action, next_obs, done in _stream(transitions):
        buf.add(obs, next_obs, action, np.array([1.0]), done, [{}])
    return buf


def run(
    seconds: float = 3.0, transitions: int = 20_000, out: Path | None = None, envs: int = 4, eval_games: int = 10
) -> dict[str, Any]:
    """Measure the Atari env (1 and ``envs`` envs), replay and update costs for ``seconds``
    each, and an evaluation of ``eval_games`` games both ways; print the table, write JSON
    to ``out``."""
    result: dict[str, Any] = {"benchmark": "atari", "env_id": ENV_ID, "transitions": transitions}
    counts = sorted({1, envs})
    result["env_sps"] = {str(n): round(_env_sps(n, seconds), 1) for n in counts}
    for n in counts:  # ALE's own C++ vector env, the training default for ALE ids
        result["env_sps"][f"{n} ale"] = round(_env_sps(n, seconds, "ale"), 1)
    if importlib.util.find_spec("envpool") is not None:
        result["env_sps"][f"{envs} envpool"] = round(_env_sps(envs, seconds, "envpool"), 1)

    replay = _fill_frame_replay(transitions)
    naive = 2 * 4 * 84 * 84
    # rows in use (one per step plus one final row per 200-step episode) per transition
    per_transition = replay.nbytes / replay.capacity * int(replay.written.sum()) / transitions
    result["replay_bytes_per_transition"] = {"dqnkit_frame_replay": round(per_transition), "naive_stacked": naive}
    calls, elapsed = _timed(lambda: replay.sample(32), seconds)
    result["sample_us"] = {"dqnkit_frame_replay": round(elapsed / calls * 1e6, 1)}
    sb3 = _sb3_buffer(transitions)
    if sb3 is not None:
        arrays = (sb3.observations, sb3.actions, sb3.rewards, sb3.dones, sb3.timeouts)
        result["replay_bytes_per_transition"]["sb3_optimize_memory"] = round(
            sum(a.nbytes for a in arrays) / transitions
        )
        calls, elapsed = _timed(lambda: sb3.sample(32), seconds)
        result["sample_us"]["sb3_optimize_memory"] = round(elapsed / calls * 1e6, 1)

    cfg = presets.get("atari")
    device = resolve_device(cfg.device)
    agent = build_agent(cfg, (4, 84, 84), 4)
    batch = replay.sample(32)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    calls, elapsed = _timed(lambda: agent.learn(batch), seconds, sync)
    result["updates_per_s"] = {"device": str(device), "batch_32": round(calls / elapsed, 1)}
    result["eval_games"] = eval_games
    result["eval_s"] = {backend: round(_eval_seconds(backend, eval_games), 2) for backend in ("gymnasium", "ale")}
    return report(result, _print, out)


def _print(r: dict[str, Any]) -> None:
    print(f"{'measure':<44} {'value':>12}")
    for n, sps in r["env_sps"].items():
        print(f"{f'env steps/s, {n} env(s), preprocessed':<44} {sps:>12.0f}")
    for name, value in r["replay_bytes_per_transition"].items():
        print(f"{f'replay bytes/transition, {name}':<44} {value:>12,}")
    for name, value in r["sample_us"].items():
        print(f"{f'sample 32 µs, {name}':<44} {value:>12.1f}")
    u = r["updates_per_s"]
    print(f"{'Nature CNN updates/s (batch 32, ' + u['device'] + ')':<44} {u['batch_32']:>12.1f}")
    games = r["eval_games"]
    for backend, seconds in r["eval_s"].items():
        print(f"{f'evaluation, {games} random games, {backend} s':<44} {seconds:>12.2f}")
