"""The one flat, frozen ``Config`` of a run, and the only place that parses and validates it.

Every field carries its help text and its allowed range in ``metadata``; the CLI's
``--set`` parsing, ``dqnkit presets NAME`` and the README table are all generated from
these fields, so a new option is added here and nowhere else.

Counting convention: every ``*_steps``/``*_every``/``*_interval``/``train_freq`` value is
counted in environment transitions summed over all vector envs (``global_step``), like
CleanRL, so changing ``num_envs`` does not change how much data a run sees.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from dqnkit.errors import ConfigError


def _opt(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    choices: tuple[str, ...] | None = None,
    only: str | None = None,
) -> Any:
    """A dataclass field with its help text and allowed range attached; ``only`` names the
    algorithm the key belongs to (a non-default value with the other one is refused)."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "only": only}
    if isinstance(default, dict):  # a mutable default: each Config gets its own copy, left out of the hash
        return field(default_factory=lambda: dict(default), metadata=meta, hash=False)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """Everything that decides a run. Immutable: derive variants with :meth:`replace`."""

    # --- run ---
    algorithm: str = _opt(
        "dqn",
        "dqn: replay buffer and target network, with every Rainbow part. pqn: Parallel Q-learning, Q(lambda) over vector-env rollouts without replay or target network (see docs/algorithms.md).",
        choices=("dqn", "pqn"),
    )
    preset: str = _opt("custom", "Name of the preset this config started from (informational).")
    env_id: str = _opt("CartPole-v1", "Gymnasium environment id (Box or image observations, Discrete actions).")
    env_kwargs: dict[str, Any] = _opt(
        {},
        'Keyword arguments for gymnasium.make, a JSON object, e.g. {"continuous": false} for CarRacing-v3 (--env-kwarg continuous=false); every env of the run gets them.',
    )
    pixel_size: int = _opt(
        84,
        "Image observations (uint8 HxWxC or CxHxW, not Atari or MinAtar): resize frames to this square side. 0 keeps their size; images under 36 pixels a side are never enlarged (they get a small CNN).",
        lo=0,
    )
    grayscale: bool = _opt(
        True, "Image observations: turn RGB(A) frames gray, one channel (what lets the replay store each frame once)."
    )
    frame_stack: int = _opt(4, "Image observations: the agent sees this many latest frames, stacked.", lo=1)
    max_episode_steps: int = _opt(
        0,
        "Cut every episode (training, evaluation, films) at this many steps, a time-limit truncation replacing the env's own. 0: the env's own limit. Not for Atari (see docs/envs.md).",
        lo=0,
    )
    seed: int = _opt(0, "Seed for every random number generator of the run.", lo=0)
    total_steps: int = _opt(50_000, "Environment transitions to collect, summed over vector envs.", lo=1)
    num_envs: int = _opt(1, "Number of environments stepped in lockstep (see vector_env).", lo=1)
    device: str = _opt("auto", "Torch device: auto (cuda if available), cpu or cuda.", choices=("auto", "cpu", "cuda"))
    repeat_action_probability: float = _opt(
        0.25,
        "Atari (ALE/...) only: sticky actions, the chance the emulator repeats the previous action (0.25 as in the v5 envs; 0 for the Nature setting).",
        lo=0.0,
        hi=1.0,
    )
    cuda_graph: bool = _opt(
        True,
        "On CUDA, capture the update (forward, loss, backward, clipping, Adam) and acting's forward pass as CUDA graphs and replay them (see docs/gpu.md). Ignored on the CPU.",
    )
    frame_gather: str = _opt(
        "auto",
        "Where a frame replay builds sampled stacks: host (numpy, then copied) or device (frames mirrored on the GPU, 7 KB per row). auto: device on CUDA if it fits with 2 GB spare (docs/gpu.md).",
        choices=("auto", "host", "device"),
    )
    vector_env: str = _opt(
        "auto",
        "How num_envs > 1 gymnasium envs step: sync (in this process), async (worker processes) or auto (async for ALE ids, sync otherwise). See env_backend and docs/envs.md.",
        choices=("auto", "sync", "async"),
    )
    env_backend: str = _opt(
        "auto",
        "Who runs the training envs: gymnasium (dqnkit's wrappers), ale (ALE's C++ pool), envpool (envpool's pool) or auto (ale for ALE ids, gymnasium otherwise). See docs/envs.md.",
        choices=("auto", "gymnasium", "ale", "envpool"),
    )
    overlap_env_step: bool = _opt(
        False,
        "Step the envs while the agent learns: actions come from weights one batch of updates older, so runs differ from serial ones. Helps on a GPU with a C++ pool or async envs (docs/gpu.md).",
    )
    num_threads: int = _opt(
        1, "torch.set_num_threads for CPU work (0 leaves torch's default). One is fastest for small MLPs.", lo=0
    )
    flush_denormal: bool = _opt(
        True,
        "While training, the CPU flushes denormal floats (below 1.2e-38) to zero, which x86 computes ~100x slower; results are unchanged in practice (see docs/benchmarks.md).",
    )

    # --- learning ---
    gamma: float = _opt(0.99, "Discount factor, in (0, 1].", lo=0.0, hi=1.0, lo_open=True)
    lr: float = _opt(1e-3, "Learning rate (Adam for dqn, RAdam for pqn).", lo=0.0, lo_open=True)
    adam_eps: float = _opt(1e-8, "The optimizer's epsilon (Adam, or RAdam for pqn).", lo=0.0, lo_open=True)
    batch_size: int = _opt(64, "Transitions per gradient step.", lo=1, only="dqn")
    buffer_size: int = _opt(100_000, "Replay capacity in transitions.", lo=1, only="dqn")
    learning_starts: int = _opt(1000, "Transitions collected before the first gradient step.", lo=0, only="dqn")
    train_freq: int = _opt(1, "Run `gradient_steps` updates every this many transitions.", lo=1, only="dqn")
    gradient_steps: int = _opt(1, "Gradient steps per training round.", lo=1, only="dqn")
    target_update_interval: int = _opt(
        1000,
        "Update the target network every this many transitions: every interval * gradient_steps / "
        "train_freq updates (a hard copy every few dozen updates or fewer can make Q diverge).",
        lo=1,
        only="dqn",
    )
    tau: float = _opt(
        0.0,
        "0 = hard copy of the online weights; in (0, 1] = Polyak blend target <- tau*online + (1-tau)*target.",
        lo=0.0,
        hi=1.0,
        only="dqn",
    )
    double: bool = _opt(
        False, "Double DQN: the online network picks the next action, the target network values it.", only="dqn"
    )
    dueling: bool = _opt(False, "Dueling head: Q = V + A - mean(A).")
    loss: str = _opt("huber", "TD loss: huber (smooth L1) or mse.", choices=("huber", "mse"))
    max_grad_norm: float = _opt(10.0, "Clip the gradient's global norm to this (0 = no clipping).", lo=0.0)
    hidden_sizes: tuple[int, ...] = _opt(
        (64, 64), "Widths of the MLP's hidden layers, e.g. 256,256; empty for a linear Q-function."
    )
    n_step: int = _opt(
        1, "n-step returns: fold this many rewards into each transition (cut at episode ends).", lo=1, only="dqn"
    )

    layer_norm: bool = _opt(
        False,
        "LayerNorm after every hidden layer (convolutions included), before its ReLU: what lets PQN learn without a target network.",
    )

    # --- PQN (algorithm=pqn) ---
    rollout_steps: int = _opt(
        128,
        "pqn: steps per env in each rollout (a rollout holds num_envs * rollout_steps transitions).",
        lo=1,
        only="pqn",
    )
    q_lambda: float = _opt(
        0.65,
        "pqn: lambda of the Q(lambda) returns: 0 = one-step Q-learning targets, 1 = Monte-Carlo returns bootstrapped only where the rollout or the episode is cut.",
        lo=0.0,
        hi=1.0,
        only="pqn",
    )
    update_epochs: int = _opt(4, "pqn: passes over each rollout.", lo=1, only="pqn")
    num_minibatches: int = _opt(
        4,
        "pqn: minibatches per pass (each holds num_envs * rollout_steps / num_minibatches transitions).",
        lo=1,
        only="pqn",
    )
    anneal_lr: bool = _opt(False, "pqn: lower the learning rate linearly to 0 over the run's rollouts.", only="pqn")

    # --- Rainbow: noisy nets and distributional heads ---
    noisy: bool = _opt(
        False,
        "Noisy linear layers (Fortunato et al.): learned exploration noise, resampled every step and update; epsilon is 0 unless eps_start is set.",
        only="dqn",
    )
    noisy_sigma0: float = _opt(
        0.5, "Noisy nets: initial noise scale sigma0 (sigma = sigma0 / sqrt(fan_in)).", lo=0.0, only="dqn"
    )
    distributional: str = _opt(
        "none",
        "Value distribution: none (expected Q), c51 (categorical over n_atoms atoms in [v_min, v_max]) or qr (n_atoms quantiles, QR-DQN). The loss key applies to none only.",
        choices=("none", "c51", "qr"),
        only="dqn",
    )
    n_atoms: int = _opt(51, "c51: atoms of the support; qr: quantiles.", lo=2, only="dqn")
    v_min: float = _opt(-10.0, "c51: lowest atom of the support.", only="dqn")
    v_max: float = _opt(10.0, "c51: highest atom of the support.", only="dqn")
    qr_kappa: float = _opt(1.0, "qr: Huber threshold kappa of the quantile loss.", lo=0.0, lo_open=True, only="dqn")

    # --- prioritized replay ---
    prioritized: bool = _opt(False, "Proportional prioritized replay (Schaul et al. 2016) on a sum tree.", only="dqn")
    per_alpha: float = _opt(0.6, "PER: priority exponent (0 = uniform).", lo=0.0, hi=1.0, only="dqn")
    per_beta: float = _opt(0.4, "PER: initial importance-sampling exponent.", lo=0.0, hi=1.0, only="dqn")
    per_beta_final: float = _opt(1.0, "PER: beta reached linearly after per_beta_steps.", lo=0.0, hi=1.0, only="dqn")
    per_beta_steps: int = _opt(0, "PER: transitions over which beta anneals; 0 = total_steps.", lo=0, only="dqn")
    per_eps: float = _opt(1e-6, "PER: added to |TD error| so no priority is zero.", lo=0.0, lo_open=True, only="dqn")

    # --- exploration ---
    eps_schedule: str = _opt(
        "linear",
        "Epsilon schedule: linear (over exploration_fraction of total_steps) or exponential (eps_decay per gradient step).",
        choices=("linear", "exponential"),
    )
    eps_start: float | None = _opt(
        None, "Initial epsilon; none = 1.0, or 0 (no epsilon-greedy at all) with noisy nets.", lo=0.0, hi=1.0
    )
    eps_end: float = _opt(0.05, "Final epsilon.", lo=0.0, hi=1.0)
    exploration_fraction: float = _opt(
        0.1,
        "Linear schedule: fraction of total_steps over which epsilon falls to eps_end (used when exploration_steps is 0).",
        lo=0.0,
        hi=1.0,
        lo_open=True,
    )
    exploration_steps: int = _opt(
        0,
        "Linear schedule: transitions over which epsilon falls to eps_end; 0 = exploration_fraction * total_steps. Absolute steps keep a run's trajectory independent of --steps.",
        lo=0,
    )
    eps_decay: float = _opt(
        0.995, "Exponential schedule: epsilon is multiplied by this per gradient step.", lo=0.0, hi=1.0, lo_open=True
    )

    # --- evaluation, logging, checkpoints ---
    eval_every: int = _opt(10_000, "Greedy evaluation every this many transitions (0 = only at the end).", lo=0)
    eval_episodes: int = _opt(10, "Episodes per evaluation.", lo=1)
    eval_epsilon: float = _opt(0.0, "Epsilon used during evaluation (0 = greedy).", lo=0.0, hi=1.0)
    final_eval: bool = _opt(
        True,
        "Evaluate once more when training ends (unless the last periodic evaluation was at that step). Off: the summary keeps the last periodic evaluation, or none.",
    )
    eval_video: str = _opt(
        "none",
        "At each evaluation, also film one episode into videos/step_N.gif or .mp4 (mp4 needs dqnkit[video]), from the evaluation's seed. none: no films.",
        choices=("none", "gif", "mp4"),
    )
    video_max_steps: int = _opt(
        0,
        "Longest film (eval_video, and dqnkit eval's --video), in env steps: the film ends there if the episode has not. 0: five minutes of playback at the env's frame rate.",
        lo=0,
    )
    log_overestimation: bool = _opt(
        False,
        "At each evaluation, log the mean predicted max-Q of the start states (q_pred) and the discounted return the greedy agent then collects (q_real).",
    )
    stop_at_return: float | None = _opt(
        None, "Stop training early once an evaluation's mean return reaches this (none = never)."
    )
    checkpoint_every: int = _opt(0, "Checkpoint every this many transitions (0 = about ten per run).", lo=0)
    keep_checkpoints: int = _opt(3, "Numbered checkpoints to keep besides `latest`.", lo=1)
    replay_checkpoint: str = _opt(
        "incremental",
        "How checkpoints keep the replay: incremental (only rows new since the last one, in shared chunk files), full (the whole replay each time) or none (a resume refills it). See docs/checkpoints.md.",
        choices=("incremental", "full", "none"),
        only="dqn",
    )

    # ------------------------------------------------------------------ API
    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **overrides: Any) -> Config:
        """A copy with ``overrides`` applied (values may be strings, as from ``--set``)."""
        return from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        """The whole config as indented JSON (``config.json`` of a run)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @property
    def exploration_duration(self) -> float:
        """Transitions over which the linear schedule anneals epsilon."""
        return self.exploration_steps or self.exploration_fraction * self.total_steps

    @property
    def epsilon_range(self) -> tuple[float, float]:
        """(start, end) of the epsilon schedule; (0, 0) for noisy nets unless eps_start is set."""
        if self.eps_start is None:
            return (0.0, 0.0) if self.noisy else (1.0, self.eps_end)
        return self.eps_start, self.eps_end

    @property
    def rollout_size(self) -> int:
        """PQN: transitions per rollout, summed over envs."""
        return self.num_envs * self.rollout_steps

    @property
    def checkpoint_interval(self) -> int:
        """Transitions between checkpoints (``checkpoint_every`` or about ten per run)."""
        return self.checkpoint_every or max(1, math.ceil(self.total_steps / 10))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}

# Keys that older runs' config.json and checkpoints hold and that no longer decide anything:
# read and dropped, so those runs still load, resume and serve as --config.
RETIRED = frozenset({"direct_update"})  # the CPU update without autograd: every update uses autograd

# Keys that say where a run runs, how it is watched and when it is saved or stops, not what
# it learns from step to step: `train --resume` may change them (a run trained on a GPU goes
# on on a CPU-only machine), and `dqnkit plot` takes runs that differ only in these (and in
# seed and total_steps) as seeds of one variant.
RUN_SETTINGS = frozenset(
    {
        "device",
        "num_threads",
        "eval_every",
        "eval_episodes",
        "final_eval",
        "eval_video",
        "video_max_steps",
        "log_overestimation",
        "stop_at_return",
        "checkpoint_every",
        "keep_checkpoints",
    }
)


def from_dict(values: dict[str, Any]) -> Config:
    """Build a validated Config; every key must exist and every value must parse."""
    return Config(**coerce_all(values))


def parse_overrides(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """Parse ``["key=value", ...]`` from ``flag`` into typed values (checked again by Config)."""
    raw: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{flag} expects key=value, got {pair!r}")
        raw[key] = value.strip()
    return coerce_all(raw)


def env_kwarg_pairs(pairs: list[str], flag: str = "--env-kwarg") -> dict[str, Any]:
    """``["continuous=false", "map_name=8x8"]`` as env arguments: each value read as JSON
    where it is JSON (false, 0.5, [1, 2]), else kept as the text."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{flag} expects name=value, got {pair!r}")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value.strip()
    return kwargs


