import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqnkit.replay import UniformReplay


def _fill(buf, n, start=0):
    for i in range(start, start + n):
        buf.add(np.full(3, i, np.float32), i % 2, float(i), np.full(3, i + 1, np.float32), i % 5 == 0)


def test_add_and_sample_shapes_and_dtypes():
    buf = UniformReplay(10, (3,), seed=0)
    _fill(buf, 4)
    b = buf.sample(8)
    assert b.obs.shape == (8, 3) and b.obs.dtype == np.float32
    assert b.next_obs.shape == (8, 3)
    assert b.actions.dtype == np.int64 and b.rewards.dtype == np.float32 and b.terminated.dtype == np.float32
    assert (b.weights == 1).all() and (b.horizons == 1).all()
    # every sampled row is a consistent transition
    assert np.array_equal(b.next_obs[:, 0], b.obs[:, 0] + 1)
    assert np.array_equal(b.rewards, b.obs[:, 0])
    assert np.array_equal(b.terminated, (b.obs[:, 0] % 5 == 0).astype(np.float32))


def test_wrap_around_keeps_the_newest():
    buf = UniformReplay(5, (3,), seed=0)
    _fill(buf, 8)
    assert len(buf) == 5 and buf.pos == 3
    assert sorted(buf.obs[:, 0].tolist()) == [3, 4, 5, 6, 7]
    assert set(buf.sample(200).rewards.tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0}


def test_add_batch_wraps_across_the_end():
    buf = UniformReplay(5, (1,), seed=0)
    obs = np.arange(7, dtype=np.float32)[:, None]
    slots = buf.add_batch(obs[:4], np.zeros(4), np.arange(4), obs[:4] + 1, np.zeros(4))
    assert slots.tolist() == [0, 1, 2, 3]
    slots = buf.add_batch(obs[4:], np.zeros(3), np.arange(4, 7), obs[4:] + 1, np.zeros(3))
    assert slots.tolist() == [4, 0, 1]
    assert buf.obs[:, 0].tolist() == [5, 6, 2, 3, 4] and len(buf) == 5 and buf.pos == 2


def test_sampling_is_uniform():
    buf = UniformReplay(50, (1,), seed=1)
    _fill_n = np.arange(50, dtype=np.float32)
    buf.add_batch(_fill_n[:, None], np.zeros(50), _fill_n, _fill_n[:, None], np.zeros(50))
    counts = np.bincount(buf.sample(50_000).indices, minlength=50)
    expected = 50_000 / 50
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 100  # 49 dof: p ~ 1e-5 at 100


def test_same_seed_same_samples_and_state_round_trip():
    a, b = UniformReplay(20, (3,), seed=3), UniformReplay(20, (3,), seed=3)
    _fill(a, 25)
    _fill(b, 25)
    assert np.array_equal(a.sample(16).indices, b.sample(16).indices)
    c = UniformReplay(20, (3,), seed=99)
    c.load_state_dict(a.state_dict())
    assert np.array_equal(a.sample(16).indices, c.sample(16).indices)
    assert np.array_equal(a.obs, c.obs) and a.pos == c.pos


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(ValueError, match="empty"):
        UniformReplay(4, (1,)).sample(2)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 9), chunks=st.lists(st.integers(1, 7), min_size=1, max_size=8))
def test_ring_matches_a_list_model(capacity, chunks):
    """Whatever the batch sizes, the buffer holds exactly the newest `capacity` items."""
    buf = UniformReplay(capacity, (1,), seed=0)
    model: list[float] = []
    counter = 0
    for n in chunks:
        values = np.arange(counter, counter + n, dtype=np.float32)
        counter += n
        buf.add_batch(values[:, None], np.zeros(n), values, values[:, None], np.zeros(n))
        model.extend(values.tolist())
    newest = model[-capacity:]
    assert len(buf) == len(newest)
    assert sorted(buf.rewards[: len(buf)].tolist()) == sorted(newest)
    assert buf.pos == counter % capacity
