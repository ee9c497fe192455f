"""FrameReplay against a naive buffer that stores every stacked obs / next_obs in full.

The naive side is the path vector observations take (NStepFolder + the full stacks), so
frame replay must reproduce it exactly: every sampleable row, after many episodes with
resets and after the ring has wrapped around several times.
"""

import itertools

import numpy as np
import pytest

from dqnkit.replay import FrameReplay, PrioritizedFrameReplay
from dqnkit.replay.nstep import NStepFolder

SHAPE, STACK, GAMMA = (3, 2), 4, 0.9


def _simulate(replay, steps, num_envs, n, seed):
    """Random episodes; returns {flat row index: the naive transition last written there}."""
    rng = np.random.default_rng(seed)
    folders = [NStepFolder(n, GAMMA, 1, (STACK, *SHAPE), np.uint8) for _ in range(num_envs)]
    pending = [[] for _ in range(num_envs)]  # rows whose transition the folder still holds
    expected = {}
    counter = 1

    def frame():
        nonlocal counter
        counter += 1
        return np.full(SHAPE, counter % 251, np.uint8) + rng.integers(0, 3, SHAPE, dtype=np.uint8)

    def reset():
        first = frame()
        return np.stack([first] * STACK)  # FrameStackObservation's reset padding

    obs = np.stack([reset() for _ in range(num_envs)])
    for _ in range(steps):
        actions = rng.integers(0, 4, num_envs)
        rewards = rng.normal(size=num_envs).astype(np.float32)
        terminated = rng.random(num_envs) < 0.08
        truncated = ~terminated & (rng.random(num_envs) < 0.04)
        next_obs = np.stack([np.concatenate([o[1:], frame()[None]]) for o in obs])
        written = replay.add_step(obs, actions, rewards, next_obs, terminated, truncated)
        for e in range(num_envs):
            pending[e].append(written[e])
            out = folders[e].push(
                obs[e : e + 1],
                actions[e : e + 1],
                rewards[e : e + 1],
                next_obs[e : e + 1],
                terminated[e : e + 1],
                truncated[e : e + 1],
            )
            for t in zip(*out):
                expected[int(pending[e].pop(0))] = tuple(np.copy(x) for x in t)
        for e in np.flatnonzero(terminated | truncated):
            next_obs[e] = reset()
        obs = next_obs
    return expected


