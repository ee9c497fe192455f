"""The training loop: the only code that touches env, replay and agent together.

One iteration: act -> step the vector env -> store the real transitions -> learn what is
due -> evaluate / checkpoint when due. For DQN, learning is ``gradient_steps`` updates every
``train_freq`` transitions and a target update every ``target_update_interval``; for PQN,
a full rollout is learned from and dropped. With ``overlap_env_step`` the next actions are
chosen and sent to the envs before learning, so that the envs step while the agent learns;
the step is received at the top of the next iteration. The loop decides *when*; the agent
decides *how* (targets, loss), the replay decides *what* is sampled.

Everything the loop needs to continue (counters, the episode in progress, RNGs, env
state) is in :class:`Loop` or in the components' ``state_dict``, so a checkpoint taken
between two iterations resumes bit for bit. Checkpoints are written by a thread while the
loop goes on (:func:`_save`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit import __version__, schedules
from dqnkit.agent import DQNAgent
from dqnkit.atari_pool import import_envpool
from dqnkit.checkpoint import CheckpointDir, FullReplay, replay_saver, safe_load
from dqnkit.config import RUN_SETTINGS, Config, from_dict
from dqnkit.envs import (
    EnvMaker,
    check_env_id,
    finished_episodes,
    get_env_states,
    recv_step,
    send_step,
    set_env_state,
    steps_apart,
    true_next_obs,
)
from dqnkit.errors import CheckpointError, ConfigError, DqnkitError, first_line
from dqnkit.evaluate import warn_if_endless
from dqnkit.files import RunLock, atomic_write_text
from dqnkit.monitor import (
    RunMonitor,
    check_loss,
    check_transition,
    default_run_dir,
    open_run_dir,
    pop_learning_stats,
    record_learning_stats,
    run_summary,
)
from dqnkit.networks import build_q_network
from dqnkit.pqn import PQNAgent, Rollout
from dqnkit.replay import FrameReplay, PrioritizedFrameReplay, PrioritizedReplay, UniformReplay
from dqnkit.video import require_video_writer


@dataclass
class Loop:
    """Counters and the episode in progress: the loop's own resumable state."""

    step: int = 0  # transitions collected, summed over envs
    episodes: int = 0
    wall_s: float = 0.0  # training time, summed over resumed sessions
    eval_mean: float = math.nan
    eval_std: float = math.nan
    eval_step: int = -1
    eval_due: bool = False  # an evaluation due at `step` that a stop abandoned
    stopped_early: bool = False
    obs: np.ndarray | None = None  # [N, *obs] current observations
    ep_return: np.ndarray | None = None  # [N]
    ep_length: np.ndarray | None = None  # [N]
    env_fresh_reset: bool = False  # the envs could not be restored and were reset on resume
    replay_refilled: bool = False  # resumed without the replay (replay_checkpoint=none)
    refill_until: int = 0  # no updates before this step: the emptied replay fills up again
    in_flight: np.ndarray | None = None  # [N] actions sent whose step is not received yet (overlap_env_step)
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
    agent: DQNAgent | PQNAgent
    # where transitions go, by one interface (add_step): dqn's replay buffer (uniform or
    # prioritized, vectors or frames), or pqn's rollout in progress
    replay: UniformReplay | FrameReplay | Rollout
    loop: Loop = field(default_factory=Loop)
    replay_saver: FullReplay = field(default_factory=FullReplay)  # how checkpoints keep `replay`
    save_deadline: float = math.inf  # the step by which a background save must have read the ring


