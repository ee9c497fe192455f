"""Where a ``dqnkit tune`` study lives: Optuna's storage (an SQLite file, or PostgreSQL that
many machines share), the locks that let one worker at a time make the study or take a
trial, and the heartbeats that tell a lost worker from a slow one.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dqnkit.errors import DqnkitError

PIP_LINE = "pip install 'dqnkit[tune]'"


def require_optuna() -> Any:
    """The optuna module, or a one-line error (exit 2) saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise DqnkitError(f"dqnkit tune needs Optuna: {PIP_LINE}") from None
    return optuna


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


def open_storage(url: str, heartbeat_s: int | None = None) -> Any:
    """Optuna's storage at ``url``; with ``heartbeat_s``, its running trials' heartbeats are
    kept, and one silent for three intervals is stale (:func:`fail_stale`)."""
    optuna = require_optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    beat = {} if heartbeat_s is None else {"heartbeat_interval": heartbeat_s, "grace_period": 3 * heartbeat_s}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
            return optuna.storages.RDBStorage(driver_url(url), engine_kwargs=kwargs, **beat)
    except Exception as exc:  # a URL that names no database, a driver missing, a server down
        raise storage_error(url, exc) from None


def storage_error(url: str, exc: Exception) -> DqnkitError:
    """The one-line error for a storage that cannot be reached or opened."""
    return DqnkitError(f"--storage {url}: {(str(exc).splitlines() or [type(exc).__name__])[0]}")


@contextlib.contextmanager
def beating(storage: Any, trial_id: int, interval: int | None) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the block runs (a thread,
    as Optuna's own ``optimize`` does)."""
    if interval is None:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a server away for a moment: the next beat may get through
                storage.record_heartbeat(trial_id)
            if done.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def setup_lock(url: str, name: str) -> Iterator[None]:
    """One worker at a time makes a study's tables and queue: PostgreSQL's advisory lock,
    taken on a connection of its own before Optuna creates its tables (two workers creating
    them at once collide: "duplicate key value violates unique constraint
    pg_type_typname_nsp_index"). The SQLite file is in ``out``, which the command holds
    locked for its processes alone."""
    if not url.startswith("postgres"):
        yield
        return
    from sqlalchemy import create_engine, pool, text

    key = zlib.crc32(f"dqnkit-tune/{name}".encode())
    try:
        engine = create_engine(driver_url(url), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
        conn = engine.connect()
    except Exception as exc:  # a driver missing, a server down
        raise storage_error(url, exc) from None
    with conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    engine.dispose()


def next_trial(optuna_study: Any, storage: Any) -> Any:
    """Take the next waiting trial (None: the queue is empty). ``set_trial_state_values``
    moves a waiting trial to running for one caller only on PostgreSQL; on SQLite the caller
    holds :func:`queue_lock`."""
    import optuna
    from optuna.trial import TrialState

    for frozen in optuna_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        taken = trial_id(storage, optuna_study.study_name, frozen.number)
        try:
            if storage.set_trial_state_values(taken, TrialState.RUNNING):
                if storage.get_heartbeat_interval():  # at once: a trial never heard from is never stale
                    storage.record_heartbeat(taken)
                return optuna.Trial(optuna_study, taken)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def trial_id(storage: Any, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of the study (what a storage's methods take)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


@contextlib.contextmanager
def queue_lock(url: str, out: Path) -> Iterator[None]:
    """One process at a time takes a trial from an SQLite study's queue. Optuna's take (waiting
    -> running) is atomic on PostgreSQL (SELECT ... FOR UPDATE) but not on SQLite, which has
    no row locks: three processes taking 60 trials took 67-68 (measured)."""
    if not url.startswith("sqlite"):
        yield
        return
    with open(out / ".queue.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dashboard_line(storage: str) -> str:
    """The command that shows a study in Optuna's dashboard."""
    return f"optuna-dashboard {storage}"


def fail_stale(optuna_study: Any) -> None:
    """Mark failed the running trials whose worker has been silent for three heartbeats (a
    worker killed outright, its machine lost), where the storage keeps heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
        optuna.storages.fail_stale_trials(optuna_study)
