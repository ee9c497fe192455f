"""The textbook facts the tabular methods must reproduce."""

import json

import numpy as np
import pytest

from dqnkit.cli import main
from dqnkit.tabular import cliff_walking, greedy_path, n_step_td, random_walk_values, td_control


@pytest.fixture(scope="module")
def cliff():
    mdp = cliff_walking()
    return mdp, {
        m: td_control(mdp, m, episodes=500, seeds=10, seed=i)
        for i, m in enumerate(("sarsa", "q_learning", "expected_sarsa"))
    }


@pytest.mark.slow
def test_cliff_walking_is_gymnasiums(cliff):
    mdp, _ = cliff
    assert mdp.shape == (4, 12) and mdp.start == 36 and mdp.n_actions == 4
    assert mdp.reward[36, 1] == -100 and mdp.next_state[36, 1] == 36  # the cliff sends you back
    assert mdp.terminal[35, 2] and mdp.reward[35, 2] == -1  # stepping down into the goal ends it
    assert len(mdp.hazards) == 10


@pytest.mark.slow
def test_q_learning_finds_the_13_step_cliff_edge(cliff):
    mdp, runs = cliff
    path, ret = greedy_path(mdp, runs["q_learning"][0].mean(0))
    assert ret == -13 and len(path) == 14
    assert set(path[1:-1]) <= set(range(24, 36)), "the optimal path hugs the cliff (row 2)"


@pytest.mark.slow
def test_sarsa_learns_the_longer_safe_path(cliff):
    mdp, runs = cliff
    path, ret = greedy_path(mdp, runs["sarsa"][0].mean(0))
    assert ret < -13 and ret > -30 and not set(path[1:-1]) & set(range(24, 36)) - {24, 35}


@pytest.mark.slow
def test_sarsa_collects_more_online_than_q_learning(cliff):
    _, runs = cliff
    sarsa, qlearn, expected = (runs[m][1][:, -100:].mean() for m in ("sarsa", "q_learning", "expected_sarsa"))
    assert sarsa > qlearn + 10
    assert expected > qlearn


def test_expected_sarsa_bootstraps_from_the_epsilon_greedy_expectation():
    from dqnkit.tabular.methods import _bootstrap

    q_next = np.array([[1.0, 3.0, 2.0, 0.0]])
    assert _bootstrap("expected_sarsa", q_next, np.array([0]), 0.2)[0] == pytest.approx(0.8 * 3 + 0.2 * 1.5)
    assert _bootstrap("sarsa", q_next, np.array([2]), 0.2)[0] == 2.0
    assert _bootstrap("q_learning", q_next, np.array([0]), 0.2)[0] == 3.0


def test_random_walk_rms_is_u_shaped():
    truth = random_walk_values()
    rms = []
    for n in (1, 2, 4, 8, 16, 32):
        rng = np.random.default_rng(n)
        rms.append(np.mean([np.sqrt(np.mean((n_step_td(n, 10, 0.1, rng=rng) - truth) ** 2)) for _ in range(30)]))
    best = int(np.argmin(rms))
    assert 0 < best < 5, rms
    assert rms[best] < rms[0] - 0.1 and rms[best] < rms[-1] - 0.03


def test_long_run_recovers_the_true_values():
    v = n_step_td(4, episodes=2000, alpha=0.005, rng=np.random.default_rng(0))
    assert np.abs(v - random_walk_values()).max() < 0.1
    assert random_walk_values()[9] == 0.0 and random_walk_values()[0] == pytest.approx(-0.9)


@pytest.mark.slow
def test_cli_writes_plots_and_results(tmp_path, capsys):
    out = tmp_path / "cw"
    assert main(["tabular", "cliff-walking", "--episodes", "60", "--seeds", "3", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"sarsa", "q_learning", "expected_sarsa"}
    for m in results["methods"].values():
        assert {"online_return_last100", "greedy_return"} <= set(m)
    assert (out / "cliff_walking_rewards.png").stat().st_size > 1000
    assert (out / "cliff_walking_paths.png").stat().st_size > 1000
    # a person reads a table; --json gives results.json's content
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "cliff-walking: 60 episodes, alpha 0.5, epsilon 0.1, 3 seeds"
    q_row = next(line for line in shown if line.startswith("q_learning "))
    assert f"{results['methods']['q_learning']['online_return_last100']:.1f} ± " in q_row
    assert q_row.endswith(f"{results['methods']['q_learning']['greedy_path_steps']} steps")
    assert shown[-1] == f"plots and results.json in {out}"
    assert main(["tabular", "cliff-walking", "--out", str(out), "--overwrite", "--json", "--seeds", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["seeds"] == 3
    assert main(["tabular", "cliff-walking", "--out", str(out)]) == 2  # no silent overwrite

    out = tmp_path / "rw"
    assert main(["tabular", "random-walk", "--seeds", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == [1, 2, 4, 8, 16, 32] and len(results["rms"]) == 6
    assert (out / "random_walk_rms.png").exists() and (out / "random_walk_alpha.png").exists()
    rms_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("RMS error"))
    assert rms_row.endswith(f"(best n = {results['best_n']})") and f"{results['rms'][0]:.3f}" in rms_row


@pytest.mark.parametrize(
    "args", [["--alpha", "0"], ["--alpha", "1.5"], ["--epsilon", "-0.1"], ["--episodes", "0"], ["--seeds", "0"]]
)
def test_cli_refuses_bad_values(args, capsys, tmp_path):
    assert main(["tabular", "cliff-walking", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "x").exists()
