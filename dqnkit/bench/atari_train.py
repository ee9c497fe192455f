"""``dqnkit bench atari-train``: Atari training throughput against Stable-Baselines3 DQN.

Both train Breakout for the same env steps, at the same settings (the ``atari`` preset's
Nature DQN with a smaller buffer and an earlier start, so that a short run is mostly
learning), in one process, on the same device:

- one row for 1 env and one for ``envs`` envs. dqnkit steps its envs in ALE's C++ pool
  (its default for ALE ids), SB3 in its SubprocVecEnv. Both keep one update per 4
  transitions: SB3 counts ``train_freq`` in vector steps, so it gets ``train_freq`` and
  ``gradient_steps`` that give the same replay ratio;
- env steps/s of each and their ratio, gradient updates/s, and on CUDA the GPU's busy
  fraction (NVML's utilization, sampled while each trains);
- the cost of one update of the Nature CNN at batch 32, eager, (on CUDA) captured as a
  CUDA graph and, with ``--compile``, through ``torch.compile(mode="reduce-overhead")``;
- the cost of one sample of 32 stacked transitions until its frames are on the device,
  gathered on the host and (on CUDA) from the replay's mirror on the device.

dqnkit's figure is its training loop's own rate (``summary.json``'s ``sps``, without the
final checkpoint); SB3's is ``model.learn()``. Needs ``pip install 'dqnkit[bench,atari]'``.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit import presets
from dqnkit.bench import progress, quiet_sb3, random_batches, report
from dqnkit.build import build_agent, resolve_device
from dqnkit.config import parse_overrides
from dqnkit.errors import DqnkitError, first_line
from dqnkit.training import train

ENV_ID = "ALE/Breakout-v5"


def _settings(steps: int) -> dict[str, Any]:
    """The atari preset, scaled to a short run: learning from 20% of it, epsilon over 10%."""
    return dict(
        total_steps=steps,
        buffer_size=min(100_000, steps),
        learning_starts=steps // 5,
        exploration_steps=max(1, steps // 10),
        eval_every=0,
        final_eval=False,
        checkpoint_every=0,
    )


class _GpuBusy:
    """The GPU's mean utilization (NVML, in [0, 1]) while the block runs; None off CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.on = device.type == "cuda"
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> _GpuBusy:
        if self.on:
            try:
                torch.cuda.utilization()
            except Exception:  # no NVML bindings (nvidia-ml-py) on this machine
                self.on = False
        if self.on:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(torch.cuda.utilization() / 100)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.on:
            self._thread.join()

    @property
    def fraction(self) -> float | None:
        return round(float(np.mean(self.samples)), 3) if self.samples else None


def _ale_env(**kwargs: Any) -> Any:
    """Breakout for SB3's env workers (a module-level function, so it pickles)."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    return gym.make(ENV_ID, **kwargs)


def _sb3(steps: int, envs: int, device: torch.device, seed: int) -> dict[str, Any]:
    try:
        from stable_baselines3 import DQN
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack
    except ImportError:
        raise DqnkitError("bench atari-train needs Stable-Baselines3: pip install 'dqnkit[bench]'") from None
    cfg = presets.get("atari", **_settings(steps))
    # frameskip=1: SB3's AtariWrapper skips 4 frames itself, as dqnkit's AtariPreprocessing does
    env = VecFrameStack(
        make_atari_env(
            _ale_env,
            n_envs=envs,
            seed=seed,
            vec_env_cls=SubprocVecEnv if envs > 1 else DummyVecEnv,
            env_kwargs={"frameskip": 1, "repeat_action_probability": cfg.repeat_action_probability},
        ),
        4,
    )
    per_round = math.gcd(cfg.train_freq, envs)  # SB3 counts train_freq in vector steps
    model = DQN(
        "CnnPolicy",
        env,
        learning_rate=cfg.lr,
        buffer_size=cfg.buffer_size,
        learning_starts=cfg.learning_starts,
        batch_size=cfg.batch_size,
        gamma=cfg.gamma,
        train_freq=cfg.train_freq // per_round,
        gradient_steps=envs // per_round,
        target_update_interval=cfg.target_update_interval,
        exploration_fraction=cfg.exploration_steps / steps,
        exploration_final_eps=cfg.eps_end,
        max_grad_norm=cfg.max_grad_norm,
        optimize_memory_usage=True,
        replay_buffer_kwargs={"handle_timeout_termination": False},
        seed=seed,
        device=device,
        verbose=0,
    )
    quiet_sb3(model)
    with _GpuBusy(device) as busy:
        start = time.perf_counter()
        model.learn(steps)
        wall = time.perf_counter() - start
    env.close()
    return {
        "sps": round(steps / wall, 1),
        "updates_per_s": round(model._n_updates / wall, 1),
        "gpu_busy": busy.fraction,
    }


def _config(steps: int, change: dict[str, Any], **run: Any) -> Any:
    """dqnkit's bench config: the ``atari`` preset at :func:`_settings`, then ``run``'s
    envs/seed/device, then a variant's ``change`` (which may change any of them)."""
    return presets.get("atari", **{**_settings(steps), **run, **change})