def coerce_all(values: dict[str, Any], hint: str = "run `dqnkit presets NAME` to see the keys") -> dict[str, Any]:
    """``values`` converted to their fields' types (:func:`coerce`); the one place a key that
    no config has is refused (``hint`` says where to look)."""
    values = {key: value for key, value in values.items() if key not in RETIRED}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; {hint}")
    return {key: coerce(key, value) for key, value in values.items()}


def coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (a string from the CLI or a JSON value) to the type of field ``key``."""
    kind = FIELDS[key].type
    try:
        if kind == "bool":
            return _to_bool(value)
        if kind == "int":
            return _to_int(value)
        if kind == "float":
            return _to_float(value)
        if kind == "float | None":
            return None if value is None or str(value).lower() in ("none", "null", "") else _to_float(value)
        if kind == "tuple[int, ...]":
            return _to_int_tuple(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
        if kind == "dict[str, Any]":
            return _to_kwargs(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot use {value!r} ({exc})") from None
    raise AssertionError(f"no parser for field type {kind}")


def _to_kwargs(value: Any) -> dict[str, Any]:
    """A JSON object (or its text, as ``--set env_kwargs='{"continuous": false}'`` gives it)
    as a dict of plain JSON values, copied: config.json must hold it as given."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            raise ValueError('expected a JSON object such as {"continuous": false}') from None
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object such as {"continuous": false}')
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise ValueError("expected JSON values (numbers, strings, booleans, null, lists, objects)") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_int(value: Any) -> int:
    """An integer from a number or from text such as ``1000000``, ``1_000_000`` or ``1e6``
    (ValueError otherwise): how ``--set`` and ``--steps`` read counts."""
    return _to_int(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.replace("_", ""))  # accepts 1e5 and 100_000
        except ValueError:
            raise ValueError("expected an integer") from None  # not float()'s own message
        if number.is_integer():
            return int(number)
    raise ValueError("expected an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected a number") from None  # not float()'s own message
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _to_int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in value.strip("[]() ").split(",") if v.strip()]
    return tuple(_to_int(v) for v in value)


