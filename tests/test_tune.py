"""`dqnkit tune`: spaces refused before any work, the objective's closed form, and small
studies of a few 400-step CartPole trials (each an ordinary run) that stop on Ctrl-C and
continue when the same command starts again."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from dqnkit import study_storage, tune
from dqnkit.cli import main
from dqnkit.errors import ConfigError
from dqnkit.files import RunLock

optuna = pytest.importorskip("optuna")

TINY = ["--set", "eval_every=200", "--set", "eval_episodes=2", "--set", "learning_starts=100"]


def _tune(out, *extra):
    return main(["tune", "--preset", "cartpole", "--steps", "400", "--out", str(out), "--confirm", "0", *TINY, *extra])


def _trials(out, name="cartpole"):
    study = optuna.load_study(study_name=name, storage=tune.default_storage(out))
    return study, {t.number: t.state.name for t in study.get_trials()}


# ----------------------------------------------------------------------------- refused before any work
@pytest.mark.parametrize(
    "space, message",
    [
        ({"learning_rate": {"low": 1e-4, "high": 1e-2}}, "unknown config key 'learning_rate'"),
        ({"lr": {"low": 1e-2, "high": 1e-4}}, "range [0.01, 0.0001] is empty"),
        ({"lr": {"low": 1e-3, "high": 1e-3}}, "is empty"),
        ({"batch_size": {"low": 16.5, "high": 64}}, "16.5 is not a int"),
        ({"lr": {"low": "1e-4", "high": 1e-2}}, "'1e-4' is not a float"),
        ({"double": {"choices": [True, "no"]}}, "'no' is not a bool"),
        ({"double": {"low": 0, "high": 1}}, "give it choices"),
        ({"lr": {"choices": []}}, "non-empty list"),
        ({"gamma": {"low": 0.9, "high": 1.5}}, "must be <= 1"),
        ({"lr": {"low": 0, "high": 1e-2, "log": True}}, "must be > 0"),
        ({"seed": {"low": 0, "high": 9}}, "set by the study itself"),
        ({"q_lambda": {"low": 0.1, "high": 0.9}}, "is a pqn key"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_a_bad_space_exits_2_in_one_line_before_any_work(tmp_path, capsys, space, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    assert _tune(tmp_path / "out", "--space", str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --space {path}: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_good_space_passes():
    tune.check_space(
        {
            "lr": {"low": 1e-5, "high": 1e-2, "log": True},
            "batch_size": {"low": 16, "high": 128, "step": 16},
            "hidden_sizes": {"choices": [[64], [64, 64]]},
            "double": {"choices": [True, False]},
        }
    )
    with pytest.raises(ConfigError):
        tune.check_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}})


def test_without_optuna_tune_exits_2_with_the_pip_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert _tune(tmp_path / "out") == 2
    assert "pip install 'dqnkit[tune]'" in capsys.readouterr().err


def test_bad_numbers_exit_2(tmp_path, capsys):
    assert _tune(tmp_path / "out", "--trials", "0") == 2
    assert _tune(tmp_path / "out", "--jobs", "0") == 2
    assert _tune(tmp_path / "out", "--confirm", "-1") == 2
    assert _tune(tmp_path / "out", "--seeds-per-trial", "0") == 2
    assert _tune(tmp_path / "out", "--trials", "40", "--seeds-per-trial", "2501") == 2  # into the confirm seeds
    assert not (tmp_path / "out").exists()


def test_env_kwargs_reach_the_trials_and_a_bad_one_is_refused_before_the_study(tmp_path, capsys):
    from dqnkit.cli import build_parser
    from dqnkit.command_config import config_from_args

    args = build_parser().parse_args(["tune", "--env", "CarRacing-v3", "--env-kwarg", "continuous=false"])
    assert config_from_args(args).env_kwargs == {"continuous": False}  # and the pixels preset's space
    assert _tune(tmp_path / "out", "--env", "CartPole-v1", "--env-kwarg", "gravity=3") == 2
    assert "does not take the argument 'gravity'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _race_study(out: str) -> "tune.Study":
    from dqnkit import presets

    return tune.Study(
        presets.get("cartpole", total_steps=4000), tune.default_storage(Path(out)), "race", Path(out), 60, None
    )


def _take_all(out: str) -> list[int]:
    """A worker's takes from the queue, with no training between them: the tightest race."""
    study = _race_study(out)
    optuna_study, storage = tune._load(study)
    taken = []
    while True:
        with study_storage.queue_lock(study.storage, study.out):
            trial = study_storage.next_trial(optuna_study, storage)
        if trial is None:
            return taken
        taken.append(trial.number)


