"""``dqnkit tune``: hyperparameter search on Optuna (TPE sampler, median pruner), as
rl-baselines3-zoo's ``--optimize`` and CleanRL's tuner do it.

Every trial is an ordinary dqnkit run under ``OUT/trials/`` (config.json, metrics.csv,
checkpoints, TensorBoard): ``dqnkit plot``, ``eval`` and ``train --resume`` work on it.

The study lives in a storage (an SQLite file in ``OUT`` by default, or a PostgreSQL URL that
several machines share). Its trials are made up front, as a queue of ``trials`` waiting
trials, and each worker takes the next one atomically (a waiting trial goes to running for
one worker only): no trial runs twice, and the study stops at ``trials`` in total however
many workers take part. A trial that fails (Ctrl-C, SIGTERM) is run again when the same
command starts again: a new waiting trial with its parameters and its seed (:func:`prepare`).
A new study's first trial is the starting config itself, where the space can express it: the
sampler learns from the point the user starts from, and a study whose trials all score below
it returns the starting config as its best.

The objective is the area under the trial's greedy evaluation curve: the mean of its
evaluations over its budget, an early stop at ``stop_at_return`` holding its last value
to the end of the budget (:func:`objective_value`). With ``seeds_per_trial`` K > 1 a trial
trains its config on K seeds, one after the other, and scores the mean of their objectives
(CleanRL's tuner does the same): the best of many one-seed trials is often a lucky seed.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqnkit.config import Config
from dqnkit.errors import ConfigError, DqnkitError, Interrupted, NonFiniteError
from dqnkit.files import RunLock, atomic_write_text, make_dir
from dqnkit.search_space import DEFAULT_SPACES, Space, check_space, read_space, space_params, starting_point
from dqnkit.study_storage import (
    beating,
    dashboard_line,
    default_storage,
    fail_stale,
    next_trial,
    open_storage,
    queue_lock,
    require_optuna,
    setup_lock,
    trial_id,
)

OBJECTIVE = (
    "mean of the trial's greedy evaluations over its budget (the area under its evaluation curve); "
    "a trial stopped early at stop_at_return keeps its last evaluation to the end of the budget"
)
CONFIRM_SEED = 100_000  # confirmation runs use seeds from here; trial n trains with seeds nK .. nK + K - 1


# ----------------------------------------------------------------------------- the objective
def objective_value(evals: list[float], total_steps: int, eval_every: int) -> float:
    """The mean of a trial's evaluations over its budget: the ``n`` a full run plays (one
    every ``eval_every`` steps, and a final one at ``total_steps`` off that grid), the
    missing ones of a run stopped early taking its last value (it reached its goal)."""
    full = total_steps // eval_every + (1 if total_steps % eval_every else 0) if eval_every else 1
    held = evals + [evals[-1]] * max(0, full - len(evals))
    return float(sum(held) / len(held))


# ----------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class Study:
    """What every worker of one study needs, picklable for its processes."""

    base: Config  # the starting config, budget and evaluation cadence included
    storage: str
    name: str
    out: Path
    trials: int
    space: Space | None  # None: the algorithm's default space
    seeds_per_trial: int = 1
    heartbeat_s: int = 60  # PostgreSQL: a running trial's worker says it is alive this often

    def attrs(self) -> dict[str, Any]:
        """The study's user attributes: what it optimises, so that a restart can check it is the same."""
        return {
            "objective": OBJECTIVE,
            "preset": self.base.preset,
            "env_id": self.base.env_id,
            "total_steps": self.base.total_steps,
            "base_config": self.base.to_dict(),
            "space": self.space if self.space is not None else f"default {self.base.algorithm} space",
            "seeds_per_trial": self.seeds_per_trial,
        }

    def seeds(self, first: int) -> list[int]:
        """A trial's seeds, from its first (trial n: n x seeds_per_trial, and on)."""
        return [first + j for j in range(self.seeds_per_trial)]


