"""Incremental replay checkpoints: only new rows are written, chunks are shared and pruned,
every buffer restores exactly, and a failure at any point leaves the previous checkpoint."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from dqnkit import presets, resume, train
from dqnkit.build import load_replay
from dqnkit.checkpoint import CheckpointDir, ReplayChunks, atomic_save, load_checkpoint, safe_load
from dqnkit.errors import CheckpointError
from dqnkit.replay import FrameReplay, PrioritizedFrameReplay, PrioritizedReplay, UniformReplay

SETTINGS = dict(
    total_steps=3000,
    learning_starts=200,
    batch_size=16,
    buffer_size=1000,
    hidden_sizes=(16,),
    eval_every=0,
    eval_episodes=1,
    stop_at_return=None,
    exploration_steps=1000,
    checkpoint_every=500,
    keep_checkpoints=2,
)


def _fill(replay, steps: int, seed: int) -> None:
    """``steps`` random vector steps (2 envs, episodes ending now and then)."""
    rng = np.random.default_rng(seed)
    shape = replay.obs_shape
    for _ in range(steps):
        obs = rng.integers(0, 255, (2, *shape)).astype(replay_dtype(replay))
        nxt = rng.integers(0, 255, (2, *shape)).astype(replay_dtype(replay))
        done = rng.random(2) < 0.1
        replay.add_step(obs, rng.integers(0, 4, 2), rng.normal(size=2), nxt, done & (rng.random(2) < 0.5), done)


def replay_dtype(replay) -> type:
    return np.uint8 if isinstance(replay, FrameReplay) else np.float32


BUFFERS = {
    "uniform": lambda: UniformReplay(300, (3,), np.float32, seed=0, num_envs=2, n_step=3),
    "prioritized": lambda: PrioritizedReplay(300, (3,), np.float32, seed=0, num_envs=2, n_step=3),
    "frames": lambda: FrameReplay(300, (6, 6), 4, seed=0, num_envs=2, n_step=3),
    "prioritized-frames": lambda: PrioritizedFrameReplay(300, (6, 6), 4, seed=0, num_envs=2, n_step=3),
}


def _same(a, b) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, state_b[key], err_msg=key)
    for name, column in a.row_columns().items():
        np.testing.assert_array_equal(column, b.row_columns()[name], err_msg=name)


@pytest.mark.parametrize("kind", BUFFERS)
def test_every_buffer_restores_exactly_from_chunks_after_wrapping(tmp_path, kind):
    replay, chunks = BUFFERS[kind](), ReplayChunks(tmp_path)
    checkpoints = CheckpointDir(tmp_path, keep=2)
    for i, steps in enumerate([40, 70, 200, 5]):  # the ring (150 rows per env) wraps at the third
        before = np.copy(replay.written)
        _fill(replay, steps, seed=i)
        state = chunks.state(replay)  # on the loop: small state, rows assigned to a chunk
        chunks.write()  # on the writer thread, before the checkpoint that refers to it
        checkpoints.save(i, {"replay": state})
        chunks.commit(checkpoints.numbered())
        # exactly the rows written since the last checkpoint, each once, at most a whole ring
        rows = safe_load(chunks.path(chunks.next_id - 1))["rows"]
        ring = replay.rows if isinstance(replay, FrameReplay) else replay.capacity
        assert len(rows) == np.minimum(replay.written - before, ring).sum() > 0
        assert len(np.unique(rows)) == len(rows)
    twin, fresh = BUFFERS[kind](), ReplayChunks(tmp_path)
    fresh.restore(twin, safe_load(checkpoints.latest)["replay"])
    _same(replay, twin)
    # and the restored buffer goes on as the original does
    _fill(replay, 30, seed=9), _fill(twin, 30, seed=9)
    _same(replay, twin)
    batch_a, batch_b = replay.sample(16, 0.5), twin.sample(16, 0.5)
    np.testing.assert_array_equal(batch_a.indices, batch_b.indices)


def test_a_run_writes_only_new_rows_and_keeps_only_referenced_chunks(tmp_path):
    run = tmp_path / "run"
    train(presets.get("cartpole", **SETTINGS), run)
    chunk_files = sorted((run / "checkpoints" / "replay").glob("chunk_*.pt"))
    sizes = [len(safe_load(p)["rows"]) for p in chunk_files]
    assert all(size <= SETTINGS["checkpoint_every"] for size in sizes), sizes
    # the two kept checkpoints cover the 1000-row replay plus one checkpoint interval
    assert sum(sizes) <= SETTINGS["buffer_size"] + SETTINGS["checkpoint_every"]
    kept = CheckpointDir(run).numbered()
    referenced = set()
    for path in kept:
        owner = safe_load(path)["replay"]["chunks"]["owner"]
        referenced |= set(np.unique(owner[owner >= 0]).tolist())
    assert {int(p.stem.split("_")[1]) for p in chunk_files} == referenced
    assert len(load_replay(run)) == SETTINGS["buffer_size"]


@pytest.mark.slow  # ~15-35 s: the fast suite keeps the shorter tests of the same code
def test_incremental_full_and_none_resume(tmp_path):
    cfg = presets.get("cartpole-rainbow", **SETTINGS, per_beta_steps=3000)  # beta: independent of --steps
    probe = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    from dqnkit import load

    q = {}
    for mode in ("incremental", "full"):
        train(cfg.replace(replay_checkpoint=mode, total_steps=1700), tmp_path / mode)
        resume(tmp_path / mode, total_steps=3000)
        q[mode] = load(tmp_path / mode).q_values(probe)
    train(cfg, tmp_path / "straight")
    np.testing.assert_array_equal(q["incremental"], load(tmp_path / "straight").q_values(probe))
    np.testing.assert_array_equal(q["full"], q["incremental"])

    train(cfg.replace(replay_checkpoint="none", total_steps=1700), tmp_path / "none")
    assert load_checkpoint(tmp_path / "none")["replay"] == {"omitted": True}
    with pytest.warns(UserWarning, match="refills from scratch"):
        summary = resume(tmp_path / "none", total_steps=3000)
    assert summary["resumed_with_empty_replay"] is True and summary["steps"] == 3000


def test_a_checkpoint_saved_whole_before_chunks_existed_resumes_into_chunks(tmp_path):
    run = tmp_path / "run"
    train(presets.get("cartpole", **{**SETTINGS, "replay_checkpoint": "full", "total_steps": 1000}), run)
    latest = CheckpointDir(run).latest
    old = safe_load(latest)
    del old["config"]["replay_checkpoint"]  # as written before this version: the default applies
    for path in CheckpointDir(run).numbered():
        path.unlink()
    atomic_save({k: v for k, v in old.items() if k != "format_version"}, run / "checkpoints" / "step_0000001000.pt")
    os.replace(run / "checkpoints" / "step_0000001000.pt", latest)
    os.link(latest, run / "checkpoints" / "step_0000001000.pt")
    resume(run, total_steps=1500)
    assert "chunks" in load_checkpoint(run)["replay"]
    assert len(load_replay(run)) == SETTINGS["buffer_size"]


@pytest.mark.parametrize("failing", [pytest.param("chunk", marks=pytest.mark.slow), "checkpoint"])
def test_a_failure_while_saving_leaves_the_previous_checkpoint_and_no_stray_chunk(tmp_path, monkeypatch, failing):
    """A crash after the new chunk is written but before the checkpoint that refers to it is
    renamed into place, or while the chunk itself is written: the previous checkpoint loads,
    the run resumes, and the chunk nobody refers to is deleted at the next save."""
    real_replace = os.replace
    target = {"chunk": "chunk_00000001.pt.tmp", "checkpoint": "step_0000001000.pt.tmp"}[failing]

    def replace(src, dst):
        if Path(src).name == target and not_yet:
            not_yet.clear()
            raise OSError("disk full (injected)")
        real_replace(src, dst)

    not_yet = [True]
    run = tmp_path / "run"
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        train(presets.get("cartpole", **{**SETTINGS, "total_steps": 1500}), run)
    monkeypatch.undo()
    # the run's files are closed on the error (metrics.csv and TensorBoard's file leaked, with its thread)
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert not {f for f in open_files if f.startswith(str(run.resolve()))}
    assert load_checkpoint(run)["loop"]["step"] == 500
    assert len(load_replay(run)) == 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CartPole resumes exactly: nothing to warn about
        assert resume(run)["steps"] == 1500
    names = sorted(p.name for p in (run / "checkpoints" / "replay").iterdir())
    referenced = set()
    for path in CheckpointDir(run).numbered():
        owner = safe_load(path)["replay"]["chunks"]["owner"]
        referenced |= {f"chunk_{i:08d}.pt" for i in np.unique(owner[owner >= 0]).tolist()}
    assert set(names) == referenced


def test_a_missing_chunk_is_refused_with_a_clear_error(tmp_path):
    run = tmp_path / "run"
    train(presets.get("cartpole", **{**SETTINGS, "total_steps": 1000}), run)
    next(iter(sorted((run / "checkpoints" / "replay").glob("chunk_*.pt")))).unlink()
    with pytest.raises(CheckpointError, match="replay chunk .* is missing"):
        resume(run, total_steps=1500)


@pytest.mark.parametrize("kind", BUFFERS)
def test_rows_are_read_from_the_ring_intact_for_safe_steps_more_steps(tmp_path, kind):
    """The writer thread reads the new rows from the ring after the loop has gone on: for up
    to ``safe_steps`` vector steps (the loop waits after that) none of them is overwritten."""
    replay, chunks = BUFFERS[kind](), ReplayChunks(tmp_path)
    _fill(replay, 100, seed=1)
    at_save = BUFFERS[kind]()
    at_save.load_state_dict(replay.state_dict())  # the buffer as it is when the checkpoint is taken
    state = chunks.state(replay)
    assert 0 < chunks.safe_steps < replay.capacity
    _fill(replay, chunks.safe_steps, seed=2)  # the loop goes on, up to the deadline
    chunks.write()
    atomic_save({"replay": state}, tmp_path / "ckpt.pt")
    twin = BUFFERS[kind]()
    ReplayChunks(tmp_path).restore(twin, safe_load(tmp_path / "ckpt.pt")["replay"])
    _same(at_save, twin)
