"""Each experiment end to end in a tiny configuration, and the measures it reports."""

import json
import os
import re

import numpy as np
import pytest

from dqnkit import experiments, plots, presets, stats
from dqnkit.cli import main


def _rows(returns, steps=None):
    steps = steps if steps is not None else np.cumsum(np.maximum(returns, 1)).astype(int)
    return [{"kind": "episode", "step": str(s), "return": str(r)} for s, r in zip(steps, returns)]


def test_final_return_is_the_last_100_episodes():
    assert experiments.final_return(_rows([0.0] * 50 + [10.0] * 100)) == 10.0


def test_collapses_counts_falls_below_half_the_peak():
    steady = [200.0] * 100
    assert experiments.collapses(_rows(steady)) == 0
    twice = [200.0] * 40 + [10.0] * 40 + [200.0] * 40 + [10.0] * 40
    assert experiments.collapses(_rows(twice)) == 2
    assert experiments.collapses(_rows([50.0] * 30 + [5.0] * 30)) == 0  # never good enough to collapse


def test_on_grid_reads_the_running_mean_at_steps():
    rows = _rows([10.0, 20.0, 30.0], steps=[10, 20, 30])
    assert np.allclose(experiments.on_grid(rows, np.array([10, 20, 30])), [10.0, 15.0, 20.0])


def test_a_number_over_seeds_is_their_iqm_with_its_bootstrap_ci():
    per_seed = [3.0, 100.0, 5.0, 4.0, -50.0]
    got = experiments.over_seeds("final_return", per_seed)
    ci = stats.iqm_ci(np.array(per_seed))
    assert got == {"final_return_iqm": 4.0, "final_return_ci95": [ci.low, ci.high], "final_return_per_seed": per_seed}
    assert ci.value == stats.iqm(per_seed) == 4.0  # the outliers cut, unlike a mean (12.4)
    result = {"experiment": "x", "description": "d", "preset": "p", "steps": 10, "seeds": 5}
    table = experiments.summary_markdown({**result, "variants": {"a": {**got, "steps_median": 7.0}}})
    assert "IQM over seeds [95% stratified bootstrap CI]" in table
    assert "| variant | training return, last 100 episodes: IQM [95% CI] | steps_median |" in table
    assert f"| a | 4.00 [{ci.low:.2f}, {ci.high:.2f}] | 7.00 |" in table


