"""The training loop: the only code that touches env, replay and agent together.

One iteration: act -> step the vector env -> store the real transitions -> every
``train_freq`` transitions run ``gradient_steps`` updates -> target update -> evaluate /
checkpoint when due. The loop decides *when*; the agent decides *how* (TD targets,
loss), the replay decides *what* is sampled.

Everything the loop needs to continue (counters, the episode in progress, RNGs, env
state) is in :class:`Loop` or in the components' ``state_dict``, so a checkpoint taken
between two iterations resumes bit for bit.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dqnkit import __version__, schedules
from dqnkit.agent import DQNAgent
from dqnkit.checkpoint import CheckpointDir, safe_load
from dqnkit.config import Config, from_dict
from dqnkit.diagnostics import overestimation
from dqnkit.envpool_env import import_envpool
from dqnkit.envs import check_env_id, finished_episodes, get_env_states, make_vec_env, set_env_state, true_next_obs
from dqnkit.errors import CheckpointError, ConfigError, DqnkitError, NonFiniteError, first_line
from dqnkit.evaluate import evaluate
from dqnkit.logger import Logger, read_metrics
from dqnkit.networks import build_q_network
from dqnkit.plots import learning_curve
from dqnkit.replay import FrameReplay, PrioritizedFrameReplay, PrioritizedReplay, UniformReplay
from dqnkit.replay.nstep import NStepFolder


@dataclass
class Loop:
    """Counters and the episode in progress: the loop's own resumable state."""

    step: int = 0  # transitions collected, summed over envs
    episodes: int = 0
    wall_s: float = 0.0  # training time, summed over resumed sessions
    eval_mean: float = math.nan
    eval_std: float = math.nan
    eval_step: int = -1
    stopped_early: bool = False
    obs: np.ndarray | None = None  # [N, *obs] current observations
    ep_return: np.ndarray | None = None  # [N]
    ep_length: np.ndarray | None = None  # [N]
    env_fresh_reset: bool = False  # the envs could not be restored and were reset on resume
    # Loss and Q summed over the updates since the last logged episode (tensors: adding
    # them never waits for a host sync; kept here so a resumed run logs the same means).
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    q_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    n_losses: int = 0


@dataclass
class Parts:
    """Everything a run is made of, built from the config alone."""

    config: Config
    envs: Any
    agent: DQNAgent
    replay: UniformReplay | FrameReplay  # or their prioritized subclasses
    folder: NStepFolder  # n-step folding for UniformReplay (FrameReplay folds at sample time)
    loop: Loop = field(default_factory=Loop)


# ----------------------------------------------------------------------------- public API
def train(
    config: Config, run_dir: str | Path | None = None, *, overwrite: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Train from scratch into ``run_dir``; returns the summary (also in summary.json).

    Refuses a non-empty ``run_dir`` unless ``overwrite`` (which deletes it first).
    """
    check_env_id(config.env_id)  # refuse a bad env before touching the disk
    if config.env_backend == "envpool":
        import_envpool()
    resolve_device(config.device)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    prepare_run_dir(run_dir, overwrite)
    (run_dir / "config.json").write_text(config.to_json())
    parts = build(config)
    _reset_envs(parts)
    return _run(parts, run_dir, Logger(run_dir), progress)


def resume(run_dir: str | Path, total_steps: int | None = None, *, progress: bool = False) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its latest checkpoint, up to ``total_steps``."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    config = from_dict(ckpt["config"])
    if total_steps is not None:
        if total_steps < ckpt["loop"]["step"]:
            raise ConfigError(f"--steps {total_steps} is below the {ckpt['loop']['step']} steps this run already has")
        config = config.replace(total_steps=total_steps)
    resolve_device(config.device)
    parts = build(config)
    restore(parts, ckpt)  # a checkpoint that does not fit is refused before anything is written
    (run_dir / "config.json").write_text(config.to_json())
    if total_steps is not None:
        parts.loop.stopped_early = False  # asked for more steps: an early stop no longer applies
    return _run(parts, run_dir, Logger(run_dir, resume_step=parts.loop.step), progress)


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The latest checkpoint of a run, loaded safely; exit-2 errors for anything wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DqnkitError(f"run directory {run_dir} does not exist")
    ckpt = safe_load(CheckpointDir(run_dir).latest)
    for key in ("config", "agent", "replay", "folder", "loop", "envs"):
        if key not in ckpt:
            raise CheckpointError(f"{run_dir} checkpoint lacks {key!r}: not a dqnkit training checkpoint")
    return ckpt


# ----------------------------------------------------------------------------- building
def build(config: Config) -> Parts:
    """Envs, network, agent and replay for ``config``, seeded; nothing is run yet."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    envs = make_vec_env(
        config.env_id,
        config.num_envs,
        config.repeat_action_probability,
        config.vector_env,
        config.env_backend,
        config.seed,
    )
    obs_space = envs.single_observation_space
    agent = build_agent(config, obs_space.shape, int(envs.single_action_space.n))
    folder = NStepFolder(config.n_step, config.gamma, config.num_envs, obs_space.shape, obs_space.dtype)
    return Parts(config, envs, agent, build_replay(config, obs_space.shape, obs_space.dtype), folder)