def _validate(cfg: Config) -> None:
    """Range and type checks per field, then the checks that involve several fields."""
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        if coerce(name, value) != value or type(coerce(name, value)) is not type(value):
            raise ConfigError(f"{name}: {value!r} has the wrong type (expected {f.type})")
        _check_range(name, value, f.metadata)
    if any(h < 1 for h in cfg.hidden_sizes):
        raise ConfigError("hidden_sizes: every layer needs at least one unit")
    _check_algorithm_keys(cfg)
    if cfg.algorithm == "pqn":
        _check_rollout(cfg)
    elif cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than buffer_size {cfg.buffer_size}")
    elif cfg.learning_starts >= cfg.total_steps:
        raise ConfigError(
            f"learning_starts {cfg.learning_starts} is not below total_steps {cfg.total_steps}: "
            "nothing would be learned; raise `total_steps` or lower learning_starts"
        )
    if 0 < cfg.pixel_size < 3:
        raise ConfigError(
            f"pixel_size {cfg.pixel_size} is too small for a CNN: 3 or more, or 0 to keep the frames' size"
        )
    start, end = cfg.epsilon_range
    if end > start:
        raise ConfigError(f"eps_end {end} is above eps_start {start}")
    if cfg.max_episode_steps and cfg.env_id.startswith("ALE/"):
        raise ConfigError(
            f"max_episode_steps applies to non-Atari envs; {cfg.env_id} ends its games at 27,000 steps (108,000 frames)"
        )
    _check_env_kwargs(cfg)
    if cfg.env_backend in ("ale", "envpool") and not cfg.env_id.startswith("ALE/"):
        raise ConfigError(
            f"env_backend={cfg.env_backend} runs ALE/<Game>-v5 ids only, not {cfg.env_id!r}; use env_backend=gymnasium"
        )
    if cfg.env_backend in ("ale", "envpool") and cfg.vector_env != "auto":
        raise ConfigError(
            f"vector_env={cfg.vector_env} says how gymnasium envs are stepped; env_backend={cfg.env_backend} "
            "steps its own: use env_backend=gymnasium with it"
        )
    if cfg.distributional == "c51" and cfg.v_min >= cfg.v_max:
        raise ConfigError(f"v_min {cfg.v_min} must be below v_max {cfg.v_max}")