def test_the_band_plot_draws_the_iqm_and_its_ci(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.setdefault("fig", fig))
    grid, runs = np.arange(6.0), np.random.default_rng(0).normal(size=(4, 6))
    no_episode = np.full((1, 6), np.nan)
    plots.band_curves(grid, {"v": np.concatenate([runs, no_episode])}, tmp_path / "x.png")
    ax = drawn["fig"].axes[0]
    want = stats.iqm_band(runs)
    assert np.array_equal(ax.lines[0].get_ydata(), want[0]) and ax.lines[0].get_label() == "v (IQM of 4 seeds)"
    corners = {tuple(v) for v in ax.collections[0].get_paths()[0].vertices}  # fill_between's polygon
    assert corners == {(x, y) for row in want[1:] for x, y in zip(grid, row)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
def test_experiment_runs_and_writes_its_files(name, tmp_path, capsys):
    # pqn-vs-dqn's MinAtar DQN starts learning at 5000 steps
    result = experiments.run(name, tmp_path, seeds=2, steps=6000 if name == "pqn-vs-dqn" else 1500, jobs=2)
    # a line on stderr as each run finishes: every variant and seed once, counted
    pattern = re.compile(r"  \.\. (\S+), seed (\d): greedy evaluation -?[\d.]+ \((\d+) of (\d+) runs, \d+ s\)")
    said = [pattern.fullmatch(line) for line in capsys.readouterr().err.splitlines() if line.startswith("  .. ")]
    variants = experiments.EXPERIMENTS[name].variants
    assert sorted((m[1], int(m[2])) for m in said) == sorted((v, s) for v in variants for s in range(2))
    assert [int(m[3]) for m in said] == list(range(1, len(said) + 1)) and {m[4] for m in said} == {str(len(said))}
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(result)) and on_disk["experiment"] == name
    assert set(on_disk["variants"]) == set(experiments.EXPERIMENTS[name].variants)
    for measures in on_disk["variants"].values():
        assert len(measures["final_return_per_seed"]) == 2 and measures["final_return_iqm"] > 0
        low, high = measures["final_return_ci95"]
        assert low <= measures["final_return_iqm"] <= high
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    if name == "pqn-vs-dqn":
        assert all(v["wall_s_median"] > 0 for v in on_disk["variants"].values())
        assert on_disk["presets"]["pqn-minatar"] == "pqn-minatar"
    assert "| variant |" in (tmp_path / "summary.md").read_text()
    if name == "overestimation":
        assert (tmp_path / "overestimation.png").exists()
        assert all("bias_iqm" in v for v in on_disk["variants"].values())
    if name == "soft-vs-hard":
        assert all("collapses_iqm" in v for v in on_disk["variants"].values())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_an_experiment_that_the_same_command_continues(tmp_path, how):
    """One training process, two runs: Ctrl-C (to the whole process group) or SIGTERM (to the
    experiment alone, as `kill PID` sends it) saves the first, and the second does not start
    (the pool had it queued, and started it while it waited); the same command then resumes
    the first and trains the second."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "exp"
    command = [sys.executable, "-m", "dqnkit", "experiment", "target-ablation", "--seeds", "1", "--jobs", "1"]
    command += ["--steps", "20000", "--out", str(out)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, metrics = time.monotonic() + 120, out / "runs" / "hard-1000-s0" / "metrics.csv"
    while not (metrics.exists() and metrics.read_text().count("\n") > 10):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the experiment and its training process
    else:
        proc.send_signal(signal.SIGTERM)  # the experiment passes it on
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if how == "ctrl-c" else 143), err
    assert "the same command continues the experiment" in err, err
    assert "Traceback" not in err and "leaked semaphore" not in err, err
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["hard-1000-s0"]
    assert not (out / "results.json").exists()

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "hard-1000, seed 0: greedy evaluation" in again.stderr
    assert again.stderr.count("(resumed from an earlier start)") == 1
    assert json.loads((out / "results.json").read_text())["steps"] == 20_000


def test_variants_differ_only_in_what_they_ablate():
    cfgs = experiments.configs("target-ablation", 1, 2000)
    a, b = cfgs[("hard-1000", 0)].to_dict(), cfgs[("hard-1", 0)].to_dict()
    assert {k for k in a if a[k] != b[k]} == {"target_update_interval"}
    cfgs = experiments.configs("soft-vs-hard", 1, 2000)
    assert cfgs[("soft", 0)].tau == 0.005 and cfgs[("hard", 0)].tau == 0.0


def test_cli_refuses_bad_options_before_running(tmp_path, capsys):
    assert main(["experiment", "soft-vs-hard", "--seeds", "0", "--out", str(tmp_path / "a")]) == 2
    assert main(["experiment", "soft-vs-hard", "--steps", "10", "--out", str(tmp_path / "b")]) == 2
    assert "nothing would be learned" in capsys.readouterr().err
    # zero is refused, not read as "the default" (pqn-vs-dqn ran its full budget for --steps 0)
    assert main(["experiment", "pqn-vs-dqn", "--steps", "0", "--out", str(tmp_path / "c")]) == 2
    assert "total_steps: 0 must be >= 1" in capsys.readouterr().err
    assert main(["experiment", "soft-vs-hard", "--jobs", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--jobs: 0 must be >= 1" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcd")


@pytest.mark.slow
def test_a_run_an_interrupted_experiment_left_is_kept_or_resumed_exactly(tmp_path, monkeypatch):
    """Started again, an experiment keeps the runs it finished and resumes the one Ctrl-C
    stopped (bit for bit); a run of another config, or ``fresh``, is trained again."""
    import signal

    import dqnkit.training
    from dqnkit import train
    from dqnkit.logger import read_metrics

    config = experiments.configs("target-ablation", 1, 1000)[("hard-1", 0)]
    run, real = tmp_path / "hard-1-s0", dqnkit.training.check_transition

    def ctrl_c_at_600(rewards, next_obs, step):
        if step == 600:
            os.kill(os.getpid(), signal.SIGINT)  # the monitor saves a checkpoint and stops
        real(rewards, next_obs, step)

    monkeypatch.setattr(dqnkit.training, "check_transition", ctrl_c_at_600)
    with pytest.raises(KeyboardInterrupt):
        train(config, run)
    monkeypatch.undo()

    summary, how = experiments._train_one((config, str(run), False))
    assert how == "resumed" and summary["steps"] == 1000
    train(config, tmp_path / "whole")

    def rows(run_dir):  # all but the wall clock
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in read_metrics(run_dir / "metrics.csv")]

    assert rows(run) == rows(tmp_path / "whole")
    assert experiments._train_one((config, str(run), False)) == (summary, "kept")
    assert experiments._train_one((config.replace(seed=7), str(run), False))[1] == "trained"
    assert experiments._train_one((config.replace(seed=7), str(run), True))[1] == "trained"


def test_the_same_experiment_started_twice_is_refused(tmp_path, capsys):
    from dqnkit.files import RunLock

    out = tmp_path / "exp"
    out.mkdir()
    with RunLock(out):  # another `dqnkit experiment` still trains into it
        assert main(["experiment", "target-ablation", "--steps", "500", "--seeds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"experiment directory {out} is in use by another dqnkit process (pid {os.getpid()})" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_pqn_vs_dqn_gives_each_variant_its_preset_and_equal_minatar_steps():
    cfgs = experiments.configs("pqn-vs-dqn", 1, None)
    assert {v: cfgs[(v, 0)].algorithm for v, _ in cfgs} == {
        "dqn-cartpole": "dqn",
        "pqn-cartpole": "pqn",
        "dqn-minatar": "dqn",
        "pqn-minatar": "pqn",
    }
    # CartPole runs stop once solved, within their preset's own budget; MinAtar compares equal steps
    assert cfgs[("dqn-cartpole", 0)].total_steps == presets.get("cartpole").total_steps
    assert cfgs[("pqn-cartpole", 0)].total_steps == presets.get("pqn-cartpole").total_steps
    assert cfgs[("dqn-minatar", 0)].total_steps == cfgs[("pqn-minatar", 0)].total_steps == 200_000
    assert cfgs[("pqn-minatar", 0)].env_id == cfgs[("dqn-minatar", 0)].env_id == "MinAtar/Breakout"
    assert {c.total_steps for c in experiments.configs("pqn-vs-dqn", 1, 6000).values()} == {6000}


def test_summary_leaves_a_measure_a_variant_lacks_blank():
    result = {"experiment": "x", "description": "d", "preset": "p", "steps": 1, "seeds": 1,
              "variants": {"a": {"m": 1.0, "solved": 2.0}, "b": {"m": 3.0}}}  # fmt: skip
    table = experiments.summary_markdown(result)
    assert "| a | 1.00 | 2.00 |" in table and "| b | 3.00 | - |" in table


def test_the_command_line_offers_every_experiment():
    from dqnkit.cli import EXPERIMENT_NAMES

    assert EXPERIMENT_NAMES == tuple(experiments.EXPERIMENTS)