def _load(study: Study) -> tuple[Any, Any]:
    """(optuna study, storage) with the TPE sampler and the median pruner."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(study.storage, _heartbeat(study))
    sampler = optuna.samplers.TPESampler(n_startup_trials=5, constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=study.base.total_steps // 3)
    return optuna.load_study(study_name=study.name, storage=storage, sampler=sampler, pruner=pruner), storage


def _heartbeat(study: Study) -> int | None:
    """The heartbeat interval of the study's storage: on PostgreSQL, where a worker killed
    outright would otherwise leave its trial running for ever; an SQLite study's running
    trials are failed at each start instead, since only one command runs it."""
    return study.heartbeat_s if study.storage.startswith("postgres") else None


def prepare(study: Study) -> None:
    """Create the study or check that the stored one is this one; mark the trials a killed
    process left running as failed (SQLite: no other process can be running them); fill the
    queue up to ``trials`` trials that are done, running or waiting: first a rerun of each
    failed trial (:func:`_rerun_failed`), then new trials."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with setup_lock(study.storage, study.name):
        storage = open_storage(study.storage, _heartbeat(study))
        made = optuna.create_study(storage=storage, study_name=study.name, direction="maximize", load_if_exists=True)
        attrs = study.attrs()
        if not made.user_attrs:
            for key, value in attrs.items():
                made.set_user_attr(key, value)
        else:
            stored = {"seeds_per_trial": 1, **made.user_attrs}  # a study made before the key trained one seed
            differ = [k for k, v in attrs.items() if stored.get(k) != json.loads(json.dumps(v))]
            if differ:
                raise DqnkitError(
                    f"study {study.name!r} in {study.storage} was started with another {differ[0]}; "
                    "continue it with the command that started it, or choose another --study or --out"
                )
        if not study.storage.startswith("postgres"):
            for trial in made.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                storage.set_trial_state_values(trial_id(storage, study.name, trial.number), TrialState.FAIL)
        point = starting_point(study.space, study.base)
        if point is not None and not made.get_trials(deepcopy=False):  # trial 0: the starting config itself
            made.enqueue_trial(point, {"start": True}, skip_if_exists=False)
        _fill_queue(made, study)


def _fill_queue(optuna_study: Any, study: Study) -> None:
    """Fail the trials whose worker is lost (:func:`_fail_stale`), then queue up to
    ``trials`` trials that are done, running or waiting: a rerun of each failed trial first,
    then new ones."""
    from optuna.trial import TrialState

    if _heartbeat(study) is not None:  # PostgreSQL: a lost worker's trial fails, and is run again below
        fail_stale(optuna_study)
    live = optuna_study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    )
    missing = study.trials - len(live) - _rerun_failed(optuna_study, study.trials - len(live))
    for _ in range(missing):
        optuna_study.enqueue_trial({}, skip_if_exists=False)


def _rerun_failed(optuna_study: Any, room: int) -> int:
    """Queue (up to ``room``) a rerun of each failed trial that has none yet: a waiting trial
    with its parameters (Optuna's fixed params) and its seed, so that the point the sampler
    chose is measured after all; ``rerun_of`` names the failed trial. Returns how many."""
    from optuna.trial import TrialState

    trials = optuna_study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    todo = [t for t in trials if t.state == TrialState.FAIL and t.number not in rerun][: max(room, 0)]
    for failed in todo:
        attrs = {"rerun_of": failed.number}
        for key in ("seed", "start"):  # the rerun trains the seeds the failed trial trained
            if key in failed.user_attrs:
                attrs[key] = failed.user_attrs[key]
        optuna_study.enqueue_trial(failed.params, attrs, skip_if_exists=False)
    return len(todo)


def trial_dir(out: Path, number: int) -> Path:
    """The run directory of trial ``number`` of the study in ``out`` (with several seeds per
    trial, the directory of its runs ``seed-S``)."""
    return out / "trials" / f"trial-{number:04d}"


def _seed_runs(study: Study, number: int, seeds: list[int]) -> list[Path]:
    """Where a trial's seeds train: its own run directory, or one below it per seed."""
    base = trial_dir(study.out, number)
    return [base] if study.seeds_per_trial == 1 else [base / f"seed-{seed}" for seed in seeds]