def _check_env_kwargs(cfg: Config) -> None:
    """Refuse an env argument that dqnkit sets itself from a config key of its own: the two
    would disagree, and one would silently win."""
    own = {
        "render_mode": "dqnkit sets it (eval --video films in rgb_array)",
        "max_episode_steps": "use `max_episode_steps=N`",
    }
    if cfg.env_id.startswith("ALE/"):
        own |= {
            "repeat_action_probability": "use `repeat_action_probability=P`",
            "frameskip": "dqnkit's Atari preprocessing skips 4 frames itself",
        }
    for key in cfg.env_kwargs:
        if key in own:
            raise ConfigError(f"env_kwargs: {key!r} is not passed to the env; {own[key]}")
    if cfg.env_kwargs and cfg.env_backend in ("ale", "envpool"):
        raise ConfigError(
            f"env_kwargs: env_backend={cfg.env_backend} builds its own Atari games, without gymnasium.make; "
            "use env_backend=gymnasium with env_kwargs"
        )


def _check_algorithm_keys(cfg: Config) -> None:
    """Refuse a key of the other algorithm set away from its default: it would be silently
    ignored (a replay size for PQN, a lambda for DQN). Left at its default, it is harmless."""
    for name, f in FIELDS.items():
        only, value = f.metadata.get("only"), getattr(cfg, name)
        if only is None or only == cfg.algorithm or value == f.default:
            continue
        hint = {
            "pqn": "PQN has no replay buffer, no target network and no Rainbow heads; leave it at its "
            f"default {f.default!r}, or start from a pqn preset such as pqn-cartpole",
            "dqn": f"leave it at its default {f.default!r}, or set algorithm=pqn",
        }[cfg.algorithm]
        raise ConfigError(f"{name}={value!r} is a {only} key that algorithm={cfg.algorithm} would ignore: {hint}")