def _dqnkit(steps: int, envs: int, device: torch.device, seed: int, run_dir: Path, **change: Any) -> dict[str, Any]:
    cfg = _config(steps, change, num_envs=envs, seed=seed, device=device.type)
    with _GpuBusy(device) as busy:
        summary = train(cfg, run_dir)
    loop_s = summary["steps"] / summary["sps"]
    return {"sps": summary["sps"], "updates_per_s": round(summary["updates"] / loop_s, 1), "gpu_busy": busy.fraction}


UPDATE_MODES = ("eager", "cuda_graph", "compile")


def update_ms(device: torch.device, mode: str = "eager", updates: int = 200) -> dict[str, float]:
    """Milliseconds per Nature-CNN update at batch 32, the GPU's work included, for one way
    of running it: ``eager``; ``cuda_graph``, dqnkit's captured update (CUDA only); or
    ``compile``, the same update step through ``torch.compile(mode="reduce-overhead")``
    (what issue 14 asks to measure against the graph). Returns ``{"ms": ...}``, plus
    ``"setup_s"``: the warm-up's seconds (capture, or compilation)."""
    if mode not in UPDATE_MODES or (mode == "cuda_graph" and device.type != "cuda"):
        raise ValueError(f"mode must be one of {UPDATE_MODES} (cuda_graph on CUDA only), got {mode!r} on {device}")
    cfg = presets.get("atari", cuda_graph=mode == "cuda_graph", device=device.type)
    agent = build_agent(cfg, (4, 84, 84), 4)
    if mode == "compile":
        agent._step = torch.compile(agent._step, mode="reduce-overhead")
    (batch,) = random_batches((4, 84, 84), 4, size=32, count=1)
    start = time.perf_counter()
    for _ in range(10):  # warm-up (and the capture, or the compilation)
        agent.learn(batch)
    _sync(device)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(updates):
        agent.learn(batch)
    _sync(device)
    return {"ms": round((time.perf_counter() - start) / updates * 1e3, 3), "setup_s": round(setup_s, 1)}


