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

import contextlib
import fcntl
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqnkit.config import Config
from dqnkit.errors import ConfigError, DqnkitError, Interrupted, NonFiniteError
from dqnkit.files import RunLock, atomic_write_text, make_dir
from dqnkit.search_space import DEFAULT_SPACES, Space, check_space, read_space, space_params, starting_point

OBJECTIVE = (
    "mean of the trial's greedy evaluations over its budget (the area under its evaluation curve); "
    "a trial stopped early at stop_at_return keeps its last evaluation to the end of the budget"
)
PIP_LINE = "pip install 'dqnkit[tune]'"
CONFIRM_SEED = 100_000  # confirmation runs use seeds from here; trial n trains with seeds nK .. nK + K - 1


def require_optuna() -> Any:
    """The optuna module, or a one-line error (exit 2) saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise DqnkitError(f"dqnkit tune needs Optuna: {PIP_LINE}") from None
    return optuna


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


def default_storage(out: Path) -> str:
    """The SQLite file in ``out`` that holds a study by default."""
    return f"sqlite:///{(out / 'study.db').resolve()}"


def driver_url(url: str) -> str:
    """``url`` with a PostgreSQL driver that is installed: SQLAlchemy reads a plain
    ``postgresql://`` as psycopg2, so where only psycopg (3) is installed it is named."""
    import importlib.util

    plain = url.startswith(("postgresql://", "postgres://"))
    if plain and importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _open_storage(url: str) -> Any:
    optuna = require_optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(driver_url(url), engine_kwargs=kwargs)
    except Exception as exc:  # a URL that names no database, a driver missing, a server down
        raise _storage_error(url, exc) from None


def _storage_error(url: str, exc: Exception) -> DqnkitError:
    return DqnkitError(f"--storage {url}: {(str(exc).splitlines() or [type(exc).__name__])[0]}")


def _load(study: Study) -> tuple[Any, Any]:
    """(optuna study, storage) with the TPE sampler and the median pruner."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _open_storage(study.storage)
    sampler = optuna.samplers.TPESampler(n_startup_trials=5, constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=study.base.total_steps // 3)
    return optuna.load_study(study_name=study.name, storage=storage, sampler=sampler, pruner=pruner), storage


@contextlib.contextmanager
def _setup_lock(study: Study) -> Iterator[None]:
    """One worker at a time makes a study's tables and queue: PostgreSQL's advisory lock,
    taken on a connection of its own before Optuna creates its tables (two workers creating
    them at once collide: "duplicate key value violates unique constraint
    pg_type_typname_nsp_index"). The SQLite file is in ``out``, which the command holds
    locked for its processes alone."""
    if not study.storage.startswith("postgres"):
        yield
        return
    from sqlalchemy import create_engine, pool, text

    key = zlib.crc32(f"dqnkit-tune/{study.name}".encode())
    try:
        engine = create_engine(driver_url(study.storage), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
        conn = engine.connect()
    except Exception as exc:  # a driver missing, a server down
        raise _storage_error(study.storage, exc) from None
    with conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    engine.dispose()


def prepare(study: Study) -> None:
    """Create the study or check that the stored one is this one; mark the trials a killed
    process left running as failed (SQLite: no other process can be running them); fill the
    queue up to ``trials`` trials that are done, running or waiting: first a rerun of each
    failed trial (:func:`_rerun_failed`), then new trials."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _setup_lock(study):
        storage = _open_storage(study.storage)
        made = optuna.create_study(storage=storage, study_name=study.name, direction="maximize", load_if_exists=True)
        attrs = study.attrs()
        if not made.user_attrs:
            for key, value in attrs.items():
                made.set_user_attr(key, value)
            point = starting_point(study.space, study.base)
            if point is not None:  # trial 0: the starting config itself
                made.enqueue_trial(point, {"start": True}, skip_if_exists=False)
        else:
            stored = {"seeds_per_trial": 1, **made.user_attrs}  # a study made before the key trained one seed
            differ = [k for k, v in attrs.items() if stored.get(k) != json.loads(json.dumps(v))]
            if differ:
                raise DqnkitError(
                    f"study {study.name!r} in {study.storage} was started with another {differ[0]}; "
                    "continue it with the command that started it, or choose another --study or --out"
                )
        if not study.storage.startswith("postgres"):
            study_id = storage.get_study_id_from_name(study.name)
            for trial in made.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                storage.set_trial_state_values(
                    storage.get_trial_id_from_study_id_trial_number(study_id, trial.number), TrialState.FAIL
                )
        live = made.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        )
        missing = study.trials - len(live) - _rerun_failed(made, study.trials - len(live))
        for _ in range(missing):
            made.enqueue_trial({}, skip_if_exists=False)


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


