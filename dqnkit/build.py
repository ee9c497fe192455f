"""What a run is made of, built from its config alone: envs, agent, replay (or rollout) and
the loop's counters (:class:`Parts`); and the same parts to and from a checkpoint.

:func:`build` is the one place a config becomes objects. :func:`snapshot` and :func:`restore`
are inverse: a run restored from a snapshot continues bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit import __version__
from dqnkit.agent import DQNAgent
from dqnkit.algorithms import DQN, Storage, algorithm, build_replay
from dqnkit.atari_pool import import_envpool
from dqnkit.checkpoint import FullReplay, load_checkpoint, replay_saver
from dqnkit.config import Config, from_dict
from dqnkit.envs import EnvMaker, check_env_id, env_family
from dqnkit.errors import CheckpointError, ConfigError, DqnkitError, first_line
from dqnkit.networks import build_q_network
from dqnkit.pqn import PQNAgent
from dqnkit.replay import FrameReplay, UniformReplay
from dqnkit.vector import get_env_states, send_step, set_env_state, steps_apart
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
    replay: Storage
    loop: Loop = field(default_factory=Loop)
    replay_saver: FullReplay = field(default_factory=FullReplay)  # how checkpoints keep `replay`
    save_deadline: float = math.inf  # the step by which a background save must have read the ring
    algo: DQN = field(init=False)  # what config.algorithm stores and when it learns

    def __post_init__(self) -> None:
        self.algo = algorithm(self.config)


def check_runnable(config: Config) -> None:
    """Refuse (exit 2) what this machine lacks for ``config``: envpool, a video writer, a CUDA
    device. (The env itself is checked by :func:`check_env_id`: a resumed run's env is built
    with its checkpoint, before anything is written.)"""
    if config.env_backend == "envpool":
        import_envpool()
    if config.eval_video != "none":
        require_video_writer(f".{config.eval_video}")
    resolve_device(config.device)


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
    agent = build_agent(config, obs_space.shape, int(envs.single_action_space.n), obs_dtype=obs_space.dtype)
    algo = algorithm(config)
    try:
        storage = algo.storage(obs_space.shape, obs_space.dtype)
    except DqnkitError:
        envs.close()  # worker processes or pool threads: not left behind by a refused build
        raise
    if not algo.keeps_replay:
        return Parts(config, envs, agent, storage)
    saver = replay_saver(config.replay_checkpoint, run_dir) if run_dir is not None else FullReplay()
    check_memory(storage.nbytes, config.buffer_size)
    if isinstance(storage, FrameReplay) and gathers_on_device(config, storage, agent.device):
        storage.keep_frames_on(agent.device)
    return Parts(config, envs, agent, storage, replay_saver=saver)


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


def build_agent(
    config: Config,
    obs_shape: tuple[int, ...],
    n_actions: int,
    *,
    learns: bool = True,
    obs_dtype: np.dtype | None = None,
) -> DQNAgent | PQNAgent:
    """A fresh agent of ``config.algorithm`` (network, optimizer; a target network for dqn).

    ``learns``: build the optimizer now, so that a learner's clock leaves out torch.optim's
    one-time import (0.8 s). An agent that only acts (``load``, an Ape-X actor) passes False:
    it builds the optimizer only if it ever learns. ``obs_dtype`` uint8 marks the pixel
    path's images outside Atari and MinAtar (their network scales them to [0, 1]).
    """
    atoms = 1 if config.distributional == "none" else config.n_atoms
    uint8 = obs_dtype is not None and np.dtype(obs_dtype) == np.uint8
    images = uint8 and env_family(config.env_id) == "vector"  # the pixel path's frames
    q_net = build_q_network(
        obs_shape,
        n_actions,
        config.hidden_sizes,
        dueling=config.dueling,
        atoms=atoms,
        noisy=config.noisy,
        noisy_sigma0=config.noisy_sigma0,
        layer_norm=config.layer_norm,
        images=images,
    )
    agent = algorithm(config).agent_class(q_net, obs_shape, n_actions, config, device=resolve_device(config.device))
    if learns:
        agent.optimizer  # noqa: B018  (the property builds it)
    return agent


def load(run_dir: str | Path, device: str = "auto", checkpoint: str | Path | None = None) -> DQNAgent | PQNAgent:
    """The trained agent of a run (its latest checkpoint): ``agent.act(obs, greedy=True)``.

    ``device`` is where it runs here (``auto``: cuda if this machine has it), whatever device
    it was trained on: a run trained on a GPU loads on a CPU-only machine. ``checkpoint``:
    another of the run's checkpoints, e.g. ``step_5000.pt`` (see :func:`dqnkit.checkpoint.find_checkpoint`).
    """
    ckpt = load_checkpoint(run_dir, required=("config", "agent"), checkpoint=checkpoint)
    config = from_dict(ckpt["config"]).replace(device=device)
    if "spaces" in ckpt:  # no env is built: loading an Atari agent needs no ROM
        obs_shape, n_actions = tuple(ckpt["spaces"]["obs_shape"]), int(ckpt["spaces"]["n_actions"])
        obs_dtype = ckpt["spaces"].get("obs_dtype")  # absent before the pixel path: no images to scale
    else:  # older checkpoints did not record them: ask the env
        obs_shape, obs_dtype, n_actions = check_env_id(EnvMaker.from_config(config))
    agent = build_agent(config, obs_shape, n_actions, learns=False, obs_dtype=obs_dtype)
    with _fitting_checkpoint():
        agent.load_state_dict(ckpt["agent"])
    return agent


def load_replay(run_dir: str | Path) -> UniformReplay | FrameReplay:
    """The replay of a run's latest checkpoint, rebuilt (rows read from its chunks where the
    run saves incrementally); empty where the run leaves the replay out. For inspection:
    ``replay = load_replay(d); replay.obs[: len(replay)]``."""
    ckpt = load_checkpoint(run_dir)
    config = from_dict(ckpt["config"])
    if not algorithm(config).keeps_replay:
        raise DqnkitError(f"{run_dir} is a {config.algorithm} run: it learns from short rollouts and keeps no replay")
    if "obs_dtype" in ckpt.get("spaces", {}):  # no env is built: an Atari replay needs no ROM
        obs_shape, obs_dtype = tuple(ckpt["spaces"]["obs_shape"]), np.dtype(ckpt["spaces"]["obs_dtype"])
    else:  # older checkpoints did not record the dtype: ask the env
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


def spaces(agent: DQNAgent | PQNAgent, obs_dtype: np.dtype) -> dict[str, Any]:
    """The observation shape and dtype and the action count a checkpoint records, so that
    :func:`load` and :func:`load_replay` rebuild the network and the replay without building
    the env."""
    return {"obs_shape": list(agent.obs_shape), "obs_dtype": np.dtype(obs_dtype).name, "n_actions": agent.n_actions}


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
        if loop.in_flight is not None:  # a step under way when the run stopped: sent again, received next
            send_step(parts.envs, loop.in_flight)
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
        "spaces": spaces(parts.agent, parts.envs.single_observation_space.dtype),
        "replay": parts.replay_saver.state(parts.replay),
        "loop": asdict(parts.loop),
        "envs": copy.deepcopy(get_env_states(parts.envs)),
        "torch_rng": torch.get_rng_state(),
        "dqnkit_version": __version__,
    }


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError('device cuda requested but torch sees no CUDA GPU; use `device="cpu"` or auto')
    return torch.device(name)