def _check_rollout(cfg: Config) -> None:
    """PQN's rollout must split into equal minibatches, and the run must hold one rollout."""
    rollout = cfg.num_envs * cfg.rollout_steps
    if rollout % cfg.num_minibatches:
        raise ConfigError(
            f"num_envs * rollout_steps = {rollout} transitions do not split into num_minibatches="
            f"{cfg.num_minibatches} equal minibatches"
        )
    if cfg.total_steps < rollout:
        raise ConfigError(
            f"total_steps {cfg.total_steps} is below one rollout ({cfg.num_envs} envs x {cfg.rollout_steps} "
            "steps): nothing would be learned; raise `total_steps`"
        )


def _check_range(name: str, value: Any, meta: Any) -> None:
    if value is None or isinstance(value, (bool, tuple, dict)):
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    check_range(name, value, meta.get("lo"), meta.get("hi"), bool(meta.get("lo_open")))


def check_range(
    name: str, value: float, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> None:
    """Refuse ``value`` outside [lo, hi] (or (lo, hi] with ``lo_open``); also used for CLI flags."""
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{name}: {value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}: {value!r} must be <= {hi}")


def describe_fields() -> list[tuple[str, str, str]]:
    """(name, type, help) for every field, in declaration order (for --help and the docs)."""
    return [(name, str(f.type), f.metadata["help"]) for name, f in FIELDS.items()]


def markdown_table() -> str:
    """docs/config.md: every key with its type, default and help (a test keeps it in sync)."""
    defaults = Config().to_dict()
    rows = [
        f"| `{name}` | {kind} | `{json.dumps(defaults[name])}` | {help} |" for name, kind, help in describe_fields()
    ]
    return "\n".join(
        [
            "# Config keys",
            "",
            "Set any of them with `dqnkit train --set key=value` or "
            "`presets.get(name, key=value)`. Generated from `dqnkit/config.py` by "
            "`python -m dqnkit.config`.",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    print(markdown_table(), end="")