def _next_trial(optuna_study: Any, storage: Any) -> Any:
    """Take the next waiting trial (None: the queue is empty). ``set_trial_state_values``
    moves a waiting trial to running for one caller only on PostgreSQL; on SQLite the caller
    holds :func:`_queue_lock`."""
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(optuna_study.study_name)
    for frozen in optuna_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return optuna.Trial(optuna_study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


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
        optuna_study.tell(trial, state=TrialState.PRUNED)
        return f"trial {trial.number}: {exc} ({time.perf_counter() - start:.0f} s)"
    except (NonFiniteError, ConfigError) as exc:  # a diverged trial, or a sample the config refuses: pruned
        trial.set_user_attr("pruned_because", str(exc))
        optuna_study.tell(trial, state=TrialState.PRUNED)
        return f"trial {trial.number}: pruned: {exc}"
    except BaseException:  # Ctrl-C, SIGTERM (the run saved a checkpoint), or a bug: failed, not complete
        optuna_study.tell(trial, state=TrialState.FAIL)
        raise
    value = sum(values) / len(values)
    trial.set_user_attr("steps", sum(s["steps"] for s in summaries) // len(summaries))  # the mean over seeds
    trial.set_user_attr("stopped_early", all(s["stopped_early"] for s in summaries))
    finals = [s["eval_return_mean"] for s in summaries if s["eval_return_mean"] is not None]
    trial.set_user_attr("final_eval", sum(finals) / len(finals) if finals else None)
    if len(values) > 1:
        trial.set_user_attr("objective_per_seed", values)
    if not math.isfinite(value):
        optuna_study.tell(trial, state=TrialState.PRUNED)
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


@contextlib.contextmanager
def _queue_lock(study: Study) -> Iterator[None]:
    """One process at a time takes a trial from an SQLite study's queue. Optuna's take (waiting
    -> running) is atomic on PostgreSQL (SELECT ... FOR UPDATE) but not on SQLite, which has
    no row locks: three processes taking 60 trials took 67-68 (measured)."""
    if not study.storage.startswith("sqlite"):
        yield
        return
    with open(study.out / ".queue.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def work(study: Study, stop: Any = None) -> None:
    """One worker: take waiting trials and train them until the queue is empty (or ``stop`` is set)."""
    optuna_study, storage = _load(study)
    while stop is None or not stop.is_set():
        with _queue_lock(study):
            trial = _next_trial(optuna_study, storage)
        if trial is None:
            return
        print(f"  .. {run_trial(study, optuna_study, trial)}", file=sys.stderr, flush=True)


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


def confirm(study: Study, seeds: int, jobs: int) -> dict[str, Any]:
    """Train ``best.json`` and the starting config on ``seeds`` seeds no trial used; compare
    them by IQM with 95% stratified bootstrap CIs and the probability of improvement
    (``confirm.json``, ``confirm.png``). Where the best config is the starting one, it trains
    once and both rows are its runs (``tuned_is_preset``)."""
    import numpy as np

    from dqnkit import plots
    from dqnkit.config import from_dict
    from dqnkit.experiments import _train_all
    from dqnkit.logger import read_metrics
    from dqnkit.stats import improvement_ci, iqm_ci

    configs = {"tuned": from_dict(json.loads((study.out / "best.json").read_text())), "preset": study.base}
    same = configs["tuned"] == study.base  # the starting config was the best trial: train it once
    names = ["preset"] if same else list(configs)
    keys = [(name, CONFIRM_SEED + i) for i in range(seeds) for name in names]
    work = [(configs[n].replace(seed=s), str(study.out / "confirm" / f"{n}-s{s}"), False) for n, s in keys]
    _train_all(work, keys, max(1, min(jobs, len(work))))
    scores: dict[str, dict[str, list[float]]] = {n: {"objective": [], "final_eval": [], "steps": []} for n in names}
    for (name, _), (_, run_dir, _) in zip(keys, work):
        rows = read_metrics(Path(run_dir) / "metrics.csv")
        evals = [float(r["return"]) for r in rows if r["kind"] == "eval"]
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        scores[name]["objective"].append(objective_value(evals, study.base.total_steps, study.base.eval_every))
        scores[name]["final_eval"].append(summary["eval_return_mean"])
        scores[name]["steps"].append(summary["steps"])
    scores["tuned"] = scores.get("tuned", scores["preset"])
    result: dict[str, Any] = {"seeds": [s for n, s in keys if n == "preset"], "objective": OBJECTIVE}
    result["tuned_is_preset"] = same
    for name, values in scores.items():
        result[name] = {
            **{f"{m}_per_seed": v for m, v in values.items()},
            "steps_median": float(np.median(values["steps"])),
            **{f"{m}_iqm_ci95": list(iqm_ci(np.array(values[m]))) for m in ("objective", "final_eval")},
        }
        if study.base.stop_at_return is not None:
            result[name]["solved"] = int(sum(v >= study.base.stop_at_return for v in values["final_eval"]))
    tuned, preset = np.array(scores["tuned"]["objective"]), np.array(scores["preset"]["objective"])
    result["probability_of_improvement_ci95"] = list(improvement_ci(tuned, preset))
    atomic_write_text(study.out / "confirm.json", json.dumps(result, indent=2) + "\n")
    plots.intervals(
        {n: {m: result[n][f"{m}_iqm_ci95"] for m in ("objective", "final_eval")} for n in configs},
        study.out / "confirm.png",
        title=f"{study.base.preset} on {study.base.env_id}: IQM and 95% stratified bootstrap CI, {seeds} fresh seeds",
    )
    return result


def dashboard_line(storage: str) -> str:
    """The command that shows a study in Optuna's dashboard."""
    return f"optuna-dashboard {storage}"


__all__ = [
    "OBJECTIVE",
    "Study",
    "check_space",
    "objective_value",
    "prepare",
    "read_space",
    "report",
    "run",
    "starting_point",
    "work",
]
