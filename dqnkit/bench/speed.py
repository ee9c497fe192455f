"""``dqnkit bench speed``: dqnkit against Stable-Baselines3 DQN, in the same process.

1. SB3 DQN and dqnkit's ``cartpole-zoo`` preset at identical rl-baselines3-zoo settings
   (50k steps, same seed, one torch thread each), one after the other: wall time, steps/s,
   ratio. dqnkit's time is its whole ``train()`` (final evaluation, checkpoint and plot
   included); SB3's is ``model.learn()``.
2. dqnkit's ``cartpole`` preset on seeds 0-4: solved count (greedy eval >= 475) and median
   wall time as a fraction of SB3's 50k-step time.
3. CleanRL dqn.py's defaults (the ``cartpole-cleanrl`` preset: 100k steps, one small update
   per 10 steps), where the loop's own cost per env step decides the speed: SB3 and dqnkit
   steps/s (SB3's ``learn()``; dqnkit's loop rate, ``summary.json``'s ``sps``), and dqnkit's
   overhead per env step, ``(loop time - time inside learn) / steps``, against a bare
   ``env.step`` of CartPole timed in the same process.
4. The update itself: microseconds per ``agent.learn`` (the fastest of a few blocks of
   random batches) for the CleanRL, rl-zoo, Rainbow, C51, QR-DQN and MinAtar presets' networks.

Needs ``pip install 'dqnkit[bench]'`` (stable-baselines3 is never a runtime dependency).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit import presets
from dqnkit.bench import progress, quiet_sb3, random_batches, report
from dqnkit.build import build_agent
from dqnkit.errors import DqnkitError
from dqnkit.training import flush_denormals, train

# (preset, observation shape, actions): the networks whose updates part 4 times
UPDATE_CASES = (
    ("cartpole-cleanrl", (4,), 2),
    ("cartpole-zoo", (4,), 2),
    ("cartpole-rainbow", (4,), 2),
    ("cartpole-c51", (4,), 2),
    ("cartpole-qr", (4,), 2),
    ("minatar", (4, 10, 10), 3),
)


def _sb3_dqn(preset: str, seed: int) -> Any:
    """SB3's DQN ("MlpPolicy") with a dqnkit preset's settings. SB3 always clips gradients: a
    preset without clipping gets a norm no update reaches. (SB3's loss is always Huber.)"""
    try:
        from stable_baselines3 import DQN
    except ImportError:
        raise DqnkitError("bench speed needs Stable-Baselines3: pip install 'dqnkit[bench]'") from None
    c = presets.get(preset)
    model = DQN(
        "MlpPolicy",
        c.env_id,
        learning_rate=c.lr,
        batch_size=c.batch_size,
        buffer_size=c.buffer_size,
        learning_starts=c.learning_starts,
        gamma=c.gamma,
        target_update_interval=c.target_update_interval,
        train_freq=c.train_freq,
        gradient_steps=c.gradient_steps,
        exploration_fraction=c.exploration_fraction,
        exploration_final_eps=c.eps_end,
        max_grad_norm=c.max_grad_norm or 1e9,
        policy_kwargs={"net_arch": list(c.hidden_sizes)},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    return quiet_sb3(model)


def _sb3_zoo(steps: int, seed: int) -> tuple[float, float]:
    """Train SB3 DQN with rl-zoo's CartPole settings; (wall seconds, greedy eval mean)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    model = _sb3_dqn("cartpole-zoo", seed)
    start = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - start
    n_eval = presets.get("cartpole-zoo").eval_episodes
    mean, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=n_eval, deterministic=True)
    return wall, float(mean)


def _sb3_cleanrl(steps: int, seed: int) -> float:
    """SB3 DQN at CleanRL dqn.py's defaults; its ``learn()`` steps/s."""
    model = _sb3_dqn("cartpole-cleanrl", seed)
    start = time.perf_counter()
    model.learn(steps)
    return steps / (time.perf_counter() - start)


def _raw_step_us(steps: int = 20_000) -> float:
    """Microseconds per bare ``env.step`` of CartPole-v1 (resets included), random actions."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, size=steps)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / steps * 1e6


def _dqnkit_cleanrl(steps: int, seed: int, tmp: Path) -> dict[str, float]:
    """dqnkit at the same settings: loop steps/s, and loop time outside ``learn`` per step."""
    from dqnkit.agent import DQNAgent

    inside = [0.0]
    learn = DQNAgent.learn

    def timed(agent: DQNAgent, batch: Any) -> Any:
        start = time.perf_counter()
        try:
            return learn(agent, batch)
        finally:
            inside[0] += time.perf_counter() - start

    DQNAgent.learn = timed  # type: ignore[method-assign]  # bench-only instrumentation
    try:
        cfg = presets.get("cartpole-cleanrl", seed=seed, total_steps=steps, final_eval=False, checkpoint_every=steps)
        summary = train(cfg, tmp / "cleanrl")
    finally:
        DQNAgent.learn = learn  # type: ignore[method-assign]
    loop_s = summary["steps"] / summary["sps"]
    return {"sps": summary["sps"], "overhead_us": (loop_s - inside[0]) / summary["steps"] * 1e6}


def update_us(
    preset: str, obs_shape: tuple[int, ...], n_actions: int, updates: int = 200, blocks: int = 5
) -> dict[str, Any]:
    """Part 4 for one preset: the fastest block's µs per update."""
    torch.manual_seed(0)
    agent = build_agent(presets.get(preset), obs_shape, n_actions)
    batches = random_batches(obs_shape, n_actions, agent.config.batch_size, updates)
    best = float("inf")
    with flush_denormals(True):
        for _ in range(blocks):
            start = time.perf_counter()
            for batch in batches:
                agent.learn(batch)
            best = min(best, (time.perf_counter() - start) / updates * 1e6)
    return {"preset": preset, "update_us": round(best, 1)}


def run(
    steps: int = 50_000,
    seed: int = 0,
    seeds: int = 5,
    out: Path | None = None,
    cartpole_steps: int | None = None,
    cleanrl_steps: int = 100_000,
) -> dict[str, Any]:
    """All four parts; ``cartpole_steps`` caps the preset runs (only for quick checks)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sb3_wall, sb3_eval = _sb3_zoo(steps, seed)
        progress(f"SB3 at rl-zoo settings: {steps / sb3_wall:.0f} steps/s")
        start = time.perf_counter()
        ours = train(presets.get("cartpole-zoo", seed=seed, total_steps=steps, eval_every=0), Path(tmp) / "zoo")
        zoo_wall = time.perf_counter() - start
        progress(f"dqnkit cartpole-zoo: {steps / zoo_wall:.0f} steps/s ({sb3_wall / zoo_wall:.2f}x SB3)")
        solves = []
        for s in range(seeds):
            start = time.perf_counter()
            cfg = presets.get("cartpole", seed=s, **({"total_steps": cartpole_steps} if cartpole_steps else {}))
            summary = train(cfg, Path(tmp) / f"cartpole-{s}")
            solves.append(
                {
                    "seed": s,
                    "wall_s": round(time.perf_counter() - start, 2),
                    "steps": summary["steps"],
                    "eval_return_mean": summary["eval_return_mean"],
                }
            )
        progress(f"cartpole preset: {sum(r['eval_return_mean'] >= 475 for r in solves)}/{seeds} seeds solved")
        sb3_cleanrl_sps = _sb3_cleanrl(cleanrl_steps, seed)
        raw_us = _raw_step_us()
        cleanrl = _dqnkit_cleanrl(cleanrl_steps, seed, Path(tmp))
        progress(f"CleanRL defaults: SB3 {sb3_cleanrl_sps:.0f}, dqnkit {cleanrl['sps']:.0f} steps/s")
    updates = [update_us(*case) for case in UPDATE_CASES]
    median = float(np.median([r["wall_s"] for r in solves]))
    result = {
        "benchmark": "speed",
        "steps": steps,
        "seed": seed,
        "torch_threads": 1,
        "sb3_zoo": {"wall_s": round(sb3_wall, 2), "sps": round(steps / sb3_wall, 1), "eval_return_mean": sb3_eval},
        "dqnkit_zoo": {
            "wall_s": round(zoo_wall, 2),
            "sps": round(steps / zoo_wall, 1),
            "eval_return_mean": ours["eval_return_mean"],
        },
        "zoo_speedup": round(sb3_wall / zoo_wall, 2),
        "cartpole": {
            "runs": solves,
            "solved": sum(r["eval_return_mean"] >= 475 for r in solves),
            "median_wall_s": round(median, 2),
            "median_vs_sb3_zoo": round(median / sb3_wall, 3),
        },
        "cleanrl_defaults": {
            "steps": cleanrl_steps,
            "sb3_sps": round(sb3_cleanrl_sps, 1),
            "dqnkit_sps": round(cleanrl["sps"], 1),
            "speedup": round(cleanrl["sps"] / sb3_cleanrl_sps, 2),
            "dqnkit_overhead_us_per_step": round(cleanrl["overhead_us"], 1),
            "raw_env_step_us": round(raw_us, 1),
            "overhead_vs_raw_step": round(cleanrl["overhead_us"] / raw_us, 2),
        },
        "updates": updates,
    }
    return report(result, _print, out)


def _print(r: dict[str, Any]) -> None:
    print(f"{'run':<34} {'wall s':>8} {'steps/s':>9} {'eval':>7}")
    for name, key in (("SB3 DQN, rl-zoo settings", "sb3_zoo"), ("dqnkit cartpole-zoo", "dqnkit_zoo")):
        print(f"{name:<34} {r[key]['wall_s']:>8.1f} {r[key]['sps']:>9.0f} {r[key]['eval_return_mean']:>7.1f}")
    print(f"dqnkit vs SB3 at identical settings: {r['zoo_speedup']:.2f}x faster")
    k = r["cleanrl_defaults"]
    print(
        f"CleanRL dqn.py defaults, {k['steps']} steps: SB3 {k['sb3_sps']:.0f} steps/s, dqnkit "
        f"{k['dqnkit_sps']:.0f} steps/s ({k['speedup']:.2f}x); dqnkit's loop outside learn "
        f"{k['dqnkit_overhead_us_per_step']:.0f} µs/step = {k['overhead_vs_raw_step']:.1f}x a bare CartPole "
        f"env.step ({k['raw_env_step_us']:.0f} µs)"
    )
    c = r["cartpole"]
    print(
        f"dqnkit cartpole preset: {c['solved']}/{len(c['runs'])} seeds solved, median {c['median_wall_s']:.1f} s "
        f"= {c['median_vs_sb3_zoo']:.2f} of SB3-zoo's {r['steps']}-step time"
    )
    print(f"{'update (µs, tight loop)':<34} {'µs':>8}")
    for u in r["updates"]:
        print(f"{u['preset']:<34} {u['update_us']:>8.0f}")
