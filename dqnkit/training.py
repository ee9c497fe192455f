"""The training loop: the only code that touches env, replay and agent together.

One iteration: act -> step the vector env -> store the real transitions -> learn what is
due -> evaluate / checkpoint when due. The run's algorithm (:mod:`dqnkit.algorithms`) says
what is due and learns it: for DQN, ``gradient_steps`` replay updates every ``train_freq``
transitions and a target update every ``target_update_interval``; for PQN, a full rollout
learned from and dropped. The agent decides *how* (targets, loss), the replay *what* is
sampled, and :mod:`dqnkit.build` makes the parts from the config. With ``overlap_env_step``
the next actions are chosen and sent to the envs before learning, so that the envs step
while the agent learns; the step is received at the top of the next iteration.

Everything the loop needs to continue (counters, the episode in progress, RNGs, env
state) is in :class:`Loop` or in the components' ``state_dict``, so a checkpoint taken
between two iterations resumes bit for bit. Checkpoints are written by a thread while the
loop goes on (:func:`_save`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnkit.agent import DQNAgent
from dqnkit.build import Parts, build, check_runnable, restore, snapshot
from dqnkit.checkpoint import load_checkpoint
from dqnkit.config import RUN_SETTINGS, Config, from_dict
from dqnkit.diagnostics import check_loss, check_transition
from dqnkit.envs import EnvMaker, check_env_id
from dqnkit.errors import ConfigError, DqnkitError
from dqnkit.evaluate import warn_if_endless
from dqnkit.files import RunLock, atomic_write_text
from dqnkit.monitor import (
    Monitor,
    RunMonitor,
    default_run_dir,
    open_run_dir,
    pop_learning_stats,
    record_learning_stats,
    run_summary,
)
from dqnkit.pqn import PQNAgent
from dqnkit.vector import finished_episodes, recv_step, send_step, true_next_obs


# ----------------------------------------------------------------------------- public API
def train(
    config: Config,
    run_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train from scratch into ``run_dir``; returns the summary (also in summary.json).

    Refuses a non-empty ``run_dir`` unless ``overwrite`` (which deletes it first).
    ``on_eval(step, mean_return)`` is called after each greedy evaluation is logged; an
    exception it raises stops the run there (``dqnkit tune`` prunes a trial so), keeping
    the metrics logged and the last checkpoint.
    """
    check_env_id(EnvMaker.from_config(config))  # bad input is refused before the disk is touched
    check_runnable(config)
    warn_if_endless(config, training=True)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    with open_run_dir(config, run_dir, overwrite):
        try:
            parts = build(config, run_dir)
        except DqnkitError:  # refused (a replay this machine cannot hold): leave no half-made run behind
            shutil.rmtree(run_dir)
            raise
        with _envs_closed(parts):
            _reset_envs(parts)
            return _run(parts, run_dir, progress, on_eval)