def test_three_processes_on_one_sqlite_queue_take_each_trial_once(tmp_path):
    """SQLite has no row locks: without the queue lock three takers took 67-68 of 60 trials."""
    import multiprocessing

    (tmp_path / "out").mkdir()
    tune.prepare(_race_study(str(tmp_path / "out")))
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        taken = [n for worker in pool.map(_take_all, [str(tmp_path / "out")] * 3) for n in worker]
    assert sorted(taken) == list(range(60))


def test_a_second_process_on_the_same_out_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out"):
        assert _tune(tmp_path / "out") == 2
    assert "in use by another dqnkit process" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the starting point
@pytest.mark.parametrize("preset", ["cartpole", "cartpole-rainbow", "pqn-minatar", "pqn-cartpole"])
def test_the_starting_point_samples_the_preset_itself(preset):
    from dqnkit import presets
    from dqnkit.search_space import DEFAULT_SPACES, _same_run

    base = presets.get(preset)
    point = tune.starting_point(None, base)
    assert point is not None
    sampled = base.replace(**DEFAULT_SPACES[base.algorithm](optuna.trial.FixedTrial(point), base))
    assert _same_run(sampled, base)
    assert not _same_run(base.replace(lr=base.lr * 2), base)


def test_a_preset_the_space_cannot_express_has_no_starting_point():
    from dqnkit import presets

    assert tune.starting_point(None, presets.get("cartpole-zoo")) is None  # a target copy every 10 steps
    assert tune.starting_point(None, presets.get("cartpole", hidden_sizes=(128, 64))) is None
    base = presets.get("cartpole")
    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden_sizes": {"choices": [[64], [128, 128]]}}
    assert tune.starting_point(space, base) == {"lr": 1e-3, "hidden_sizes": "[128, 128]"}
    assert tune.starting_point({"lr": {"low": 1e-2, "high": 1e-1, "log": True}}, base) is None  # outside its range
    assert tune.starting_point({"hidden_sizes": {"choices": [[64]]}}, base) is None  # not one of its choices


def test_the_first_trial_is_the_preset_and_a_best_start_is_confirmed_once(tmp_path, capsys):
    """A study whose first trial (the starting config) beats every other returns the preset
    itself as best.json, and --confirm trains it once for both rows."""
    out = tmp_path / "out"
    extra = ["--set", "exploration_steps=100", "--trials", "1", "--confirm", "1"]  # the confirm flag last wins
    assert _tune(out, *extra) == 0
    printed = capsys.readouterr().out
    study, states = _trials(out)
    start = study.trials[0]
    assert states == {0: "COMPLETE"} and start.user_attrs["start"] is True and start.user_attrs["overrides"] == {}
    assert start.params["lr"] == 1e-3 and start.params["target_update_interval"] == 64  # the preset's point
    run_config = json.loads((out / "trials" / "trial-0000" / "config.json").read_text())
    best = json.loads((out / "best.json").read_text())
    assert best == {**run_config, "seed": best["seed"]} and best["exploration_steps"] == 100
    assert "trial 0, the starting config: no trial beat it" in printed
    confirmed = json.loads((out / "confirm.json").read_text())
    assert confirmed["tuned_is_preset"] is True and confirmed["tuned"] == confirmed["preset"]
    assert confirmed["verdict"].startswith("the starting config was the best trial") and "verdict: " in printed
    assert sorted(p.name for p in (out / "confirm").iterdir()) == ["preset-s100000"]  # trained once


