"""Replay for stacked Atari frames that stores each 84x84 frame once.

Storing a transition's stacked ``obs`` and ``next_obs`` naively costs 2 x 4 x 84 x 84 bytes
= 56 KB, and consecutive transitions share 7 of their 8 frames. :class:`FrameReplay` keeps
one row per env step instead: the newest frame of ``obs`` (7 KB), the action, the reward and
the frame's position in its episode. At the end of an episode it writes one extra *final*
row holding the last frame (the observation a truncated episode must bootstrap from). The
stacked observations are rebuilt at sample time:

- ``obs`` of row t = frames of rows t-3 .. t; rows before the episode's first are replaced
  by the first frame again (repeat padding, as gymnasium's FrameStackObservation does at a
  reset), so frames never leak across episode boundaries;
- ``next_obs`` = the stack at row t+k, where k = n, or fewer when a final row comes first:
  the n-step return ``sum_{i<k} gamma^i r_{t+i}`` and ``terminated`` are read off the rows
  t .. t+k at sample time, so the buffer also does the n-step folding for frames.

Each vector env writes its own ring (rows [env, slot]), so episodes of different envs never
interleave. A row is sampleable once its n-step window is complete and while all the frames
of its stack are still in the ring; rows that are not are rejected (uniform) or hold
priority 0 (:class:`PrioritizedFrameReplay`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dqnkit.replay.prioritized import Priorities, to_host
from dqnkit.replay.uniform import Batch

if TYPE_CHECKING:
    from dqnkit.replay.device_frames import DeviceFrames

_NORMAL, _FINAL_TERMINATED, _FINAL_TRUNCATED = 0, 1, 2
_CUT = 3  # the episode was abandoned mid-way (an Ape-X actor restarted): no window may reach this row


class FrameReplay:
    """``capacity`` rows of single frames, shared across ``num_envs`` per-env rings.

    Rows, not transitions: every episode costs one extra row for its final frame, so a
    capacity of C holds C * L / (L + 1) transitions of L-step episodes.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int] = (84, 84),
        stack: int = 4,
        seed: int = 0,
        *,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
    ) -> None:
        if capacity < num_envs * (stack + n_step + 1):
            raise ValueError(f"capacity {capacity} is too small for {num_envs} envs with stack {stack} and n {n_step}")
        self.num_envs, self.stack, self.n, self.gamma = num_envs, stack, n_step, gamma
        self.rows = capacity // num_envs  # ring length per env
        self.capacity = self.rows * num_envs
        self.frame_shape = tuple(frame_shape)
        self.obs_shape = (stack, *self.frame_shape)
        self.frames = np.zeros((num_envs, self.rows, *self.frame_shape), np.uint8)
        self.actions = np.zeros((num_envs, self.rows), np.int64)
        self.rewards = np.zeros((num_envs, self.rows), np.float32)
        self.kind = np.zeros((num_envs, self.rows), np.int8)  # _NORMAL or a final row
        self.ep_pos = np.zeros((num_envs, self.rows), np.int32)  # index of the frame in its episode
        self.pos = np.zeros(num_envs, np.int64)  # next row to write, per env
        self.written = np.zeros(num_envs, np.int64)  # rows ever written, per env
        self.next_ep_pos = np.zeros(num_envs, np.int32)
        self.rng = np.random.default_rng(seed)
        self._discounts = gamma ** np.arange(n_step, dtype=np.float64)
        self.device_frames: DeviceFrames | None = None  # a copy of the frames on the training device

    def keep_frames_on(self, device: Any) -> None:
        """Mirror the frames on a torch ``device`` (7 KB per row there): from now on samples
        gather their stacks on it, and ``obs``/``next_obs`` of a batch are device tensors."""
        from dqnkit.replay.device_frames import DeviceFrames  # torch stays out of host-only imports

        self.device_frames = DeviceFrames(self, device)

    def __len__(self) -> int:
        return int(np.minimum(self.written, self.rows).sum())

    @property
    def size(self) -> int:
        """Rows held (the same as ``len``)."""
        return len(self)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays."""
        return sum(a.nbytes for a in (self.frames, self.actions, self.rewards, self.kind, self.ep_pos))

    # ------------------------------------------------------------------ writing
    def add_step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        envs: np.ndarray | None = None,
    ) -> np.ndarray:
        """One vector env step: ``obs``/``next_obs`` [N, stack, H, W] uint8 (``next_obs`` the
        true next observations, i.e. the final ones where an episode ended; only their last
        frame is read). ``envs``: the rings these N envs write (default all, in order; Ape-X
        gives each actor its own). Returns the flat indices of the rows written."""
        env_ids = self._rings(envs)
        written = [self._write(env_ids, obs[:, -1], actions, rewards, np.full(len(env_ids), _NORMAL))]
        ended = np.flatnonzero(np.asarray(terminated) | np.asarray(truncated))
        if len(ended):
            kinds = np.where(np.asarray(terminated)[ended], _FINAL_TERMINATED, _FINAL_TRUNCATED)
            zeros = np.zeros(len(ended))
            written.append(self._write(env_ids[ended], next_obs[ended, -1], zeros, zeros, kinds))
            self.next_ep_pos[env_ids[ended]] = 0
        return np.concatenate(written)

    def _rings(self, envs: np.ndarray | None) -> np.ndarray:
        """The env rings a vector step writes: ``envs``, or all of them in order."""
        return np.arange(self.num_envs) if envs is None else np.asarray(envs)

    def cut(self, envs: np.ndarray) -> np.ndarray:
        """Abandon the episodes in progress in these rings (their writer restarted and will
        begin new ones): a cut row ends them, and no transition whose n-step window reaches
        it is ever sampled. Returns the rows written."""
        envs = np.asarray(envs)
        envs = envs[self.next_ep_pos[envs] > 0]
        if len(envs) == 0:
            return np.zeros(0, np.int64)
        blank = np.zeros((len(envs), *self.frame_shape), np.uint8)
        rows = self._write(envs, blank, np.zeros(len(envs)), np.zeros(len(envs)), np.full(len(envs), _CUT))
        self.next_ep_pos[envs] = 0
        return rows

    def _write(
        self, envs: np.ndarray, frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, kinds: np.ndarray
    ) -> np.ndarray:
        slots = self.pos[envs]
        self.frames[envs, slots] = frames
        self.actions[envs, slots] = actions
        self.rewards[envs, slots] = rewards
        self.kind[envs, slots] = kinds
        self.ep_pos[envs, slots] = self.next_ep_pos[envs]
        self.next_ep_pos[envs] += 1
        self.pos[envs] = (slots + 1) % self.rows
        self.written[envs] += 1
        return envs * self.rows + slots

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, beta: float | None = None) -> Batch:
        """``batch_size`` transitions drawn uniformly (with replacement) among sampleable rows;
        ``beta`` is for the prioritized buffers' interface (uniform weights are all ones)."""
        found = []  # (rows, k, kind of row t+k) of the sampleable candidates of each draw
        for _ in range(1000):
            live = np.minimum(self.written, self.rows)
            draw = self.rng.integers(0, live.sum(), size=batch_size)
            env = np.searchsorted(np.cumsum(live), draw, side="right")
            cand = env * self.rows + draw - (np.cumsum(live) - live)[env]
            ok, k, end_kind = self._check(cand)
            found.append((cand[ok], k[ok], end_kind[ok]))
            rows, ks, end_kinds = (np.concatenate(column)[:batch_size] for column in zip(*found))
            if len(rows) == batch_size:  # the horizons go along: gather need not find them again
                return self.gather(rows, np.ones(batch_size, np.float32), (ks, end_kinds))
        raise ValueError("no sampleable transition in the replay yet (too few steps stored)")

    def update_priorities(self, indices: np.ndarray, td_errors: Any) -> None:
        """Nothing to update: uniform sampling has no priorities."""

    def sampleable(self, idx: np.ndarray) -> np.ndarray:
        """Which rows (flat indices) are complete transitions whose frames are all in the ring."""
        return self._check(idx)[0]

    def _check(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sampleable, k, kind of row t+k) per row: :meth:`sampleable` and the horizons it reads."""
        env, slot = np.divmod(idx, self.rows)
        age = (self.pos[env] - 1 - slot) % self.rows  # rows written after this one
        live = np.minimum(self.written[env], self.rows)
        k, end_kind = self._horizons(env, slot, age)
        history = np.minimum(self.ep_pos[env, slot], self.stack - 1)
        whole = (age < live) & (k > 0) & (history <= live - 1 - age) & (end_kind != _CUT)
        return (self.kind[env, slot] == _NORMAL) & whole, k, end_kind

    def _horizons(self, env: np.ndarray, slot: np.ndarray, age: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(k, kind of row t+k) per row; k = 0 while the n-step window is still open."""
        ahead = np.arange(1, self.n + 1)
        rows = (slot[:, None] + ahead) % self.rows  # [B, n]
        kinds = np.where(ahead <= age[:, None], self.kind[env[:, None], rows], -1)  # -1: not written yet
        final = kinds > 0
        first_final = np.where(final.any(axis=1), final.argmax(axis=1) + 1, self.n)
        complete = final.any(axis=1) | (age >= self.n)
        k = np.where(complete, first_final, 0)
        end_kind = self.kind[env, (slot + k) % self.rows]
        return k, end_kind

    def gather(
        self, idx: np.ndarray, weights: np.ndarray, horizons: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Batch:
        """The transitions at sampleable rows ``idx`` with their stacked observations;
        ``horizons``: their (k, kind of row t+k), where the caller has them already."""
        env, slot = np.divmod(idx, self.rows)
        if horizons is None:
            horizons = self._horizons(env, slot, (self.pos[env] - 1 - slot) % self.rows)
        k, end_kind = horizons
        steps = np.arange(self.n)
        window = (slot[:, None] + steps) % self.rows
        rewards = np.where(steps < k[:, None], self.rewards[env[:, None], window], 0.0) @ self._discounts
        # obs and next_obs in one gather: one allocation instead of two measured 10x faster
        # here (two large arrays alive at once made the allocator return pages to the OS)
        both = self._stack(np.concatenate([env, env]), np.concatenate([slot, (slot + k) % self.rows]))
        b = len(idx)
        return Batch(
            both[:b],
            self.actions[env, slot],
            rewards.astype(np.float32),
            both[b:],
            (end_kind == _FINAL_TERMINATED).astype(np.float32),
            k.astype(np.int64),
            weights,
            idx,
        )

    def _stack(self, env: np.ndarray, slot: np.ndarray) -> Any:
        """[B, stack, H, W]: frames of rows slot-stack+1 .. slot, the episode's first repeated
        (a numpy array, or a tensor on the mirror's device)."""
        back = np.minimum(np.arange(self.stack - 1, -1, -1)[None, :], self.ep_pos[env, slot][:, None])
        rows = env[:, None] * self.rows + (slot[:, None] - back) % self.rows  # flat rows [B, stack]
        if self.device_frames is not None:
            return self.device_frames.stacks(self, rows)
        return self.frames.reshape(-1, *self.frame_shape).take(rows, axis=0)

    # ------------------------------------------------------------------ state
    _ROWS = ("frames", "actions", "rewards", "kind", "ep_pos")  # [num_envs, rows, ...] each
    _COUNTERS = ("pos", "written", "next_ep_pos")  # [num_envs] each

    def row_columns(self) -> dict[str, np.ndarray]:
        """The rows as [capacity, ...] views, row ``env * rows + slot`` (the flat index
        ``add_step`` returns): what an incremental checkpoint writes row by row."""
        return {name: getattr(self, name).reshape(self.capacity, *getattr(self, name).shape[2:]) for name in self._ROWS}

    def write_mark(self) -> np.ndarray:
        """A mark of how far writing has got: rows written per env."""
        return self.written.copy()

    def rows_since(self, mark: np.ndarray) -> np.ndarray:
        """Flat rows written after ``mark`` (each once): per env, the last ``written - mark``
        slots before ``pos``, at most its whole ring."""
        counts = self._written_since(mark)
        env = np.repeat(np.arange(self.num_envs), counts)  # env-major, oldest row first
        nth = np.arange(len(env)) - np.repeat(np.cumsum(counts) - counts, counts)  # 0 .. k-1 within each env
        return env * self.rows + (self.pos[env] - counts[env] + nth) % self.rows

    def safe_steps(self, mark: np.ndarray) -> int:
        """Vector steps this buffer can take before it overwrites a row written after
        ``mark``: a step writes at most two rows per env (the step's, and a final row)."""
        return int((self.rows - self._written_since(mark)).min()) // 2

    def _written_since(self, mark: np.ndarray) -> np.ndarray:
        """Rows per env written after ``mark`` and still in the ring [num_envs]."""
        return np.minimum(self.written - mark, self.rows)

    def state_dict(self, rows: bool = True) -> dict[str, Any]:
        """Ring positions and RNG, plus the rows unless ``rows=False`` (an incremental
        checkpoint stores them apart): enough to resume bit for bit."""
        names = self._ROWS + self._COUNTERS if rows else self._COUNTERS
        return {**{name: getattr(self, name).copy() for name in names}, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content into a buffer built with the same sizes (rows
        saved apart are loaded into :meth:`row_columns` by the caller)."""
        for name in self._ROWS + self._COUNTERS:
            if name not in state and name in self._ROWS:
                continue
            if state[name].shape != getattr(self, name).shape:
                raise ValueError("replay state does not match this buffer's capacity, envs or frame shape")
            getattr(self, name)[...] = state[name]
        self.rng.bit_generator.state = state["rng"]
        if self.device_frames is not None:
            self.device_frames.invalidate()  # and rows saved apart may still be loaded after this


class PrioritizedFrameReplay(FrameReplay):
    """:class:`FrameReplay` sampled by priority (one sum tree over all rows).

    A row enters with priority 0 and gets the largest priority seen once it becomes a
    complete transition; it drops back to 0 when its frames start to be overwritten.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int] = (84, 84),
        stack: int = 4,
        seed: int = 0,
        *,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(capacity, frame_shape, stack, seed, num_envs=num_envs, n_step=n_step, gamma=gamma)
        self.priorities = Priorities(self.capacity, alpha, beta, eps)
        self.pending = np.zeros(self.capacity, bool)  # written, not yet sampleable

    def add_step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        envs: np.ndarray | None = None,
    ) -> np.ndarray:
        """Store a vector step; rows that just became complete transitions get the max priority."""
        written = super().add_step(obs, actions, rewards, next_obs, terminated, truncated, envs)
        self._refresh(self._rings(envs), written)
        return written

    def cut(self, envs: np.ndarray) -> np.ndarray:
        """:meth:`FrameReplay.cut`; the rows whose window reaches the cut drop to priority 0."""
        written = super().cut(envs)
        self._refresh(np.asarray(envs), written)
        return written

    def _refresh(self, envs: np.ndarray, written: np.ndarray) -> None:
        """Priorities after rows were written to the rings of ``envs``."""
        self.priorities.set(written, 0.0)
        self.pending[written] = self.kind.reshape(-1)[written] == _NORMAL
        # Rows that may have changed state: the newest n + 2 per env (windows closing; an
        # episode's end writes two rows) and the oldest stack - 1 (their history was overwritten).
        near = np.concatenate([np.arange(-self.n - 2, 0), np.arange(0, self.stack - 1)])
        rows = (self.pos[envs, None] + near[None, :]) % self.rows
        candidates = np.unique((envs[:, None] * self.rows + rows).reshape(-1))
        ok = self.sampleable(candidates)
        ready = candidates[ok & self.pending[candidates]]
        self.priorities.set_max(ready)
        self.pending[ready] = False
        self.priorities.set(candidates[~ok & ~self.pending[candidates]], 0.0)

    def sample(self, batch_size: int, beta: float | None = None) -> Batch:
        """Proportional sample with IS weights corrected with ``beta`` (default: the last one given)."""
        if beta is not None:
            self.priorities.beta = beta
        return self.gather(*self.priorities.sample(batch_size, self.rng))

    def update_priorities(self, indices: np.ndarray, td_errors: Any) -> None:
        """New priorities |td| + eps for sampled rows (rows no longer sampleable stay at 0)."""
        keep = self.sampleable(indices)
        self.priorities.update(indices[keep], to_host(td_errors)[keep])

    def state_dict(self, rows: bool = True) -> dict[str, Any]:
        """The rows plus the sum tree and the rows still waiting to become sampleable."""
        return {**super().state_dict(rows), **self.priorities.state_dict(), "pending": self.pending.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content."""
        super().load_state_dict(state)
        self.priorities.load_state_dict(state)
        self.pending[:] = state["pending"]