def build_replay(config: Config, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> UniformReplay | FrameReplay:
    """FrameReplay for stacked uint8 frames [S, H, W] (each frame stored once), else the
    record-array replay; prioritized when ``config.prioritized``."""
    per = dict(alpha=config.per_alpha, beta=config.per_beta, eps=config.per_eps)
    seed = config.seed + 1
    if len(obs_shape) == 3 and obs_shape[0] > 1 and np.dtype(obs_dtype) == np.uint8 and obs_shape[1:] == (84, 84):
        frames = dict(num_envs=config.num_envs, n_step=config.n_step, gamma=config.gamma)
        if config.prioritized:
            return PrioritizedFrameReplay(config.buffer_size, obs_shape[1:], obs_shape[0], seed, **frames, **per)
        return FrameReplay(config.buffer_size, obs_shape[1:], obs_shape[0], seed, **frames)
    if config.prioritized:
        return PrioritizedReplay(config.buffer_size, obs_shape, obs_dtype, seed=seed, **per)
    return UniformReplay(config.buffer_size, obs_shape, obs_dtype, seed=seed)


def build_agent(config: Config, obs_shape: tuple[int, ...], n_actions: int) -> DQNAgent:
    """A fresh agent (network, target, optimizer) for ``config``."""
    atoms = 1 if config.distributional == "none" else config.n_atoms
    q_net = build_q_network(
        obs_shape,
        n_actions,
        config.hidden_sizes,
        dueling=config.dueling,
        atoms=atoms,
        noisy=config.noisy,
        noisy_sigma0=config.noisy_sigma0,
    )
    return DQNAgent(q_net, obs_shape, n_actions, config, device=resolve_device(config.device))


def load(run_dir: str | Path, device: str = "auto") -> DQNAgent:
    """The trained agent of a run (its latest checkpoint): ``agent.act(obs, greedy=True)``.

    ``device`` is where it runs here (``auto``: cuda if this machine has it), whatever device
    it was trained on: a run trained on a GPU loads on a CPU-only machine.
    """
    ckpt = load_checkpoint(run_dir)
    config = from_dict(ckpt["config"]).replace(device=device)
    obs_shape, _, n_actions = check_env_id(config.env_id)
    agent = build_agent(config, obs_shape, n_actions)
    try:
        agent.load_state_dict(ckpt["agent"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint does not match its config ({first_line(exc)})") from None
    return agent


def restore(parts: Parts, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's state into freshly built parts."""
    try:
        parts.agent.load_state_dict(ckpt["agent"])
        parts.replay.load_state_dict(ckpt["replay"])
        parts.folder.load_state_dict(ckpt["folder"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint does not match its config ({first_line(exc)})") from None
    loop = Loop(**ckpt["loop"])
    env_states = ckpt["envs"]
    if all(s is not None for s in env_states) and len(env_states) == parts.config.num_envs:
        for env, state in zip(parts.envs.envs, env_states):  # states are only ever saved from a SyncVectorEnv
            set_env_state(env, state)
    else:  # the env cannot be captured (e.g. ALE): start fresh episodes, say so
        warnings.warn(
            f"{parts.config.env_id} cannot save its episode in progress: resuming with fresh "
            "episodes, so this run will not be bit-identical to an uninterrupted one",
            stacklevel=2,
        )
        obs, _ = parts.envs.reset(seed=parts.config.seed + loop.step)
        loop.obs, loop.env_fresh_reset = obs, True
        loop.ep_return, loop.ep_length = np.zeros_like(loop.ep_return), np.zeros_like(loop.ep_length)
    torch.set_rng_state(ckpt["torch_rng"])
    parts.loop = loop


def snapshot(parts: Parts) -> dict[str, Any]:
    """Everything needed to continue the run bit for bit."""
    return {
        "config": parts.config.to_dict(),
        "agent": parts.agent.state_dict(),
        "replay": parts.replay.state_dict(),
        "folder": parts.folder.state_dict(),
        "loop": asdict(parts.loop),
        "envs": get_env_states(parts.envs),
        "torch_rng": torch.get_rng_state(),
        "dqnkit_version": __version__,
    }


def _reset_envs(parts: Parts) -> None:
    obs, _ = parts.envs.reset(seed=parts.config.seed)
    n = parts.config.num_envs
    parts.loop.obs, parts.loop.ep_return, parts.loop.ep_length = obs, np.zeros(n), np.zeros(n, dtype=np.int64)


# ----------------------------------------------------------------------------- the loop
def epsilon(config: Config, step: int, updates: int) -> float:
    """Exploration rate now: linear in env steps, or exponential in gradient steps."""
    start, end = config.epsilon_range
    if config.eps_schedule == "exponential":
        return schedules.exponential(start, end, config.eps_decay, updates)
    return schedules.linear(start, end, config.exploration_duration, step)


def crossed(prev: int, now: int, every: int) -> int:
    """How many multiples of ``every`` lie in (prev, now]: events due this iteration."""
    return now // every - prev // every if every > 0 else 0


def _run(parts: Parts, run_dir: Path, logger: Logger, progress: bool) -> dict[str, Any]:
    cfg, agent, loop = parts.config, parts.agent, parts.loop
    checkpoints = CheckpointDir(run_dir, keep=cfg.keep_checkpoints)
    eval_seed = 1_000_000 + 1000 * cfg.seed  # fixed across evaluations: comparable points
    recent = deque((float(r["return"]) for r in read_metrics(logger.path) if r["kind"] == "episode"), maxlen=100)
    stop = _StopFlag()
    bar = tqdm(
        total=cfg.total_steps, initial=loop.step, unit="step", disable=not progress, dynamic_ncols=True, mininterval=0.5
    )
    clock = _Clock(loop)
    try:
        while loop.step < cfg.total_steps and not loop.stopped_early:
            eps = epsilon(cfg, loop.step, agent.updates)
            actions = agent.act(loop.obs, eps)
            next_obs, rewards, terminated, truncated, info = parts.envs.step(actions)
            real_next = true_next_obs(next_obs, info)
            _check_finite(rewards, real_next, loop.step)
            _store(parts, actions, rewards, real_next, terminated, truncated)

            prev, loop.obs = loop.step, next_obs
            loop.step += cfg.num_envs
            for ret, length in finished_episodes(loop.ep_return, loop.ep_length, rewards, terminated, truncated, info):
                loss, q_mean = _pop_learning_stats(loop)
                loop.episodes += 1
                recent.append(ret)
                logger.row(
                    "episode",
                    loop.step,
                    episode=loop.episodes,
                    **{"return": ret},
                    length=length,
                    epsilon=round(eps, 5),
                    loss=loss,
                    q_mean=q_mean,
                    wall_s=round(clock.wall_s(), 3),
                )
                bar.set_postfix(ep=loop.episodes, ret=f"{np.mean(recent):.1f}", eps=f"{eps:.3f}", refresh=False)

            if loop.step >= cfg.learning_starts:
                for _ in range(crossed(prev, loop.step, cfg.train_freq) * cfg.gradient_steps):
                    _learn_once(parts)
                for _ in range(crossed(prev, loop.step, cfg.target_update_interval)):
                    agent.update_target()
                    if cfg.tau == 0:
                        break  # repeated hard copies are the same copy
            bar.update(cfg.num_envs)

            if crossed(prev, loop.step, cfg.eval_every):
                _evaluate(parts, logger, eval_seed, clock)
            if crossed(prev, loop.step, cfg.checkpoint_interval) and loop.step < cfg.total_steps:
                _check_loss(loop)
                _save(parts, checkpoints, logger, clock)
            if stop.requested:
                break
    finally:
        bar.close()
        stop.restore()
    if stop.requested:
        _save(parts, checkpoints, logger, clock)
        logger.close()
        raise KeyboardInterrupt(
            f"interrupted at step {loop.step}; checkpoint saved, continue with `dqnkit train --resume {run_dir}`"
        )
    sps = clock.steps_per_second()  # the loop's own rate, before the final evaluation and checkpoint
    if cfg.final_eval and loop.eval_step != loop.step:
        _evaluate(parts, logger, eval_seed, clock)
    _check_loss(loop)
    _save(parts, checkpoints, logger, clock)
    logger.close()
    loop.wall_s = clock.wall_s()
    return _finish(parts, run_dir, sps)


def _store(
    parts: Parts,
    actions: np.ndarray,
    rewards: np.ndarray,
    real_next: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
) -> None:
    """One vector step into the replay (through the n-step folder unless frames fold themselves)."""
    obs = parts.loop.obs
    if isinstance(parts.replay, FrameReplay):
        parts.replay.add_step(obs, actions, rewards, real_next, terminated, truncated)
    else:
        parts.replay.add_batch(*parts.folder.push(obs, actions, rewards, real_next, terminated, truncated))


def _learn_once(parts: Parts) -> None:
    """Sample, update, and hand the new |TD errors| back to a prioritized replay."""
    cfg, replay, loop = parts.config, parts.replay, parts.loop
    prioritized = hasattr(replay, "priorities")
    if prioritized:
        replay.priorities.beta = schedules.linear(
            cfg.per_beta, cfg.per_beta_final, cfg.per_beta_steps or cfg.total_steps, loop.step
        )
    batch = replay.sample(cfg.batch_size)
    stats = parts.agent.learn(batch)
    if prioritized:
        replay.update_priorities(batch.indices, stats.td_abs.cpu().numpy())
    loop.loss_sum, loop.q_sum = loop.loss_sum + stats.loss, loop.q_sum + stats.q_mean
    loop.n_losses += 1


def _evaluate(parts: Parts, logger: Logger, seed: int, clock: _Clock) -> None:
    cfg, loop = parts.config, parts.loop
    result = evaluate(parts.agent, cfg.env_id, cfg.eval_episodes, seed, cfg.eval_epsilon, gamma=cfg.gamma)
    returns = result.returns
    loop.eval_mean, loop.eval_std, loop.eval_step = float(returns.mean()), float(returns.std()), loop.step
    probe = {}
    if cfg.log_overestimation:
        probe["q_pred"], probe["q_real"] = overestimation(parts.agent, result)
    logger.row(
        "eval",
        loop.step,
        episode=loop.episodes,
        **{"return": loop.eval_mean},
        return_std=loop.eval_std,
        wall_s=round(clock.wall_s(), 3),
        **probe,
    )
    logger.flush()
    if cfg.stop_at_return is not None and loop.eval_mean >= cfg.stop_at_return:
        loop.stopped_early = True


def _save(parts: Parts, checkpoints: CheckpointDir, logger: Logger, clock: _Clock) -> None:
    # metrics first: a resumed run keeps exactly the rows up to its checkpoint's step,
    # so those rows must be on disk before the checkpoint that vouches for them.
    logger.flush()
    parts.loop.wall_s = clock.wall_s()
    checkpoints.save(parts.loop.step, snapshot(parts))


class _Clock:
    """Wall time of a run, summed over the sessions a resumed run was trained in."""

    def __init__(self, loop: Loop) -> None:
        self.loop, self.start_s, self.start_step = loop, time.perf_counter(), loop.step
        self.base_s = loop.wall_s

    def wall_s(self) -> float:
        return self.base_s + time.perf_counter() - self.start_s

    def steps_per_second(self) -> float:
        """Of this session only (a resumed run's earlier sessions may have run elsewhere)."""
        return (self.loop.step - self.start_step) / max(time.perf_counter() - self.start_s, 1e-9)


def _finish(parts: Parts, run_dir: Path, sps: float) -> dict[str, Any]:
    cfg, loop = parts.config, parts.loop
    summary = {
        "env_id": cfg.env_id,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "steps": loop.step,
        "episodes": loop.episodes,
        "updates": parts.agent.updates,
        "eval_return_mean": loop.eval_mean,
        "eval_return_std": loop.eval_std,
        "eval_episodes": cfg.eval_episodes,
        "stopped_early": loop.stopped_early,
        "resumed_with_fresh_episodes": loop.env_fresh_reset,
        "wall_s": round(loop.wall_s, 3),
        "sps": round(sps, 1),
        "device": str(parts.agent.device),
        "dqnkit_version": __version__,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    learning_curve(
        run_dir / "metrics.csv", run_dir / "learning_curve.png", title=f"{cfg.preset} on {cfg.env_id}, seed {cfg.seed}"
    )
    parts.envs.close()
    return summary


def _check_finite(rewards: np.ndarray, next_obs: np.ndarray, step: int) -> None:
    if not np.isfinite(rewards).all():
        raise NonFiniteError(f"non-finite reward {rewards.tolist()} at step {step}; the last checkpoint is kept")
    if next_obs.dtype.kind == "f" and not np.isfinite(next_obs).all():
        raise NonFiniteError(f"non-finite observation at step {step}; the last checkpoint is kept")


def _check_loss(loop: Loop) -> None:
    if not torch.isfinite(loop.loss_sum):
        raise NonFiniteError(
            f"non-finite loss by step {loop.step} (try a lower lr or max_grad_norm); the last checkpoint is kept"
        )


def _pop_learning_stats(loop: Loop) -> tuple[float | None, float | None]:
    """Mean loss and Q since the last call (None before learning starts); resets the sums."""
    _check_loss(loop)
    if not loop.n_losses:
        return None, None
    means = ((loop.loss_sum / loop.n_losses).item(), (loop.q_sum / loop.n_losses).item())
    loop.loss_sum, loop.q_sum, loop.n_losses = torch.zeros(()), torch.zeros(()), 0
    return means


class _StopFlag:
    """Turns Ctrl-C into a flag checked between iterations, so the checkpoint written on
    the way out is taken at a consistent point."""

    def __init__(self) -> None:
        self.requested = False
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ----------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def default_run_dir(config: Config, prefix: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.preset if config.preset != "custom" else config.env_id.replace("/", "_")
    return Path("runs") / f"{prefix}{name}-s{config.seed}-{stamp}"


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create ``run_dir``; a non-empty one is only replaced with explicit consent."""
    if run_dir.exists() and not run_dir.is_dir():
        raise DqnkitError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise DqnkitError(
                f"run directory {run_dir} is not empty; continue it with "
                f"`dqnkit train --resume {run_dir}` or replace it with --overwrite"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