@pytest.mark.parametrize(
    "interval, side",
    [
        ((0.9, 0.7, 1.0), "the tuned config beats"),
        ((0.1, 0.0, 0.4), "the starting config beats"),
        ((0.6, 0.3, 0.9), "no clear difference"),
        ((0.5, 0.5, 0.5), "no clear difference"),
    ],
)
def test_the_verdict_names_a_side_only_where_the_whole_ci_lies_on_it(interval, side):
    from dqnkit.confirm import verdict
    from dqnkit.stats import Interval

    assert verdict(Interval(*interval), same=False).startswith(side)


# ----------------------------------------------------------------------------- the objective
def test_the_objective_is_the_mean_over_the_budget_an_early_stop_holding_its_last_value():
    assert tune.objective_value([1.0, 2.0, 3.0], 3000, 1000) == 2.0
    assert tune.objective_value([10.0, 20.0], 2500, 1000) == 50 / 3  # the final one at 2500 missing: held
    assert tune.objective_value([10.0, 20.0, 30.0], 2500, 1000) == 20.0
    assert tune.objective_value([100.0, 500.0], 5000, 1000) == (100 + 500 * 4) / 5  # stopped early at step 2000
    assert tune.objective_value([7.0], 5000, 0) == 7.0  # eval_every=0: the final evaluation alone


# ----------------------------------------------------------------------------- studies
def test_seeds_per_trial_trains_each_seed_and_scores_their_mean(tmp_path, capsys):
    """The best of many one-seed trials is often a lucky seed (a 40-trial CartPole study's
    best solved 3 of 5 fresh seeds): K seeds per trial score the mean of K objectives."""
    from dqnkit.logger import read_metrics

    out = tmp_path / "out"
    assert _tune(out, "--trials", "1", "--seeds-per-trial", "2", "--steps", "200", "--set", "eval_every=100") == 0
    assert "over 2 seeds" in capsys.readouterr().err
    study, states = _trials(out)
    assert states == {0: "COMPLETE"} and study.user_attrs["seeds_per_trial"] == 2
    for trial in study.trials:
        runs = [out / "trials" / f"trial-{trial.number:04d}" / f"seed-{2 * trial.number + j}" for j in range(2)]
        objectives = []
        for j, run in enumerate(runs):
            assert json.loads((run / "config.json").read_text())["seed"] == 2 * trial.number + j
            evals = [float(r["return"]) for r in read_metrics(run / "metrics.csv") if r["kind"] == "eval"]
            objectives.append(tune.objective_value(evals, 200, 100))
        assert trial.user_attrs["objective_per_seed"] == objectives
        assert trial.value == pytest.approx(sum(objectives) / 2)
    assert _tune(out, "--trials", "1", "--steps", "200", "--set", "eval_every=100") == 2  # one seed: another study
    assert "was started with another seeds_per_trial" in capsys.readouterr().err


def test_a_trial_another_worker_failed_while_it_ran_is_dropped_and_the_worker_goes_on(tmp_path, monkeypatch, capsys):
    """A worker taken for lost (silent too long) finds its trial failed at its next report:
    it says so and takes the next trial instead of crashing."""
    from dqnkit import presets, training

    base = presets.get("cartpole", total_steps=400, eval_every=200, eval_episodes=2, learning_starts=100)
    study = tune.Study(base, tune.default_storage(tmp_path / "out"), "lost", tmp_path / "out", 2, None)
    (tmp_path / "out").mkdir()
    tune.prepare(study)
    storage = study_storage.open_storage(study.storage)
    real_train, calls = training.train, []

    def failed_from_outside(config, run_dir, **kwargs):
        calls.append(run_dir)
        if len(calls) == 1:  # another worker fails this trial, then the run evaluates
            storage.set_trial_state_values(study_storage.trial_id(storage, "lost", 0), optuna.trial.TrialState.FAIL)
            kwargs["on_eval"](200, 10.0)
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(training, "train", failed_from_outside)
    tune.work(study)
    assert "trial 0: taken for lost by another worker" in capsys.readouterr().err
    assert _trials(tmp_path / "out", "lost")[1] == {0: "FAIL", 1: "COMPLETE"}