def run_trial(study: Study, optuna_study: Any, trial: Any) -> str:
    """Train one trial's runs (one per seed) and tell the study how it ended; a line to say so.
    The pruner watches the first seed's evaluations; the value is the mean of every seed's
    objective."""
    import optuna
    from optuna.trial import TrialState

    from dqnkit.training import train

    base = study.base
    sample = DEFAULT_SPACES[base.algorithm] if study.space is None else space_params(study.space)
    start, evals = time.perf_counter(), []
    values: list[float] = []  # each finished seed's objective
    summaries: list[dict[str, Any]] = []

    def on_eval(step: int, mean: float) -> None:
        evals.append(mean)
        if len(values) == 0:  # the first seed's curve is the one the pruner compares
            trial.report(objective_value(evals, step, base.eval_every), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step:,}")

    try:
        overrides = sample(trial, base)  # records the trial's parameters, the starting point's too
        if trial.user_attrs.get("start"):
            overrides = {}  # the starting config as it is (its point may say a key another way)
        first = trial.user_attrs.get("seed", trial.number * study.seeds_per_trial)  # a rerun keeps its seeds
        seeds = study.seeds(first)
        runs = _seed_runs(study, trial.number, seeds)
        trial.set_user_attr("seed", first)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which machine and process ran it
        trial.set_user_attr("run_dir", str(trial_dir(study.out, trial.number)))
        trial.set_user_attr("overrides", json.loads(json.dumps(overrides)))
        for seed, run_dir in zip(seeds, runs):
            evals.clear()
            summaries.append(train(base.replace(**overrides, seed=seed), run_dir, overwrite=True, on_eval=on_eval))
            values.append(objective_value(evals, base.total_steps, base.eval_every) if evals else float("nan"))
    except optuna.TrialPruned as exc:
        optuna_study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return f"trial {trial.number}: {exc} ({time.perf_counter() - start:.0f} s)"
    except (NonFiniteError, ConfigError) as exc:  # a diverged trial, or a sample the config refuses: pruned
        trial.set_user_attr("pruned_because", str(exc))
        optuna_study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return f"trial {trial.number}: pruned: {exc}"
    except BaseException:  # Ctrl-C, SIGTERM (the run saved a checkpoint), or a bug: failed, not complete
        # skip: another worker may have failed it already, taking this worker for lost (work says so)
        optuna_study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    value = sum(values) / len(values)
    trial.set_user_attr("steps", sum(s["steps"] for s in summaries) // len(summaries))  # the mean over seeds
    trial.set_user_attr("stopped_early", all(s["stopped_early"] for s in summaries))
    finals = [s["eval_return_mean"] for s in summaries if s["eval_return_mean"] is not None]
    trial.set_user_attr("final_eval", sum(finals) / len(finals) if finals else None)
    if len(values) > 1:
        trial.set_user_attr("objective_per_seed", values)
    if not math.isfinite(value):
        optuna_study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return f"trial {trial.number}: no evaluation: pruned"
    optuna_study.tell(trial, value)
    return f"trial {trial.number}: {value:.1f} ({_trial_runs(summaries)}, {time.perf_counter() - start:.0f} s)"


def _trial_runs(summaries: list[dict[str, Any]]) -> str:
    """How a trial's runs went, for its line: steps, and whether they stopped early."""
    steps = "/".join(f"{s['steps']:,}" for s in summaries)
    seeds = f" over {len(summaries)} seeds" if len(summaries) > 1 else ""
    early = sum(s["stopped_early"] for s in summaries)
    if not early:
        return f"{steps} steps{seeds}"
    which = "" if len(summaries) == 1 else f"{early} of {len(summaries)} "
    return f"{steps} steps{seeds}, {which}stopped early at stop_at_return"


def work(study: Study, stop: Any = None) -> None:
    """One worker: take waiting trials and train them until the queue is empty (or ``stop`` is
    set). On PostgreSQL a worker with an empty queue waits while other workers' trials run,
    and queues again any whose worker falls silent (:func:`_fill_queue`): a worker killed
    outright loses no trial."""
    import optuna

    optuna_study, storage = _load(study)
    waiting = False
    while stop is None or not stop.is_set():
        with queue_lock(study.storage, study.out):
            trial = next_trial(optuna_study, storage)
        if trial is None:
            running = _others_running(optuna_study, study)
            if not running:
                return
            if not waiting:
                print(
                    f"  .. waiting for {running} trial(s) of other workers; one silent for "
                    f"{3 * study.heartbeat_s} s is run again here",
                    file=sys.stderr,
                    flush=True,
                )
            waiting = True
            if stop is not None and stop.wait(study.heartbeat_s):
                return
            if stop is None:
                time.sleep(study.heartbeat_s)
            with setup_lock(study.storage, study.name):
                _fill_queue(optuna_study, study)
            continue
        waiting = False
        try:
            with beating(storage, trial_id(storage, study.name, trial.number), _heartbeat(study)):
                if _heartbeat(study) is not None:  # others wait for this trial: its loss would be seen
                    trial.set_user_attr("heartbeat_s", study.heartbeat_s)
                said = run_trial(study, optuna_study, trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # silent too long: another worker runs it again
            said = f"trial {trial.number}: taken for lost by another worker while it ran; its result is not kept"
        print(f"  .. {said}", file=sys.stderr, flush=True)


def _others_running(optuna_study: Any, study: Study) -> int:
    """How many trials of other workers run with a heartbeat, so that their loss would be
    seen (PostgreSQL; an SQLite study's workers are this command's processes, which take
    every trial there is before they end). A trial of a dqnkit without heartbeats could run,
    or be lost, for ever: it is not waited for."""
    from optuna.trial import TrialState

    if _heartbeat(study) is None:
        return 0
    running = optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return sum("heartbeat_s" in t.user_attrs for t in running)


_stop_event: Any = None


def _start_worker(stop: Any) -> None:
    from dqnkit.experiments import _start_training_process

    global _stop_event
    _stop_event = stop
    _start_training_process()


def _work_in_process(study: Study) -> None:
    work(study, _stop_event)


def run(study: Study, jobs: int = 1) -> dict[str, Any]:
    """Prepare the study, train its waiting trials in ``jobs`` processes (this one if 1),
    then write ``best.json`` and ``tune.png``; returns what the end of the run says."""
    local = study.storage.startswith("sqlite")  # its file is in `out`; a server is reached before `out` is made
    if not local:
        prepare(study)
    make_dir(study.out, f"tune directory {study.out}")
    lock = RunLock(study.out, what="tune directory") if local else None
    try:
        if local:
            prepare(study)
        try:
            if jobs == 1:
                work(study)
            else:
                _work_in_processes(study, jobs)
        except KeyboardInterrupt as exc:
            raise Interrupted(
                "interrupted; the trials in progress saved a checkpoint and are marked failed: the same command "
                "continues the study",
                getattr(exc, "signum", signal.SIGINT),
            ) from None
        return report(study)
    finally:
        if lock is not None:
            lock.release()


def _work_in_processes(study: Study, jobs: int) -> None:
    from dqnkit.experiments import _passing_sigterm

    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_start_worker, initargs=(stop,)) as pool:
        with _passing_sigterm():
            futures = [pool.submit(_work_in_process, study) for _ in range(jobs)]
            try:
                wait(futures)
            except KeyboardInterrupt:
                stop.set()  # workers between trials take no new one
                wait(futures)
                raise
        for future in futures:
            future.result()


def report(study: Study) -> dict[str, Any]:
    """``best.json`` (a ``--config`` file of the best trial) and ``tune.png``; the best trial."""
    optuna_study, _ = _load(study)
    from optuna.trial import TrialState

    from dqnkit import plots  # matplotlib: only once the study has run

    done = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {
        state.name.lower(): len(optuna_study.get_trials(deepcopy=False, states=(state,)))
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    result: dict[str, Any] = {"study": study.name, "storage": study.storage, "trials": counts}
    if not done:
        return result
    best = optuna_study.best_trial
    config = study.base.replace(**best.user_attrs["overrides"])
    atomic_write_text(study.out / "best.json", config.to_json())
    result.update(
        best_trial=best.number,
        best_is_start=bool(best.user_attrs.get("start")),
        best_value=best.value,
        best_params=best.params,
        best_run_dir=best.user_attrs["run_dir"],
        best_config=str(study.out / "best.json"),
        plot=str(plots.optuna_study(optuna_study, study.out / "tune.png")),
    )
    return result


__all__ = [
    "CONFIRM_SEED",
    "OBJECTIVE",
    "Study",
    "check_space",
    "dashboard_line",
    "default_storage",
    "objective_value",
    "prepare",
    "read_space",
    "report",
    "require_optuna",
    "run",
    "starting_point",
    "work",
]
