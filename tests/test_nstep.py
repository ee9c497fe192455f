"""n-step folding checked by hand on short episodes, ending at every offset."""

import numpy as np
import pytest

from dqnkit.replay.nstep import NStepFolder

G = 0.5


def _run(n, rewards, end):
    """One env, observations 0, 1, 2, ...; the last step ends the episode as `end`."""
    folder = NStepFolder(n, G, 1, (1,), np.float32)
    out = []
    for t, r in enumerate(rewards):
        last = t == len(rewards) - 1
        tr = folder.push(
            np.array([[t]], np.float32),
            np.array([t % 2]),
            np.array([r]),
            np.array([[t + 1]], np.float32),
            np.array([last and end == "terminated"]),
            np.array([last and end == "truncated"]),
        )
        out += [
            (int(o[0]), float(R), int(no[0]), bool(te), int(k))
            for o, R, no, te, k in zip(tr.obs, tr.rewards, tr.next_obs, tr.terminated, tr.horizons)
        ]
    return out


def test_n1_is_the_identity():
    assert _run(1, [1.0, 2.0, 3.0], "terminated") == [(0, 1, 1, False, 1), (1, 2, 2, False, 1), (2, 3, 3, True, 1)]


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("end", ["terminated", "truncated"])
def test_three_step_returns_by_hand(length, end):
    rewards = [1.0, 2.0, 4.0, 8.0, 16.0][:length]
    got = _run(3, rewards, end)
    expected = []
    for t in range(length):
        k = min(3, length - t)
        ret = sum(G**i * rewards[t + i] for i in range(k))
        ends_episode = t + k == length
        expected.append((t, ret, t + k, ends_episode and end == "terminated", k))
    assert sorted(got) == sorted(expected)
    # each step appears exactly once
    assert sorted(o for o, *_ in got) == list(range(length))


def test_vector_envs_fold_independently():
    folder = NStepFolder(2, G, 2, (1,), np.float32)
    obs = np.array([[0], [10]], np.float32)
    a = folder.push(
        obs, np.array([0, 1]), np.array([1.0, 5.0]), obs + 1, np.array([False, True]), np.array([False, False])
    )
    # env 1 terminated after one step: its transition leaves at once with k = 1
    assert a.obs[:, 0].tolist() == [10] and a.horizons.tolist() == [1] and a.terminated.tolist() == [True]
    b = folder.push(
        obs + 1, np.array([1, 0]), np.array([2.0, 0.0]), obs + 2, np.array([False, False]), np.array([False, False])
    )
    assert b.obs[:, 0].tolist() == [0] and b.rewards.tolist() == [1.0 + G * 2.0] and b.next_obs[:, 0].tolist() == [2]


def test_state_round_trip():
    a = NStepFolder(3, G, 1, (1,), np.float32)
    a.push(
        np.zeros((1, 1), np.float32),
        np.array([1]),
        np.array([1.0]),
        np.ones((1, 1), np.float32),
        np.array([False]),
        np.array([False]),
    )
    b = NStepFolder(3, G, 1, (1,), np.float32)
    b.load_state_dict(a.state_dict())
    assert len(b.queues[0]) == 1 and b.queues[0][0][1] == 1