@pytest.mark.slow
def test_a_study_of_runs_its_best_json_trains_and_the_same_command_continues_it(tmp_path, capsys):
    out = tmp_path / "out"
    assert _tune(out, "--trials", "3") == 0
    printed = capsys.readouterr().out
    assert "best: trial" in printed and f"optuna-dashboard {tune.default_storage(out)}" in printed
    study, states = _trials(out)
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}
    assert study.user_attrs["objective"] == tune.OBJECTIVE and study.user_attrs["total_steps"] == 400
    for number in range(3):  # each trial an ordinary run, with its own seed
        run = out / "trials" / f"trial-{number:04d}"
        for name in ("config.json", "metrics.csv", "summary.json", "checkpoints/latest.pt"):
            assert (run / name).is_file()
        assert json.loads((run / "config.json").read_text())["seed"] == number
    assert (out / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(out / "trials"), "--out", str(tmp_path / "trials.png")]) == 0

    best = json.loads((out / "best.json").read_text())
    assert best["total_steps"] == 400 and best["preset"] == "cartpole"
    run = tmp_path / "from-best"
    assert main(["train", "--config", str(out / "best.json"), "--run-dir", str(run), "--quiet"]) == 0
    assert (run / "summary.json").is_file()

    assert _tune(out, "--trials", "4") == 0  # the same command, a larger budget: one more trial
    assert _trials(out)[1] == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE"}
    assert _tune(out, "--trials", "4", "--steps", "600") == 2  # another budget: not this study
    assert "was started with another total_steps" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_the_trial_marks_it_failed_and_the_same_command_continues(tmp_path, monkeypatch, capsys):
    from dqnkit import training

    real_train, calls = training.train, []

    def interrupted_second_trial(config, run_dir, **kwargs):
        calls.append(run_dir)
        if len(calls) == 2:  # Ctrl-C at the trial's first evaluation
            hook = kwargs["on_eval"]
            kwargs["on_eval"] = lambda step, mean: (hook(step, mean), os.kill(os.getpid(), signal.SIGINT))
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(training, "train", interrupted_second_trial)
    out = tmp_path / "out"
    assert _tune(out, "--trials", "3") == 130
    assert "the same command continues the study" in capsys.readouterr().err
    assert _trials(out)[1] == {0: "COMPLETE", 1: "FAIL", 2: "WAITING"}
    assert (out / "trials" / "trial-0001" / "checkpoints" / "latest.pt").is_file()  # saved: --resume continues it

    assert _tune(out, "--trials", "3") == 0
    study, states = _trials(out)
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}  # 3 done in total
    failed, rerun = study.trials[1], study.trials[3]  # trial 1's point is measured after all, with its seed
    assert rerun.params == failed.params and rerun.user_attrs["rerun_of"] == 1 and rerun.user_attrs["seed"] == 1
    assert json.loads((out / "trials" / "trial-0003" / "config.json").read_text())["seed"] == 1
    assert _tune(out, "--trials", "3") == 0  # a failed trial is run again once, not at every start
    assert len(_trials(out)[1]) == 4


@pytest.mark.slow  # two spawned processes import torch, then train 1,000 steps each: 25-50 s here
def test_jobs_2_trains_two_trials_side_by_side_in_two_processes(tmp_path):
    out = tmp_path / "out"
    assert _tune(out, "--trials", "2", "--jobs", "2", "--steps", "1000") == 0
    study, states = _trials(out)
    assert states == {0: "COMPLETE", 1: "COMPLETE"}
    first, second = study.trials
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials}
    assert len(workers) == 2 and str(os.getpid()) not in workers  # two processes, neither this one
    assert first.datetime_start < second.datetime_complete and second.datetime_start < first.datetime_complete
    for number in (0, 1):
        run = out / "trials" / f"trial-{number:04d}"
        assert json.loads((run / "config.json").read_text())["seed"] == number and (run / "summary.json").is_file()


