"""Uniform experience replay: a preallocated numpy ring buffer.

The lesson's ``deque`` of tuples costs a Python loop and ``np.array(list)`` per sample;
here every field lives in one contiguous array and a batch is one fancy-index gather.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from dqnkit.replay.nstep import NStepFolder


class Batch(NamedTuple):
    """A sampled minibatch (numpy arrays, leading dimension B).

    ``horizons`` is k, the number of rewards folded into ``rewards`` (1 without n-step):
    the TD target bootstraps with ``gamma ** k`` from ``next_obs``. ``weights`` are the
    importance-sampling weights (all ones for uniform replay).
    """

    obs: np.ndarray  # [B, *obs_shape]
    actions: np.ndarray  # [B] int64
    rewards: np.ndarray  # [B] float32
    next_obs: np.ndarray  # [B, *obs_shape]
    terminated: np.ndarray  # [B] float32, 1.0 = no bootstrap
    horizons: np.ndarray  # [B] int64
    weights: np.ndarray  # [B] float32
    indices: np.ndarray  # [B] int64, slots in the buffer


class UniformReplay:
    """Ring buffer of ``capacity`` transitions, sampled uniformly with replacement.

    ``terminated`` is stored, never a combined ``done``: a time-limit truncation still
    bootstraps, so the caller simply does not mark it.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: Any = np.float32,
        seed: int = 0,
        *,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        # One record per transition, fields side by side: a sampled transition is one
        # contiguous read, not six scattered ones (the gather is memory-bound at 1M).
        record = np.dtype(
            [
                ("obs", self.obs_dtype, self.obs_shape),
                ("next_obs", self.obs_dtype, self.obs_shape),
                ("actions", np.int64),
                ("rewards", np.float32),
                ("terminated", np.float32),
                ("horizons", np.int64),
            ],
            align=True,
        )
        self.data = np.zeros(self.capacity, dtype=record)
        self.data["horizons"] = 1
        # each field as a view, made once: taking one off a structured array costs a µs per write
        self._columns = {name: self.data[name] for name in record.names}
        self.pos = 0  # next slot to write
        self.size = 0
        self.written = 0  # transitions ever written (which rows changed since a checkpoint)
        self.rng = np.random.default_rng(seed)
        # add_step folds n-step returns on the way in (FrameReplay folds at sample time instead)
        self.folder = NStepFolder(n_step, gamma, num_envs, self.obs_shape, self.obs_dtype)

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored transitions."""
        return int(self.data.nbytes)

    def add_step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> np.ndarray:
        """One vector env step [N, ...] (``next_obs``: the true next observations, final ones
        where an episode ended), folded into n-step transitions; returns the slots written."""
        if self.folder.n == 1:  # nothing to fold: every step is a whole transition
            return self.add_batch(obs, actions, rewards, next_obs, terminated)
        return self.add_batch(*self.folder.push(obs, actions, rewards, next_obs, terminated, truncated))

    def add(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool, horizon: int = 1
    ) -> None:
        """Store one transition."""
        self.add_batch(
            np.asarray(obs)[None],
            np.asarray([action]),
            np.asarray([reward]),
            np.asarray(next_obs)[None],
            np.asarray([terminated]),
            np.asarray([horizon]),
        )

    def add_batch(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        horizons: np.ndarray | None = None,
    ) -> np.ndarray:
        """Store N transitions (e.g. one per vector env); returns the N slots written."""
        n, pos = len(actions), self.pos
        if pos + n <= self.capacity:  # no wrap: slice writes, the per-step common case
            slots, where = np.arange(pos, pos + n), slice(pos, pos + n)
        else:
            slots = where = (pos + np.arange(n)) % self.capacity
        columns = self._columns
        columns["obs"][where] = obs
        columns["next_obs"][where] = next_obs
        columns["actions"][where] = actions
        columns["rewards"][where] = rewards
        columns["terminated"][where] = terminated
        columns["horizons"][where] = 1 if horizons is None else horizons
        self.pos = (pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.written += n
        return slots

    def sample(self, batch_size: int, beta: float | None = None) -> Batch:
        """``batch_size`` transitions drawn uniformly (with replacement); ``beta`` is for the
        prioritized buffers' interface (uniform weights are all ones)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        return self._gather(idx, np.ones(batch_size, dtype=np.float32))

    def _gather(self, idx: np.ndarray, weights: np.ndarray) -> Batch:
        rec = self.data.take(idx)  # one scattered read (take: ~10x faster than data[idx] here, measured)
        return Batch(
            rec["obs"],
            rec["actions"],
            rec["rewards"],
            rec["next_obs"],
            rec["terminated"],
            rec["horizons"],
            weights,
            idx,
        )

    def update_priorities(self, indices: np.ndarray, td_errors: Any) -> None:
        """Nothing to update: a uniform replay has no priorities (and never reads ``td_errors``,
        so a device tensor passed here is never copied to the host)."""

    def __getattr__(self, name: str) -> np.ndarray:
        """``buf.obs``, ``buf.rewards``, ...: each field as a [capacity, ...] view."""
        data = self.__dict__.get("data")
        if data is not None and name in data.dtype.names:
            return data[name]
        raise AttributeError(name)

    # ---------------------------------------------------------------- state and rows, for checkpoints
    def row_columns(self) -> dict[str, np.ndarray]:
        """The stored rows, each field as a [capacity, ...] view: what an incremental
        checkpoint (:class:`dqnkit.checkpoint.ReplayChunks`) writes row by row."""
        return dict(self._columns)

    def write_mark(self) -> np.ndarray:
        """A mark of how far writing has got; :meth:`rows_since` a mark lists what changed."""
        return np.array([self.written], np.int64)

    def rows_since(self, mark: np.ndarray) -> np.ndarray:
        """Slots written after ``mark`` (each once, oldest first): the last ``written - mark``
        slots before ``pos``, at most the whole ring."""
        count = self._written_since(mark)
        return (self.pos - count + np.arange(count)) % self.capacity

    def safe_steps(self, mark: np.ndarray) -> int:
        """Vector steps this buffer can take before it overwrites a row written after
        ``mark``: a step writes at most n transitions per env (an episode's end flushes them)."""
        return (self.capacity - self._written_since(mark)) // (len(self.folder.queues) * self.folder.n)

    def _written_since(self, mark: np.ndarray) -> int:
        """Transitions written after ``mark`` and still in the ring."""
        return min(self.written - int(mark[0]), self.capacity)

    def state_dict(self, rows: bool = True) -> dict[str, Any]:
        """Position, counters, RNG and the n-step folder, plus the rows unless ``rows=False``
        (an incremental checkpoint stores them apart): enough to resume bit for bit."""
        n = self.size
        fields = {name: self.data[name][:n].copy() for name in self.data.dtype.names} if rows else {}
        state = {**fields, "pos": self.pos, "size": n, "written": self.written, "rng": self.rng.bit_generator.state}
        return {**state, "folder": self.folder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content into a buffer of the same shape (rows saved
        apart are loaded into :meth:`row_columns` by the caller)."""
        n = int(state["size"])
        if n > self.capacity or ("obs" in state and tuple(state["obs"].shape[1:]) != self.obs_shape):
            raise ValueError("replay state does not match this buffer's capacity or observation shape")
        if "obs" in state:
            for name in self.data.dtype.names:
                self.data[name][:n] = state[name]
        self.pos, self.size = int(state["pos"]), n
        self.written = int(state.get("written", n))  # older checkpoints: as if written once
        self.rng.bit_generator.state = state["rng"]
        if "folder" in state:  # older checkpoints kept the folder beside the replay
            self.folder.load_state_dict(state["folder"])