# ----------------------------------------------------------------------------- public API
def train(
    config: Config,
    run_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train from scratch into ``run_dir``; returns the summary (also in summary.json).

    Refuses a non-empty ``run_dir`` unless ``overwrite`` (which deletes it first).
    ``on_eval(step, mean_return)`` is called after each greedy evaluation is logged; an
    exception it raises stops the run there (``dqnkit tune`` prunes a trial so), keeping
    the metrics logged and the last checkpoint.
    """
    check_env_id(EnvMaker.from_config(config))  # bad input is refused before the disk is touched
    check_runnable(config)
    warn_if_endless(config, training=True)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    with open_run_dir(config, run_dir, overwrite):
        try:
            parts = build(config, run_dir)
        except DqnkitError:  # refused (a replay this machine cannot hold): leave no half-made run behind
            shutil.rmtree(run_dir)
            raise
        with _envs_closed(parts):
            _reset_envs(parts)
            return _run(parts, run_dir, progress, on_eval)


def resume(
    run_dir: str | Path,
    total_steps: int | None = None,
    *,
    progress: bool = False,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its latest checkpoint, up to ``total_steps``.

    ``changes``: run settings to change on the way (:data:`~dqnkit.config.RUN_SETTINGS`,
    e.g. ``device="cpu"`` for a run trained on a GPU); a key that changes what the run learns
    is refused. On another device or thread count the run goes on, not bit for bit.

    A run that is complete, or stopped early at ``stop_at_return``, is refused (ConfigError)
    unless ``total_steps`` is above its steps (or ``changes`` sets ``stop_at_return``): there
    is nothing else to continue. (One that was stopped after its last checkpoint but before
    its summary.json finishes that.)
    """
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    config, done, changes = from_dict(ckpt["config"]), ckpt["loop"]["step"], changes or {}
    learning = sorted(set(changes) - RUN_SETTINGS)
    if learning:
        raise ConfigError(
            f"{learning[0]} changes what the run learns, which a resumed run keeps; a resume may change "
            f"{', '.join(sorted(RUN_SETTINGS))} (or train a new run: --config {run_dir / 'config.json'})"
        )
    config = config.replace(**changes)
    go_on = total_steps is not None or "stop_at_return" in changes  # asked to: an early stop no longer applies
    finished = done >= config.total_steps or (ckpt["loop"]["stopped_early"] and not go_on)
    if total_steps is not None:
        if total_steps <= done:
            raise ConfigError(f"`total_steps` {total_steps:,} is not above the {done:,} steps this run already has")
        config = config.replace(total_steps=total_steps)
    elif finished and (run_dir / "summary.json").exists():
        why = "stopped early (its evaluation reached stop_at_return)" if done < config.total_steps else "is complete"
        raise ConfigError(
            f"{run_dir} {why} at step {done:,}: nothing to resume; `total_steps` above {done:,} trains it further"
        )
    check_runnable(config)
    with RunLock(run_dir):  # one process at a time trains into a run
        parts = build(config, run_dir)
        with _envs_closed(parts):
            restore(parts, ckpt)  # a checkpoint that does not fit is refused before anything is written
            atomic_write_text(run_dir / "config.json", config.to_json())
            if go_on:
                parts.loop.stopped_early = False
            return _run(parts, run_dir, progress)


def check_runnable(config: Config) -> None:
    """Refuse (exit 2) what this machine lacks for ``config``: envpool, a video writer, a CUDA
    device. (The env itself is checked by :func:`check_env_id`: a resumed run's env is built
    with its checkpoint, before anything is written.)"""
    if config.env_backend == "envpool":
        import_envpool()
    if config.eval_video != "none":
        require_video_writer(f".{config.eval_video}")
    resolve_device(config.device)


RESUMABLE = ("config", "agent", "replay", "loop", "envs")  # what `train --resume` needs


def load_checkpoint(
    run_dir: str | Path, required: tuple[str, ...] = RESUMABLE, checkpoint: str | Path | None = None
) -> dict[str, Any]:
    """The latest checkpoint of a run (or the one :func:`find_checkpoint` finds for
    ``checkpoint``), loaded safely; exit-2 errors for anything wrong.

    ``required``: the keys the caller needs; an agent alone (``config``, ``agent``) is in every
    dqnkit checkpoint, Ape-X's included, and a resumable one holds :data:`RESUMABLE`.
    """
    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    ckpt = _load_latest(CheckpointDir(run_dir)) if checkpoint is None else safe_load(path)
    if "apex" in ckpt and "loop" in required:
        raise CheckpointError(
            f"{run_dir} is an Ape-X run: its checkpoints hold the learner, not the actors' episodes or the "
            f"replay, so it cannot resume (`dqnkit eval {run_dir}` and dqnkit.load read it)"
        )
    for key in required:
        if key not in ckpt:
            what = "resumable dqnkit training" if "loop" in required else "dqnkit"
            raise CheckpointError(f"{run_dir} checkpoint lacks {key!r}: not a {what} checkpoint")
    return ckpt


def find_checkpoint(run_dir: str | Path, name: str | Path | None = None) -> Path:
    """The checkpoint file of a run that ``name`` names, without reading it: None or
    ``latest.pt`` the latest, ``step_N.pt`` the one of step N (with or without the zeros of
    its file name), another file of its ``checkpoints/``, or a path to a file. Anything else
    is an exit-2 error naming the run's checkpoints."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DqnkitError(f"run directory {run_dir} {'is a file' if run_dir.exists() else 'does not exist'}")
    if not (run_dir / "checkpoints").is_dir() and not (run_dir / "config.json").is_file():
        raise DqnkitError(_not_a_run(run_dir))
    checkpoints = CheckpointDir(run_dir)
    if name is None or str(name) == checkpoints.latest.name:
        if not checkpoints.latest.is_file() and (run_dir / "config.json").is_file():
            raise CheckpointError(
                f"{run_dir} has no checkpoint: it stopped before its first; train it anew with "
                f"`dqnkit train --config {run_dir / 'config.json'} --run-dir {run_dir} --overwrite`"
            )
        return checkpoints.latest
    for path in (checkpoints.dir / name, Path(name)):
        if path.is_file():
            return path
    step = re.fullmatch(r"step_(\d+)\.pt", Path(name).name)
    for path in checkpoints.numbered():
        if step is not None and int(path.stem.split("_")[1]) == int(step.group(1)):
            return path
    kept = ", ".join(p.name for p in checkpoints.numbered()) or "none"
    raise CheckpointError(f"{run_dir} has no checkpoint {name} (its checkpoints: {kept}, and latest.pt)")


def _not_a_run(path: Path) -> str:
    """Why ``path`` is not a run directory, naming the runs below it (runs/, an experiment's)."""
    # three levels down at most (runs/, an experiment's runs/NAME): not a walk of a whole home directory
    found = (path.glob("/".join(["*"] * depth + ["checkpoints", "latest.pt"])) for depth in range(1, 4))
    runs = sorted(c.parent.parent for pattern in found for c in pattern)
    what = f"{path} is not a dqnkit run directory (a run's has config.json and checkpoints/)"
    if not runs:
        return f"{what}; it holds no run either"
    more = f" and {len(runs) - 3} more" if len(runs) > 3 else ""
    return f"{what}; the runs in it: {', '.join(str(r) for r in runs[:3])}{more}"


def _load_latest(checkpoints: CheckpointDir) -> dict[str, Any]:
    """``latest.pt``, or where it does not load (a disk's fault: saves are atomic), an error
    naming the newest earlier checkpoint that does, and how to make it the latest. (A run
    without a checkpoint was refused by :func:`find_checkpoint`.)"""
    try:
        return safe_load(checkpoints.latest)
    except CheckpointError as exc:
        if not checkpoints.latest.is_file():
            raise
        latest = checkpoints.latest.stat()
        for path in reversed(checkpoints.numbered()):
            if path.stat().st_ino == latest.st_ino:  # latest.pt is a hard link to the newest
                continue
            try:
                safe_load(path)
            except CheckpointError:
                continue
            raise CheckpointError(
                f"{exc}; an earlier checkpoint loads: `ln -f {path} {checkpoints.latest}` makes it the one "
                "eval and --resume read"
            ) from None
        raise CheckpointError(f"{exc}, and no earlier checkpoint of the run loads") from None


# ----------------------------------------------------------------------------- building
def build(config: Config, run_dir: str | Path | None = None) -> Parts:
    """Envs, network, agent and replay for ``config``, seeded; nothing is run yet. With a
    ``run_dir``, checkpoints keep the replay as ``replay_checkpoint`` says (else whole)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    envs = EnvMaker.from_config(config).make_vec(config.num_envs, config.seed)
    if config.overlap_env_step and not steps_apart(envs):
        warnings.warn(
            f"overlap_env_step: {config.env_id}'s envs step in this process (sync), so nothing overlaps; "
            "vector_env=async (or an ALE pool, for ALE ids) steps them apart",
            stacklevel=3,
        )
    obs_space = envs.single_observation_space
    agent = build_agent(config, obs_space.shape, int(envs.single_action_space.n))
    if config.algorithm == "pqn":  # a rollout is small: checkpoints keep it whole
        rollout = Rollout(config.rollout_steps, config.num_envs, obs_space.shape, obs_space.dtype)
        return Parts(config, envs, agent, rollout)
    saver = replay_saver(config.replay_checkpoint, run_dir) if run_dir is not None else FullReplay()
    try:
        replay = build_replay(config, obs_space.shape, obs_space.dtype)
    except DqnkitError:
        envs.close()  # worker processes or pool threads: not left behind by a refused build
        raise
    check_memory(replay.nbytes, config.buffer_size)
    if isinstance(replay, FrameReplay) and gathers_on_device(config, replay, agent.device):
        replay.keep_frames_on(agent.device)
    return Parts(config, envs, agent, replay, replay_saver=saver)


def build_replay(config: Config, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> UniformReplay | FrameReplay:
    """FrameReplay for stacked uint8 frames [S, H, W] (each frame stored once), else the
    record-array replay; prioritized when ``config.prioritized``. Every one takes a vector
    step (``add_step``, n-step folding inside), samples with a beta and takes priorities back."""
    try:
        return _replay(config, obs_shape, obs_dtype)
    except MemoryError as exc:  # numpy asked the kernel for more than it will promise
        why = first_line(exc).split(" for an array")[0] or "out of memory"
        raise ConfigError(f"buffer_size {config.buffer_size:,}: {why}; lower buffer_size") from None


def _replay(config: Config, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> UniformReplay | FrameReplay:
    per = dict(alpha=config.per_alpha, beta=config.per_beta, eps=config.per_eps)
    steps = dict(num_envs=config.num_envs, n_step=config.n_step, gamma=config.gamma)
    seed = config.seed + 1
    if stores_frames(obs_shape, obs_dtype, config):
        if config.prioritized:
            return PrioritizedFrameReplay(config.buffer_size, obs_shape[1:], obs_shape[0], seed, **steps, **per)
        return FrameReplay(config.buffer_size, obs_shape[1:], obs_shape[0], seed, **steps)
    if config.prioritized:
        return PrioritizedReplay(config.buffer_size, obs_shape, obs_dtype, seed=seed, **steps, **per)
    return UniformReplay(config.buffer_size, obs_shape, obs_dtype, seed=seed, **steps)


def check_memory(nbytes: int, buffer_size: int) -> None:
    """Warn when a replay of ``nbytes`` will not fit in this machine's available memory. Its pages are
    only touched as it fills, so the run starts, and is killed hours later when it fills."""
    available = available_memory()
    if available is not None and nbytes > available:
        warnings.warn(
            f"the replay needs {_size(nbytes)} once full (buffer_size {buffer_size:,}) and this machine has "
            f"{_size(available)} available: the run would be killed as it fills; lower buffer_size",
            stacklevel=3,
        )


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gathers_on_device(config: Config, replay: FrameReplay, device: torch.device) -> bool:
    """Whether ``replay`` mirrors its frames on the training device (``config.frame_gather``):
    on CUDA by default, where a sample then sends only row indices, unless the mirror would
    leave less than 2 GB of the GPU's memory free."""
    if config.frame_gather != "auto":
        return config.frame_gather == "device"
    if device.type != "cuda":
        return False
    free = torch.cuda.mem_get_info(device)[0]
    if replay.frames.nbytes + 2 * 2**30 <= free:
        return True
    warnings.warn(
        f"the replay's frames ({replay.frames.nbytes / 2**30:.1f} GB) do not fit in the GPU's free memory "
        f"({free / 2**30:.1f} GB) with 2 GB to spare: sampled stacks are gathered on the host",
        stacklevel=2,
    )
    return False


def stores_frames(obs_shape: tuple[int, ...], obs_dtype: np.dtype, config: Config) -> bool:
    """Stacked uint8 frames [S, H, W] (Atari's, the pixel path's): the replay keeps each
    frame once (FrameReplay). See :meth:`dqnkit.envs.EnvMaker.stores_frames`."""
    return EnvMaker.from_config(config).stores_frames(obs_shape, obs_dtype)


def build_agent(
    config: Config, obs_shape: tuple[int, ...], n_actions: int, *, learns: bool = True
) -> DQNAgent | PQNAgent:
    """A fresh agent of ``config.algorithm`` (network, optimizer; a target network for dqn).

    ``learns``: build the optimizer now, so that a learner's clock leaves out torch.optim's
    one-time import (0.8 s). An agent that only acts (``load``, an Ape-X actor) passes False:
    it builds the optimizer only if it ever learns.
    """
    atoms = 1 if config.distributional == "none" else config.n_atoms
    q_net = build_q_network(
        obs_shape,
        n_actions,
        config.hidden_sizes,
        dueling=config.dueling,
        atoms=atoms,
        noisy=config.noisy,
        noisy_sigma0=config.noisy_sigma0,
        layer_norm=config.layer_norm,
    )
    kind = PQNAgent if config.algorithm == "pqn" else DQNAgent
    agent = kind(q_net, obs_shape, n_actions, config, device=resolve_device(config.device))
    if learns:
        agent.optimizer  # noqa: B018  (the property builds it)
    return agent


def load(run_dir: str | Path, device: str = "auto", checkpoint: str | Path | None = None) -> DQNAgent | PQNAgent:
    """The trained agent of a run (its latest checkpoint): ``agent.act(obs, greedy=True)``.

    ``device`` is where it runs here (``auto``: cuda if this machine has it), whatever device
    it was trained on: a run trained on a GPU loads on a CPU-only machine. ``checkpoint``:
    another of the run's checkpoints, e.g. ``step_5000.pt`` (see :func:`find_checkpoint`).
    """
    ckpt = load_checkpoint(run_dir, required=("config", "agent"), checkpoint=checkpoint)
    config = from_dict(ckpt["config"]).replace(device=device)
    if "spaces" in ckpt:  # no env is built: loading an Atari agent needs no ROM
        obs_shape, n_actions = tuple(ckpt["spaces"]["obs_shape"]), int(ckpt["spaces"]["n_actions"])
    else:  # older checkpoints did not record them: ask the env
        obs_shape, _, n_actions = check_env_id(EnvMaker.from_config(config))
    agent = build_agent(config, obs_shape, n_actions, learns=False)
    with _fitting_checkpoint():
        agent.load_state_dict(ckpt["agent"])
    return agent


def load_replay(run_dir: str | Path) -> UniformReplay | FrameReplay:
    """The replay of a run's latest checkpoint, rebuilt (rows read from its chunks where the
    run saves incrementally); empty where the run leaves the replay out. For inspection:
    ``replay = load_replay(d); replay.obs[: len(replay)]``."""
    ckpt = load_checkpoint(run_dir)
    config = from_dict(ckpt["config"])
    if config.algorithm == "pqn":
        raise DqnkitError(f"{run_dir} is a pqn run: pqn learns from short rollouts and keeps no replay")
    obs_shape, obs_dtype, _ = check_env_id(EnvMaker.from_config(config))
    replay = build_replay(config, obs_shape, obs_dtype)
    with _fitting_checkpoint():
        replay_saver(config.replay_checkpoint, run_dir).restore(replay, ckpt["replay"])
    return replay


@contextlib.contextmanager
def _fitting_checkpoint() -> Iterator[None]:
    """Loading state that does not fit the parts built from its config (other sizes, missing
    keys) is a one-line CheckpointError, not a traceback."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint does not match its config ({first_line(exc)})") from None


def spaces(agent: DQNAgent | PQNAgent) -> dict[str, Any]:
    """The observation shape and action count a checkpoint records, so that :func:`load`
    rebuilds the network without building the env."""
    return {"obs_shape": list(agent.obs_shape), "n_actions": agent.n_actions}


def restore(parts: Parts, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's state into freshly built parts."""
    with _fitting_checkpoint():
        parts.agent.load_state_dict(ckpt["agent"])
        parts.replay_saver.restore(parts.replay, ckpt["replay"])
        if "folder" in ckpt:  # older checkpoints kept the n-step folder beside the replay
            parts.replay.folder.load_state_dict(ckpt["folder"])
    loop = Loop(**ckpt["loop"])
    if ckpt["replay"].get("omitted"):
        warnings.warn(
            "this run's checkpoints leave the replay out (replay_checkpoint=none): it refills from "
            f"scratch, and learning waits {parts.config.learning_starts} steps for it",
            stacklevel=2,
        )
        loop.replay_refilled, loop.refill_until = True, loop.step + parts.config.learning_starts
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
        loop.obs, loop.env_fresh_reset, loop.in_flight = obs, True, None
        loop.ep_return, loop.ep_length = np.zeros_like(loop.ep_return), np.zeros_like(loop.ep_length)
    torch.set_rng_state(ckpt["torch_rng"])
    parts.loop = loop


def snapshot(parts: Parts) -> dict[str, Any]:
    """Everything needed to continue the run bit for bit."""
    return {
        "config": parts.config.to_dict(),
        "agent": copy.deepcopy(parts.agent.state_dict()),
        "spaces": spaces(parts.agent),
        "replay": parts.replay_saver.state(parts.replay),
        "loop": asdict(parts.loop),
        "envs": copy.deepcopy(get_env_states(parts.envs)),
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


def per_beta(config: Config, step: int) -> float:
    """Prioritized replay's importance-sampling exponent now: ``per_beta`` -> ``per_beta_final``
    over ``per_beta_steps`` env steps (default: the whole run)."""
    return schedules.linear(config.per_beta, config.per_beta_final, config.per_beta_steps or config.total_steps, step)


def crossed(prev: int, now: int, every: int) -> int:
    """How many multiples of ``every`` lie in (prev, now]: events due this iteration."""
    return now // every - prev // every if every > 0 else 0


@contextlib.contextmanager
def _envs_closed(parts: Parts) -> Iterator[None]:
    """Close the envs however the run ends (complete, an error, Ctrl-C): an async vector env's
    worker processes and a pool's threads are not left behind in a process that goes on.
    After an error, closing is best effort: a worker that died with it must not replace it."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            _close_envs(parts)
        raise
    _close_envs(parts)


def _close_envs(parts: Parts) -> None:
    if parts.loop.in_flight is not None:  # a step under way (an early stop, or an error)
        with contextlib.suppress(Exception):  # an env that failed is closed all the same
            recv_step(parts.envs, parts.loop.in_flight)
    parts.envs.close()


OnEval = Callable[[int, float], None] | None  # train()'s on_eval: (step, mean return) after each evaluation


def _run(parts: Parts, run_dir: Path, progress: bool, on_eval: OnEval = None) -> dict[str, Any]:
    with flush_denormals(parts.config.flush_denormal):
        return _loop(parts, run_dir, progress, on_eval)


def _loop(parts: Parts, run_dir: Path, progress: bool, on_eval: OnEval) -> dict[str, Any]:
    loop = parts.loop
    monitor = RunMonitor(parts.config, run_dir, step=loop.step, wall_s=loop.wall_s, progress=progress)
    evaluate = partial(_evaluate, parts, monitor, on_eval)
    try:
        return _steps(parts, monitor, run_dir, evaluate)
    except BaseException:
        monitor.abandon()
        raise


def _steps(parts: Parts, monitor: RunMonitor, run_dir: Path, evaluate: Callable[[], None]) -> dict[str, Any]:
    cfg, agent, loop = parts.config, parts.agent, parts.loop
    learn_due = _pqn_updates if cfg.algorithm == "pqn" else _dqn_updates
    try:
        if loop.eval_due:  # a stop abandoned it before the checkpoint: played now, at its step
            evaluate()
        while loop.step < cfg.total_steps and not loop.stopped_early and not monitor.interrupted:
            if loop.step >= parts.save_deadline:  # the next step could overwrite rows being saved
                monitor.wait_saved()
                parts.save_deadline = math.inf
            eps = epsilon(cfg, loop.step, agent.updates)
            if loop.in_flight is None:  # the serial loop; or an overlapped one's first step
                _send(parts, agent.act(loop.obs, eps))
            actions, loop.in_flight = loop.in_flight, None
            next_obs, rewards, terminated, truncated, info = recv_step(parts.envs, actions)
            real_next = true_next_obs(next_obs, info)
            check_transition(rewards, real_next, loop.step)
            parts.replay.add_step(loop.obs, actions, rewards, real_next, terminated, truncated)

            prev, loop.obs = loop.step, next_obs
            loop.step += cfg.num_envs
            for ret, length in finished_episodes(loop.ep_return, loop.ep_length, rewards, terminated, truncated, info):
                loop.episodes += 1
                monitor.episode(loop.step, loop.episodes, ret, length, eps, *pop_learning_stats(loop, loop.step))

            if cfg.overlap_env_step and loop.step < cfg.total_steps:  # the envs step while the agent learns
                _send(parts, agent.act(loop.obs, epsilon(cfg, loop.step, agent.updates)))
            learn_due(parts, prev)
            monitor.advance(cfg.num_envs)

            loop.eval_due = loop.eval_due or crossed(prev, loop.step, cfg.eval_every) > 0
            if loop.eval_due:
                evaluate()
            if crossed(prev, loop.step, cfg.checkpoint_interval) and loop.step < cfg.total_steps:
                _save(parts, monitor)
        sps = monitor.steps_per_second(loop.step)  # the loop's own rate, before the final evaluation and checkpoint
        if cfg.final_eval and loop.eval_step != loop.step and not monitor.interrupted:
            evaluate()  # a stop abandons it too: the resumed run plays it
    finally:
        monitor.close()
    if monitor.interrupted:
        _save(parts, monitor)
        monitor.wait_saved()
        monitor.logger.close()
        raise monitor.interruption(f"checkpoint saved, continue with `dqnkit train --resume {run_dir}`")
    _save(parts, monitor)
    summary = {
        **run_summary(cfg, loop.step, loop.episodes, agent, loop.eval_mean, loop.eval_std, loop.stopped_early),
        "resumed_with_fresh_episodes": loop.env_fresh_reset,
        "resumed_with_empty_replay": loop.replay_refilled,
        "wall_s": round(loop.wall_s, 3),
        "sps": round(sps, 1),
    }
    return monitor.finish(summary, title=f"{cfg.preset} on {cfg.env_id}, seed {cfg.seed}")


def _send(parts: Parts, actions: np.ndarray) -> None:
    """Start the envs' step on ``actions``; the loop receives it (:func:`recv_step`) later."""
    send_step(parts.envs, actions)
    parts.loop.in_flight = actions


def _dqn_updates(parts: Parts, prev: int) -> None:
    """DQN's updates due since step ``prev``: every ``train_freq`` transitions
    ``gradient_steps`` replay updates, every ``target_update_interval`` a target update."""
    cfg, loop = parts.config, parts.loop
    if loop.step < max(cfg.learning_starts, loop.refill_until):
        return
    for _ in range(crossed(prev, loop.step, cfg.train_freq) * cfg.gradient_steps):
        _learn_once(parts)
    for _ in range(crossed(prev, loop.step, cfg.target_update_interval)):
        parts.agent.update_target()
        if cfg.tau == 0:
            break  # repeated hard copies are the same copy


def _pqn_updates(parts: Parts, prev: int) -> None:
    """PQN learns from a rollout once it is full, then drops it."""
    if parts.replay.full:
        record_learning_stats(parts.loop, parts.agent.learn_rollout(parts.replay))
        parts.replay.clear()


def _learn_once(parts: Parts) -> None:
    """Sample, update, and hand the new |TD errors| back (a no-op for uniform replay)."""
    cfg, replay, loop = parts.config, parts.replay, parts.loop
    batch = replay.sample(cfg.batch_size, per_beta(cfg, loop.step))
    stats = parts.agent.learn(batch)
    replay.update_priorities(batch.indices, stats.td_abs)
    record_learning_stats(loop, stats)


def _evaluate(parts: Parts, monitor: RunMonitor, on_eval: OnEval = None) -> None:
    """The evaluation due at this step; one that a stop abandons stays due (``eval_due``):
    the checkpoint says so, and the resumed run plays it first. ``on_eval`` hears of it last."""
    loop = parts.loop
    result = monitor.evaluate(parts.agent, loop.step, loop.episodes)
    if result is None:
        return
    loop.eval_mean, loop.eval_std = result
    loop.eval_step, loop.eval_due = loop.step, False
    loop.stopped_early = loop.stopped_early or monitor.reached_goal(loop.eval_mean)
    if on_eval is not None:
        on_eval(loop.step, loop.eval_mean)


def _save(parts: Parts, monitor: RunMonitor) -> None:
    check_loss(parts.loop.loss_sum, parts.loop.step)
    parts.loop.wall_s = monitor.wall_s()
    saver = parts.replay_saver
    monitor.wait_saved()  # the previous save commits first: the new chunk holds the rows since it
    payload = snapshot(parts)  # copies: the loop goes on while a thread writes them
    monitor.save(parts.loop.step, payload, before=saver.write, after=saver.commit, background=True)
    # the new replay rows are read from the ring by that thread: wait for it before they could be overwritten
    parts.save_deadline = parts.loop.step + parts.config.num_envs * saver.safe_steps


@contextlib.contextmanager
def flush_denormals(on: bool) -> Iterator[None]:
    """``torch.set_flush_denormal(on)`` for this thread (the CPU's flush-to-zero mode) while
    the block runs, then the mode it had before: the process is the caller's."""
    before = _flushing_denormals()
    torch.set_flush_denormal(on)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _flushing_denormals() -> bool:
    """Whether this thread's CPU flushes denormals: 1e-39 is one, and survives a product only if not."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError('device cuda requested but torch sees no CUDA GPU; use `device="cpu"` or auto')
    return torch.device(name)