def _check_exact(batch, expected):
    """Every transition of ``batch`` is the naive buffer's transition of its row."""
    for j, row in enumerate(batch.indices):
        obs, action, ret, next_obs, terminated, k = expected[int(row)]
        np.testing.assert_array_equal(batch.obs[j], obs)
        np.testing.assert_array_equal(batch.next_obs[j], next_obs)
        assert batch.actions[j] == action and batch.horizons[j] == k
        assert batch.terminated[j] == float(terminated)
        assert batch.rewards[j] == pytest.approx(ret, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("num_envs", [1, 3])
def test_every_sampleable_row_matches_the_naive_buffer(n, num_envs):
    replay = FrameReplay(60 * num_envs, SHAPE, STACK, seed=0, num_envs=num_envs, n_step=n, gamma=GAMMA)
    expected = _simulate(replay, 400, num_envs, n, seed=n + num_envs)  # the ring wraps ~6 times
    rows = np.arange(replay.capacity)
    ok = rows[replay.sampleable(rows)]
    assert len(ok) > 0.8 * replay.capacity
    assert set(ok.tolist()) <= set(expected)  # nothing sampleable that the naive side lacks
    _check_exact(replay.gather(ok, np.ones(len(ok), np.float32)), expected)
    batch = replay.sample(256)  # its draws reject rows, so the horizons it passes on are filtered too
    assert replay.sampleable(batch.indices).all()
    _check_exact(batch, expected)


def test_stacks_never_cross_an_episode_boundary():
    replay = FrameReplay(200, SHAPE, STACK, seed=0, n_step=1)
    _simulate(replay, 150, 1, 1, seed=5)
    rows = np.arange(replay.capacity)
    ok = rows[replay.sampleable(rows)]
    first_rows = ok[replay.ep_pos.reshape(-1)[ok] == 0]
    assert len(first_rows) > 3
    batch = replay.gather(first_rows, np.ones(len(first_rows), np.float32))
    # an episode's first obs is its first frame four times (repeat padding), nothing older
    assert (batch.obs == batch.obs[:, -1:]).all()


def test_rows_whose_frames_were_overwritten_are_not_sampled():
    replay = FrameReplay(20, SHAPE, STACK, seed=0, n_step=1)
    obs = np.zeros((1, STACK, *SHAPE), np.uint8)
    for _ in range(30):  # one long episode: the oldest rows lose their history
        replay.add_step(obs, np.array([0]), np.array([1.0]), obs, np.array([False]), np.array([False]))
    oldest = replay.pos[0]
    tail = (oldest + np.arange(STACK - 1)) % replay.rows
    assert not replay.sampleable(tail).any()
    assert replay.sampleable(np.array([(oldest + STACK - 1) % replay.rows])).all()
    newest = (replay.pos[0] - 1) % replay.rows
    assert not replay.sampleable(np.array([newest])).any()  # its next frame is not there yet


@pytest.mark.parametrize("n", [1, 3])
def test_prioritized_frames_sample_only_complete_rows(n):
    replay = PrioritizedFrameReplay(120, SHAPE, STACK, seed=0, num_envs=2, n_step=n, gamma=GAMMA)
    expected = _simulate(replay, 300, 2, n, seed=11)
    rows = np.arange(replay.capacity)
    ok = replay.sampleable(rows)
    leaves = replay.priorities.tree[rows]
    assert (leaves[~ok] == 0).all()  # final rows, open windows, lost history: never drawn
    assert (leaves[ok] > 0).all()  # every complete transition can be drawn
    batch = replay.sample(64)
    _check_exact(batch, expected)
    replay.update_priorities(batch.indices, np.full(64, 7.0))
    assert replay.priorities.max_priority == pytest.approx(7.0 + 1e-6)


def test_memory_per_transition_is_within_target():
    capacity = 5000
    replay = FrameReplay(capacity, (84, 84), 4)
    per_row = replay.nbytes / capacity
    naive = 2 * 4 * 84 * 84
    # one extra row per episode: even 20-step episodes stay under 7.5 KB per transition
    assert per_row * 21 / 20 <= 7.5 * 1024
    assert per_row < naive / 7.5


def test_state_dict_round_trip_continues_identically():
    a = PrioritizedFrameReplay(90, SHAPE, STACK, seed=3, num_envs=3, n_step=3)
    _simulate(a, 100, 3, 3, seed=1)
    b = PrioritizedFrameReplay(90, SHAPE, STACK, seed=99, num_envs=3, n_step=3)
    b.load_state_dict(a.state_dict())
    x, y = a.sample(32), b.sample(32)
    for u, v in zip(x, y):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError):
        FrameReplay(60, SHAPE, STACK, num_envs=2).load_state_dict(a.state_dict())


def _steps(count: int, envs: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        obs = rng.integers(0, 255, (envs, 4, 6, 6), dtype=np.uint8)
        nxt = rng.integers(0, 255, (envs, 4, 6, 6), dtype=np.uint8)
        done = rng.random(envs) < 0.1
        yield obs, rng.integers(0, 3, envs), rng.normal(size=envs), nxt, done & (rng.random(envs) < 0.5), done


@pytest.mark.parametrize("steps_after_mark", [0, 1, 7, 25, 60])
def test_rows_since_a_mark_are_the_rows_written_after_it(steps_after_mark):
    """What the GPU mirror uploads and an incremental checkpoint saves: every row written
    after the mark, once each, per env oldest first; at most the whole ring."""
    buf = FrameReplay(3 * 20, (6, 6), num_envs=3)
    steps = _steps(30 + steps_after_mark, 3, seed=5)  # random frames: a rewritten row changes
    for step in itertools.islice(steps, 30):
        buf.add_step(*step)
    mark, before = buf.write_mark(), buf.frames.copy()
    for step in steps:
        buf.add_step(*step)
    rows = buf.rows_since(mark)
    changed = np.flatnonzero((buf.frames != before).reshape(buf.capacity, -1).any(axis=1))
    assert len(set(rows)) == len(rows) and set(rows) == set(changed)
    env, slot = np.divmod(rows, buf.rows)
    age = (buf.pos[env] - 1 - slot) % buf.rows
    assert (np.diff(env) >= 0).all() and (np.diff(age)[np.diff(env) == 0] < 0).all()


@pytest.mark.parametrize("cls", [FrameReplay, PrioritizedFrameReplay])
def test_rings_written_separately_equal_rings_written_together(cls):
    """Ape-X's actors each write their own rings: the buffer ends up as if one vector env
    had stepped them all."""
    together, apart = cls(400, (6, 6), 4, num_envs=4, n_step=3), cls(400, (6, 6), 4, num_envs=4, n_step=3)
    for obs, actions, rewards, nxt, terminated, truncated in _steps(150, 4, seed=0):
        together.add_step(obs, actions, rewards, nxt, terminated, truncated)
        for rings in (np.array([2, 3]), np.array([0, 1])):  # another order, too
            apart.add_step(obs[rings], actions[rings], rewards[rings], nxt[rings], terminated[rings],
                           truncated[rings], envs=rings)  # fmt: skip
    a, b = together.state_dict(), apart.state_dict()
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key], err_msg=key)


