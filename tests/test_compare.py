"""`dqnkit plot RUN...`: runs grouped into variants, named by what differs, drawn in one PNG."""

import json
import shutil

import numpy as np
import pytest

from dqnkit import plots, presets, stats, train
from dqnkit.cli import main
from dqnkit.compare import variant_names


def _config(**changes):
    return presets.get("cartpole", **changes).to_dict()


def test_runs_that_differ_only_in_seed_length_or_device_are_one_variant():
    configs = [_config(seed=0), _config(seed=1, total_steps=9000, device="cpu"), _config(lr=0.002)]
    assert variant_names(configs) == ["cartpole", "cartpole", "cartpole, lr=0.002"]


def test_a_variant_is_named_by_where_it_leaves_the_common_value():
    configs = [_config(), _config(lr=0.002), _config(hidden_sizes=(64,)), _config(seed=3)]
    assert variant_names(configs) == ["cartpole", "cartpole, lr=0.002", "cartpole, hidden_sizes=64", "cartpole"]
    # another preset is named by its own name; its keys are compared with its own variants only
    assert variant_names([_config(), presets.get("pqn-cartpole").to_dict()]) == ["cartpole", "pqn-cartpole"]


def test_a_grid_of_variants_is_named_by_its_cells():
    configs = [_config(lr=lr, gamma=g) for lr in (1e-3, 2e-3) for g in (0.9, 0.99)]
    assert variant_names(configs) == [  # equal counts: the preset's value is the common one
        "cartpole, gamma=0.9",
        "cartpole",
        "cartpole, gamma=0.9, lr=0.002",  # keys in the config's order
        "cartpole, lr=0.002",
    ]
    assert presets.get("cartpole").lr == 1e-3 and presets.get("cartpole").gamma == 0.99
    # without the preset's value among the tied, the first value seen
    configs = [_config(lr=lr) for lr in (3e-3, 2e-3)]
    assert variant_names(configs) == ["cartpole", "cartpole, lr=0.002"]


def test_a_config_without_a_known_preset_is_named_by_its_own():
    from dqnkit import Config

    assert variant_names([Config().to_dict(), Config(lr=0.002).to_dict()]) == ["custom", "custom, lr=0.002"]


def test_the_common_value_is_counted_over_runs():
    configs = [_config(lr=3e-3), *(_config(lr=1e-3, seed=s) for s in range(3))]
    assert variant_names(configs) == ["cartpole, lr=0.003", "cartpole", "cartpole", "cartpole"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One real run, copied as another seed of it and as a variant with another lr."""
    root = tmp_path_factory.mktemp("runs")
    settings = dict(total_steps=600, learning_starts=100, eval_every=300, eval_episodes=2, stop_at_return=None)
    train(presets.get("cartpole", **settings), root / "s0")
    for name, change in (("s1", {"seed": 1}), ("lr", {"lr": 0.002})):
        shutil.copytree(root / "s0", root / name)
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, **change}))
    return root


def test_plot_draws_the_runs_and_says_what_it_drew(runs, tmp_path, capsys):
    out = tmp_path / "figures" / "compare.png"
    run_dirs = [str(runs / name) for name in ("s0", "s1", "lr", "s0")]  # a directory given twice is drawn once
    assert main(["plot", *run_dirs, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["CartPole-v1", "  cartpole: 2 runs", "  cartpole, lr=0.002: 1 run", f"wrote {out}"]
    # a directory of runs (runs/, an experiment's) stands for the runs below it
    assert main(["plot", str(runs), "--out", str(out)]) == 0
    assert sorted(capsys.readouterr().out.splitlines()[1:3]) == ["  cartpole, lr=0.002: 1 run", "  cartpole: 2 runs"]
    # a run that has not finished an episode yet (just started) is named, not drawn
    started = tmp_path / "started"
    shutil.copytree(runs / "s1", started)
    (started / "metrics.csv").write_text((started / "metrics.csv").read_text().splitlines()[0] + "\n")
    assert main(["plot", str(runs / "s0"), str(started), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "  cartpole: 2 runs (1 without a finished episode yet: not drawn)"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--out", "curves.jpg"], "--out writes a .png file"),
        (["{runs}/lr/tb"], "is not a dqnkit run directory (it has no config.json)"),
        (["{runs}/no-such-run"], "is not a dqnkit run directory"),
    ],
)
def test_plot_refuses_what_it_cannot_draw_before_drawing(runs, tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(runs / "s0"), *(a.format(runs=runs) for a in args)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_plot_draws_each_variants_iqm_with_its_ci_band(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.setdefault("fig", fig))
    rng = np.random.default_rng(1)
    seeds = [
        (np.cumsum(rng.integers(5, 20, 30)) * 1.0, np.arange(1, 31) * (i + 1.0), rng.normal(size=30)) for i in range(3)
    ]
    plots.versus({"Env": {"v": seeds, "empty": [(np.zeros(0),) * 3]}}, tmp_path / "x.png")
    for axis, ax in enumerate(drawn["fig"].axes):  # against steps, against wall seconds
        x, runs = plots.seeds_on_grid([(seed[axis], seed[2]) for seed in seeds])
        want = stats.iqm_band(runs)
        (thick,) = [line for line in ax.lines if line.get_label() == "v (IQM of 3 seeds)"]
        assert np.array_equal(thick.get_xdata(), x) and np.array_equal(thick.get_ydata(), want[0])
        (band,) = ax.collections  # the run without an episode has no band
        assert {tuple(v) for v in band.get_paths()[0].vertices} == {(a, b) for row in want[1:] for a, b in zip(x, row)}


def test_seeds_on_grid_spans_every_run_and_holds_each_runs_ends():
    x, runs = plots.seeds_on_grid([(np.array([10.0, 20.0]), np.array([1.0, 3.0])), (np.array([5.0]), np.array([7.0]))])
    assert x[0] == 5.0 and x[-1] == 20.0 and runs.shape == (2, 200)
    assert runs[0, 0] == 1.0 and runs[0, -1] == 2.0  # the running mean of 1, 3 at its last episode
    assert set(runs[1]) == {7.0}