def sample_ms(device: torch.device, gather: str, rows: int = 100_000, samples: int = 400) -> float:
    """Milliseconds from one sample of 32 stacked transitions to its frames on ``device``,
    sampling twice per vector step of 8 envs (one update per 4 transitions) from a frame
    replay of ``rows`` rows: ``gather="host"`` gathers in numpy and copies the stacks over,
    ``"device"`` gathers from the replay's mirror on the device (``frame_gather``); each
    includes its half of a vector step's writes (and, for the mirror, their upload)."""
    from dqnkit.replay import FrameReplay

    envs = 8
    replay = FrameReplay(rows, seed=0, num_envs=envs)
    if gather == "device":
        replay.keep_frames_on(device)
    pool = np.random.default_rng(0).integers(0, 256, (64, envs, 4, 84, 84), dtype=np.uint8)
    no, acts, rewards = np.zeros(envs, bool), np.zeros(envs, np.int64), np.zeros(envs, np.float32)

    def add(i: int) -> None:
        replay.add_step(pool[i % 64], acts, rewards, pool[(i + 1) % 64], no, no)

    def one_step(i: int) -> None:
        add(i)
        for _ in range(2):
            batch = replay.sample(32)
            for stacks in (batch.obs, batch.next_obs):
                torch.as_tensor(stacks).to(device)  # a no-op where they are already there

    for i in range(rows // envs):  # fill the rings, as a long run has
        add(i)
    for i in range(20):  # warm-up (and the mirror's first, whole upload)
        one_step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(samples // 2):
        one_step(i)
    _sync(device)
    return round((time.perf_counter() - start) / samples * 1e3, 3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(
    steps: int = 25_000,
    envs: int = 8,
    device: str = "auto",
    seed: int = 0,
    out: Path | None = None,
    compile_update: bool = False,
    variants: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train SB3 and dqnkit on Breakout for ``steps`` with 1 and ``envs`` envs on ``device``;
    time one update eagerly, as a CUDA graph (on CUDA) and, with ``compile_update``, through
    ``torch.compile``, and one sample gathered on the host and (on CUDA) on the device;
    train dqnkit again with ``envs`` envs for each of ``variants`` (config changes, see
    :func:`check_variant`); print, write JSON."""
    dev = resolve_device(device)
    result: dict[str, Any] = {
        "benchmark": "atari-train",
        "env_id": ENV_ID,
        "steps": steps,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "settings": _settings(steps),
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for k in sorted({1, envs}):
            sb3 = _sb3(steps, k, dev, seed)
            which = f"{k} env{'s' * (k > 1)}"
            progress(f"{which}, SB3: {sb3['sps']:.0f} env steps/s")
            ours = _dqnkit(steps, k, dev, seed, Path(tmp) / f"dqnkit-{k}")
            progress(f"{which}, dqnkit: {ours['sps']:.0f} env steps/s ({ours['sps'] / sb3['sps']:.2f}x SB3)")
            result["rows"].append(
                {"envs": k, "sb3": sb3, "dqnkit": ours, "speedup": round(ours["sps"] / sb3["sps"], 2)}
            )
        result["variants"] = []
        for i, change in enumerate(variants or []):
            theirs = _dqnkit(steps, envs, dev, seed, Path(tmp) / f"variant-{i}", **change)
            label = ", ".join(f"{key}={value}" for key, value in change.items())
            speedup = round(result["rows"][-1]["dqnkit"]["sps"] / theirs["sps"], 2)  # the defaults at ``envs``
            row = {"envs": change.get("num_envs", envs), "set": label, "dqnkit": theirs, "default_speedup": speedup}
            progress(f"dqnkit with {label}: {theirs['sps']:.0f} env steps/s")
            result["variants"].append(row)
    result.update(update_timings(dev, compile_update))
    progress("one update: " + _per_mode(result["update_ms"]))
    gathers = ("host", "device") if dev.type == "cuda" else ("host",)
    result["sample_ms"] = {gather: sample_ms(dev, gather) for gather in gathers}
    return report(result, _print, out)


def check_variant(pair: str, steps: int) -> dict[str, Any]:
    """``--variant KEY=VALUE`` as a config change, refused (ConfigError) before any run if the
    bench's ``atari`` settings would not take it."""
    change = parse_overrides([pair], flag="--variant")
    _config(steps, change)  # validates the value and its combination
    return change


def update_timings(device: torch.device, compile_update: bool) -> dict[str, Any]:
    """:func:`update_ms` of each mode that applies on ``device``: ``update_ms`` and
    ``update_setup_s`` per mode, and ``compile_error`` where ``torch.compile`` failed (the
    training rows measured before it are kept)."""
    timed, result = {"eager": update_ms(device, "eager")}, {}
    if device.type == "cuda":
        timed["cuda_graph"] = update_ms(device, "cuda_graph")
    if compile_update:
        try:
            timed["compile"] = update_ms(device, "compile")
        except Exception as exc:  # torch.compile fails in many ways (no compiler, no triton): report it
            result["compile_error"] = first_line(exc)
    return {
        "update_ms": {mode: t["ms"] for mode, t in timed.items()},
        "update_setup_s": {mode: t["setup_s"] for mode, t in timed.items()},
        **result,
    }


def _per_mode(update_ms: dict[str, float]) -> str:
    """``eager 3.59 ms, cuda_graph 0.62 ms``: the progress line's and the table's."""
    return ", ".join(f"{mode} {ms:.2f} ms" for mode, ms in update_ms.items())


def _print(r: dict[str, Any]) -> None:
    print(f"Breakout, {r['steps']} env steps, {r['device']}{' (' + r['gpu'] + ')' if r['gpu'] else ''}")
    print(f"{'envs':>4} {'run':<8} {'env steps/s':>12} {'updates/s':>10} {'GPU busy':>9}")
    for row in r["rows"]:
        for name in ("sb3", "dqnkit"):
            m = row[name]
            busy = "-" if m["gpu_busy"] is None else f"{m['gpu_busy']:.0%}"
            print(f"{row['envs']:>4} {name:<8} {m['sps']:>12.0f} {m['updates_per_s']:>10.1f} {busy:>9}")
        print(f"{row['envs']:>4} dqnkit vs SB3: {row['speedup']:.2f}x")
    for v in r.get("variants", []):
        m = v["dqnkit"]
        print(f"{v['envs']:>4} dqnkit with {v['set']}: {m['sps']:.0f} env steps/s, {m['updates_per_s']:.1f} updates/s")
        print(f"     (dqnkit's defaults with {r['rows'][-1]['envs']} envs: {v['default_speedup']:.2f}x that)")
    print("one Nature-CNN update at batch 32: " + _per_mode(r["update_ms"]))
    print(
        "one sample of 32 stacks, onto the device: "
        + ", ".join(f"gathered on the {k} {v:.2f} ms" for k, v in r["sample_ms"].items())
    )
    setup = r.get("update_setup_s", {})
    if "compile" in setup:
        print(f"(torch.compile took {setup['compile']:.0f} s before its first timed update)")
    if "compile_error" in r:
        print(f"torch.compile failed: {r['compile_error']}")