@pytest.mark.parametrize("cls", [FrameReplay, PrioritizedFrameReplay])
def test_a_cut_episode_gives_no_transition_that_reaches_past_it(cls):
    replay = cls(200, (6, 6), 4, num_envs=1, n_step=3)
    frames = [np.full((1, 4, 6, 6), i, np.uint8) for i in range(10)]
    no = np.zeros(1, bool)
    for i in range(6):  # an episode of 6 steps, never ended: its actor died
        replay.add_step(frames[i], np.zeros(1, np.int64), np.ones(1), frames[i + 1], no, no)
    cut = replay.cut(np.array([0]))
    assert len(cut) == 1 and len(replay.cut(np.array([0]))) == 0  # nothing left open to cut again
    rows = np.arange(6)
    # rows 0-2 have their whole 3-step window before the cut; rows 3-5 would reach into it
    assert replay.sampleable(rows).tolist() == [True, True, True, False, False, False]
    for i in range(4):  # the restarted actor's new episode starts from its own first frame
        replay.add_step(frames[i + 5], np.zeros(1, np.int64), np.ones(1), frames[i + 6], no, no)
    batch = replay.gather(np.array([7]), np.ones(1, np.float32))
    assert batch.obs[0, :, 0, 0].tolist() == [5, 5, 5, 5]  # padded with the new episode's first frame
    if cls is PrioritizedFrameReplay:
        leaves = replay.priorities.tree[np.arange(8)]
        assert (leaves[3:7] == 0).all() and (leaves[:3] > 0).all()


@pytest.mark.parametrize("cls", [FrameReplay, PrioritizedFrameReplay])
def test_stacks_gathered_on_the_device_equal_the_host_ones(cls):
    """The device mirror follows the host ring lazily (it uploads at sample time): sampled
    between writes, after a gap longer than a ring, across episode ends and a cut, and after a
    checkpoint's state (rows loaded apart, as an incremental checkpoint does) replaced a
    buffer that had sampled before, it gives the same batches from the same RNG. On the CPU the
    "device" is the CPU: the same torch code as on CUDA."""
    torch = pytest.importorskip("torch")

    def replay(seed):
        return cls(120, (6, 6), 4, seed=seed, num_envs=3, n_step=3)  # rings of 40 rows

    def same(a, b):
        assert torch.is_tensor(b.obs) and torch.is_tensor(b.next_obs)
        for name, u, v in zip(a._fields, a, b):
            np.testing.assert_array_equal(u, np.asarray(v), err_msg=name)

    host, mirrored = replay(5), replay(5)
    mirrored.keep_frames_on("cpu")
    for i, step in enumerate(_steps(300, 3, seed=2)):
        host.add_step(*step)
        mirrored.add_step(*step)
        if i == 150:
            host.cut(np.array([1]))
            mirrored.cut(np.array([1]))
        if i >= 20 and i % 7 == 0 and not 150 < i < 200:  # 50 steps without a sample: the rings wrap
            same(host.sample(16, beta=0.5), mirrored.sample(16, beta=0.5))

    restored = replay(0)
    restored.keep_frames_on("cpu")
    for obs, *rest, nxt, terminated, truncated in _steps(290, 3, seed=2):  # the same rows, other frames
        restored.add_step(255 - obs, *rest, 255 - nxt, terminated, truncated)
    restored.sample(8)  # its mirror now holds those frames, and marks them uploaded
    restored.load_state_dict(mirrored.state_dict(rows=False))
    for name, column in restored.row_columns().items():
        column[...] = mirrored.row_columns()[name]
    same(host.sample(16, beta=0.5), restored.sample(16, beta=0.5))


def test_frames_go_on_the_gpu_by_default_when_they_fit(monkeypatch):
    torch = pytest.importorskip("torch")
    from dqnkit import Config
    from dqnkit.build import gathers_on_device

    replay = FrameReplay(1000, (84, 84), 4)  # 7 MB of frames
    cuda, gib = torch.device("cuda"), 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * gib, 80 * gib))
    assert gathers_on_device(Config(), replay, cuda)
    assert not gathers_on_device(Config(frame_gather="host"), replay, cuda)
    assert not gathers_on_device(Config(), replay, torch.device("cpu"))
    assert gathers_on_device(Config(frame_gather="device"), replay, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * gib, 80 * gib))  # 2 GB must stay free
    with pytest.warns(UserWarning, match="gathered on the host"):
        assert not gathers_on_device(Config(), replay, cuda)