# ----------------------------------------------------------------------------- many workers, one PostgreSQL
@pytest.fixture
def postgresql(tmp_path):
    """The URL of a real PostgreSQL server in ``tmp_path`` (pgserver's own binaries), stopped after."""
    pgserver = pytest.importorskip("pgserver", reason="the PostgreSQL test needs pgserver (the dev extra)")
    pytest.importorskip("psycopg", reason="the PostgreSQL test needs psycopg (the dev extra)")
    try:
        server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    except Exception as exc:  # no server could start here: a skip that says why, not a pass
        pytest.skip(f"pgserver could not start PostgreSQL: {exc}")
    yield server.get_uri()
    server.cleanup()


@pytest.mark.slow  # two workers import torch and train 6 trials of 400 steps: about 40 s here
def test_two_workers_on_one_postgresql_study_finish_exactly_trials_in_total(tmp_path, postgresql):
    import subprocess

    def command(worker):
        storage = ["--storage", postgresql, "--study", "shared", "--trials", "6", "--steps", "400"]
        out = ["--out", str(tmp_path / worker), "--confirm", "0"]
        return [sys.executable, "-m", "dqnkit", "tune", "--preset", "cartpole", *storage, *out, *TINY]

    # started together: both make the study's queue at once (the advisory lock lets one at a time)
    workers = [subprocess.Popen(command(w), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in "ab"]
    ends = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, err) in zip(workers, ends):
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=study_storage.open_storage(postgresql))
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6))  # none lost, none added
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}  # the median pruner may stop some
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took part
    said = [line for _, err in ends for line in err.splitlines() if line.startswith("  .. trial ")]
    assert sorted(int(line.split()[2].rstrip(":")) for line in said) == list(range(6))  # each run once
    runs = [p.name for w in "ab" for p in (tmp_path / w / "trials").iterdir()]
    assert len(runs) == len(set(runs)) and set(runs) <= {f"trial-{n:04d}" for n in range(6)}


def _hang_in_a_trial(study) -> None:
    """A worker whose trial never ends, until it is killed (run in a child process)."""
    import time

    from dqnkit import training

    training.train = lambda *args, **kwargs: time.sleep(600)
    tune.work(study)


@pytest.mark.slow  # a worker killed outright, then 3 heartbeats of 1 s and two 400-step trials: about 30 s here
def test_a_trial_whose_worker_is_killed_outright_is_run_again_by_another(tmp_path, postgresql):
    import multiprocessing
    import time

    from dqnkit import presets

    base = presets.get("cartpole", total_steps=400, eval_every=200, eval_episodes=2, learning_starts=100)
    study = tune.Study(base, postgresql, "lost", tmp_path / "out", 2, None, heartbeat_s=1)
    (tmp_path / "out").mkdir()
    tune.prepare(study)
    killed = multiprocessing.get_context("spawn").Process(target=_hang_in_a_trial, args=(study,))
    killed.start()
    optuna_study = optuna.load_study(study_name="lost", storage=study_storage.open_storage(postgresql))
    for _ in range(600):  # until the child has taken trial 0
        if optuna_study.trials[0].state.name == "RUNNING":
            break
        time.sleep(0.1)
    time.sleep(1.5)  # a heartbeat or two recorded
    killed.kill()
    killed.join()
    tune.work(study)  # takes trial 1, then waits for trial 0, finds it silent and runs it again
    states = {t.number: t.state.name for t in optuna_study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}, states
    rerun = optuna_study.trials[2]
    assert rerun.user_attrs["rerun_of"] == 0 and rerun.user_attrs["seed"] == 0
    assert rerun.params == optuna_study.trials[0].params


def test_a_postgresql_storage_that_cannot_be_reached_exits_2_in_one_line(tmp_path, capsys):
    pytest.importorskip("psycopg", reason="needs psycopg (the dev extra)")
    url = f"postgresql://nobody@/optuna?host={tmp_path / 'no-server'}"
    assert _tune(tmp_path / "out", "--storage", url) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --storage {url}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything is written