def resume(
    run_dir: str | Path,
    total_steps: int | None = None,
    *,
    progress: bool = False,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its latest checkpoint, up to ``total_steps``.

    ``changes``: run settings to change on the way (:data:`~dqnkit.config.RUN_SETTINGS`,
    e.g. ``device="cpu"`` for a run trained on a GPU); a key that changes what the run learns
    is refused. On another device or thread count the run goes on, not bit for bit.

    A run that is complete, or stopped early at ``stop_at_return``, is refused (ConfigError)
    unless ``total_steps`` is above its steps (or ``changes`` sets ``stop_at_return``): there
    is nothing else to continue. (One that was stopped after its last checkpoint but before
    its summary.json finishes that.)
    """
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    config, done, changes = from_dict(ckpt["config"]), ckpt["loop"]["step"], changes or {}
    learning = sorted(set(changes) - RUN_SETTINGS)
    if learning:
        raise ConfigError(
            f"{learning[0]} changes what the run learns, which a resumed run keeps; a resume may change "
            f"{', '.join(sorted(RUN_SETTINGS))} (or train a new run: --config {run_dir / 'config.json'})"
        )
    config = config.replace(**changes)
    go_on = total_steps is not None or "stop_at_return" in changes  # asked to: an early stop no longer applies
    finished = done >= config.total_steps or (ckpt["loop"]["stopped_early"] and not go_on)
    if total_steps is not None:
        if total_steps <= done:
            raise ConfigError(f"`total_steps` {total_steps:,} is not above the {done:,} steps this run already has")
        config = config.replace(total_steps=total_steps)
    elif finished and (run_dir / "summary.json").exists():
        why = "stopped early (its evaluation reached stop_at_return)" if done < config.total_steps else "is complete"
        raise ConfigError(
            f"{run_dir} {why} at step {done:,}: nothing to resume; `total_steps` above {done:,} trains it further"
        )
    check_runnable(config)
    with RunLock(run_dir):  # one process at a time trains into a run
        parts = build(config, run_dir)
        with _envs_closed(parts):
            restore(parts, ckpt)  # a checkpoint that does not fit is refused before anything is written
            atomic_write_text(run_dir / "config.json", config.to_json())
            if go_on:
                parts.loop.stopped_early = False
            return _run(parts, run_dir, progress)


def train_in_memory(
    config: Config, *, on_eval: Callable[[int, float], None] | None = None
) -> tuple[DQNAgent | PQNAgent, dict[str, Any]]:
    """Train ``config`` without a run directory; returns the trained agent and the summary.

    Nothing is written: no metrics, TensorBoard, checkpoints, films or plots (so nothing can
    resume it either). For a notebook, or a test of the loop, that wants the agent and not the
    files. On the CPU the agent is bit for bit the one :func:`train` gives for the config.
    """
    check_env_id(EnvMaker.from_config(config))
    check_runnable(config)
    warn_if_endless(config, training=True)
    parts = build(config)
    with _envs_closed(parts):
        _reset_envs(parts)
        summary = _run(parts, None, False, on_eval)
    return parts.agent, summary


def _reset_envs(parts: Parts) -> None:
    obs, _ = parts.envs.reset(seed=parts.config.seed)
    n = parts.config.num_envs
    parts.loop.obs, parts.loop.ep_return, parts.loop.ep_length = obs, np.zeros(n), np.zeros(n, dtype=np.int64)


# ----------------------------------------------------------------------------- the loop
@contextlib.contextmanager
def _envs_closed(parts: Parts) -> Iterator[None]:
    """Close the envs however the run ends (complete, an error, Ctrl-C): an async vector env's
    worker processes and a pool's threads are not left behind in a process that goes on.
    After an error, closing is best effort: a worker that died with it must not replace it."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            _close_envs(parts)
        raise
    _close_envs(parts)


def _close_envs(parts: Parts) -> None:
    if parts.loop.in_flight is not None:  # a step under way (an early stop, or an error)
        with contextlib.suppress(Exception):  # an env that failed is closed all the same
            recv_step(parts.envs)
    parts.envs.close()


OnEval = Callable[[int, float], None] | None  # train()'s on_eval: (step, mean return) after each evaluation


def _run(parts: Parts, run_dir: Path | None, progress: bool, on_eval: OnEval = None) -> dict[str, Any]:
    with flush_denormals(parts.config.flush_denormal):
        return _loop(parts, run_dir, progress, on_eval)


def _loop(parts: Parts, run_dir: Path | None, progress: bool, on_eval: OnEval) -> dict[str, Any]:
    loop = parts.loop
    if run_dir is None:  # train_in_memory: the same loop, written nowhere
        monitor = Monitor(parts.config, step=loop.step, wall_s=loop.wall_s)
    else:
        monitor = RunMonitor(parts.config, run_dir, step=loop.step, wall_s=loop.wall_s, progress=progress)
    evaluate = partial(_evaluate, parts, monitor, on_eval)
    try:
        return _steps(parts, monitor, run_dir, evaluate)
    except BaseException:
        monitor.abandon()
        raise


def _steps(parts: Parts, monitor: Monitor, run_dir: Path | None, evaluate: Callable[[], None]) -> dict[str, Any]:
    cfg, agent, loop, algo = parts.config, parts.agent, parts.loop, parts.algo
    try:
        if loop.eval_due:  # a stop abandoned it before the checkpoint: played now, at its step
            evaluate()
        while loop.step < cfg.total_steps and not loop.stopped_early and not monitor.interrupted:
            if loop.step >= parts.save_deadline:  # the next step could overwrite rows being saved
                monitor.wait_saved()
                parts.save_deadline = math.inf
            eps = algo.epsilon(loop.step, agent.updates)
            if loop.in_flight is None:  # the serial loop; or an overlapped one's first step
                _send(parts, agent.act(loop.obs, eps))
            actions, loop.in_flight = loop.in_flight, None
            next_obs, rewards, terminated, truncated, info = recv_step(parts.envs)
            real_next = true_next_obs(next_obs, info)
            check_transition(rewards, real_next, loop.step)
            parts.replay.add_step(loop.obs, actions, rewards, real_next, terminated, truncated)

            prev, loop.obs = loop.step, next_obs
            loop.step += cfg.num_envs
            for ret, length in finished_episodes(loop.ep_return, loop.ep_length, rewards, terminated, truncated, info):
                loop.episodes += 1
                monitor.episode(loop.step, loop.episodes, ret, length, eps, *pop_learning_stats(loop, loop.step))

            if cfg.overlap_env_step and loop.step < cfg.total_steps:  # the envs step while the agent learns
                _send(parts, agent.act(loop.obs, algo.epsilon(loop.step, agent.updates)))
            for stats in algo.learn(agent, parts.replay, prev, loop.step, hold=loop.refill_until):
                record_learning_stats(loop, stats)
            monitor.advance(cfg.num_envs)

            loop.eval_due = loop.eval_due or algo.evaluation_due(prev, loop.step)
            if loop.eval_due:
                evaluate()
            if algo.checkpoint_due(prev, loop.step):
                _save(parts, monitor)
        sps = monitor.steps_per_second(loop.step)  # the loop's own rate, before the final evaluation and checkpoint
        if cfg.final_eval and loop.eval_step != loop.step and not monitor.interrupted:
            evaluate()  # a stop abandons it too: the resumed run plays it
    finally:
        monitor.close()
    if monitor.interrupted:
        _save(parts, monitor)
        if monitor.writes:
            raise monitor.stopped(f"checkpoint saved, continue with `dqnkit train --resume {run_dir}`")
        raise monitor.stopped("nothing is kept: `train_in_memory` writes no checkpoint")
    _save(parts, monitor)
    summary = {
        **run_summary(cfg, loop.step, loop.episodes, agent, loop.eval_mean, loop.eval_std, loop.stopped_early),
        "resumed_with_fresh_episodes": loop.env_fresh_reset,
        "resumed_with_empty_replay": loop.replay_refilled,
        "wall_s": round(loop.wall_s, 3),
        "sps": round(sps, 1),
    }
    return monitor.finish(summary, title=f"{cfg.preset} on {cfg.env_id}, seed {cfg.seed}")


def _send(parts: Parts, actions: np.ndarray) -> None:
    """Start the envs' step on ``actions``; the loop receives it (:func:`recv_step`) later."""
    send_step(parts.envs, actions)
    parts.loop.in_flight = actions


def _evaluate(parts: Parts, monitor: Monitor, on_eval: OnEval = None) -> None:
    """The evaluation due at this step; one that a stop abandons stays due (``eval_due``):
    the checkpoint says so, and the resumed run plays it first. ``on_eval`` hears of it last."""
    loop = parts.loop
    result = monitor.evaluate(parts.agent, loop.step, loop.episodes)
    if result is None:
        return
    loop.eval_mean, loop.eval_std = result
    loop.eval_step, loop.eval_due = loop.step, False
    loop.stopped_early = loop.stopped_early or monitor.reached_goal(loop.eval_mean)
    if on_eval is not None:
        on_eval(loop.step, loop.eval_mean)


def _save(parts: Parts, monitor: Monitor) -> None:
    check_loss(parts.loop.loss_sum, parts.loop.step)
    parts.loop.wall_s = monitor.wall_s()
    if not monitor.writes:  # nothing would keep the snapshot
        return
    saver = parts.replay_saver
    monitor.wait_saved()  # the previous save commits first: the new chunk holds the rows since it
    payload = snapshot(parts)  # copies: the loop goes on while a thread writes them
    monitor.save(parts.loop.step, payload, before=saver.write, after=saver.commit, background=True)
    # the new replay rows are read from the ring by that thread: wait for it before they could be overwritten
    parts.save_deadline = parts.loop.step + parts.config.num_envs * saver.safe_steps


@contextlib.contextmanager
def flush_denormals(on: bool) -> Iterator[None]:
    """``torch.set_flush_denormal(on)`` for this thread (the CPU's flush-to-zero mode) while
    the block runs, then the mode it had before: the process is the caller's."""
    before = _flushing_denormals()
    torch.set_flush_denormal(on)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _flushing_denormals() -> bool:
    """Whether this thread's CPU flushes denormals: 1e-39 is one, and survives a product only if not."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0
