"""What a run shows and keeps, whoever collects its transitions: `dqnkit train` and Ape-X.

The collecting loop (:mod:`dqnkit.training`, or Ape-X's learner) decides *when*; the monitor
decides *how*: an episode's row and the progress bar, an evaluation (played, checked, logged,
compared with ``stop_at_return``), a checkpoint (metrics first), Ctrl-C, and what the run
leaves behind (``summary.json``, ``learning_curve.png``).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dqnkit import __version__
from dqnkit.checkpoint import CheckpointDir
from dqnkit.config import Config
from dqnkit.diagnostics import check_loss, overestimation
from dqnkit.errors import DqnkitError, Interrupted, NonFiniteError
from dqnkit.evaluate import EvaluationStopped, evaluate, record_video
from dqnkit.files import RunLock, atomic_write_text, json_text, make_dir, refuse_file_in_the_way
from dqnkit.logger import Logger, iter_metrics


def default_run_dir(config: Config, prefix: str = "") -> Path:
    """``runs/<prefix><preset or env>-s<seed>-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.preset if config.preset != "custom" else config.env_id.replace("/", "_")
    return Path("runs") / f"{prefix}{name}-s{config.seed}-{stamp}"


def check_run_dir(run_dir: Path, overwrite: bool, *, resumable: bool = True) -> None:
    """Refuse ``run_dir`` if it is a file, or holds anything and ``overwrite`` is not given.

    ``resumable``: whether the caller's runs continue with ``dqnkit train --resume`` (Ape-X's
    do not), so that the refusal suggests it only where it would work.
    """
    refuse_file_in_the_way(run_dir, f"run directory {run_dir}")
    if not overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        instead = "choose another `run_dir`"
        if resumable and (run_dir / "checkpoints").is_dir():
            instead = f"continue it with `resume({run_dir})`"
        raise DqnkitError(f"run directory {run_dir} is not empty; {instead} or replace it with `overwrite=True`")


def open_run_dir(config: Config, run_dir: Path, overwrite: bool, *, resumable: bool = True) -> RunLock:
    """Create ``run_dir`` with the run's ``config.json``, locked for this process (release
    the returned lock when the run ends). A non-empty one is only replaced with explicit
    consent (``overwrite``), and never while another process trains into it."""
    check_run_dir(run_dir, overwrite, resumable=resumable)
    if run_dir.is_dir():
        RunLock(run_dir).release()  # refuses if another process holds it
        shutil.rmtree(run_dir)
    make_dir(run_dir, f"run directory {run_dir}")
    lock = RunLock(run_dir)
    atomic_write_text(run_dir / "config.json", config.to_json())
    return lock


def run_summary(
    config: Config,
    steps: int,
    episodes: int,
    agent: Any,
    eval_mean: float,
    eval_std: float,
    stopped_early: bool,
) -> dict[str, Any]:
    """The summary fields every run reports (`dqnkit train` and Ape-X add their own)."""
    return {
        "env_id": config.env_id,
        "preset": config.preset,
        "seed": config.seed,
        "steps": steps,
        "episodes": episodes,
        "updates": agent.updates,
        "eval_return_mean": eval_mean,
        "eval_return_std": eval_std,
        "eval_episodes": config.eval_episodes,
        "stopped_early": stopped_early,
        "device": str(agent.device),
    }


class Monitor:
    """What every run has, written nowhere: the clock, Ctrl-C and SIGTERM as a flag, the
    recent returns, the greedy evaluations and the goal. :func:`dqnkit.training.train_in_memory`
    runs with it as it is; :class:`RunMonitor` adds the run directory (metrics, TensorBoard,
    the progress bar, checkpoints, the summary and the learning curve).
    """

    writes = False  # whether checkpoints are kept: the loop takes no snapshot for a monitor that drops it

    def __init__(self, config: Config, *, step: int = 0, wall_s: float = 0.0) -> None:
        self.config = config
        self.recent: deque[float] = deque(maxlen=100)
        self.eval_seed = 1_000_000 + 1000 * config.seed  # fixed across evaluations: comparable points
        self._start_s, self._start_step, self._base_s = time.perf_counter(), step, wall_s
        self._step = step
        self._stop = _StopFlag()

    # ------------------------------------------------------------------ time and stopping
    def wall_s(self) -> float:
        """Training time, summed over the sessions a resumed run was trained in."""
        return self._base_s + time.perf_counter() - self._start_s

    def steps_per_second(self, step: int) -> float:
        """Of this session only (a resumed run's earlier sessions may have run elsewhere)."""
        return (step - self._start_step) / max(time.perf_counter() - self._start_s, 1e-9)

    @property
    def interrupted(self) -> bool:
        """Ctrl-C was pressed, or SIGTERM came: the loop stops at its next consistent point and saves."""
        return self._stop.signum is not None

    def interruption(self, where: str) -> Interrupted:
        """The exception that ends an interrupted run, once it is saved; ``where`` says how to go on."""
        signum = self._stop.signum or signal.SIGINT
        name = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        return Interrupted(f"interrupted{name} at step {self._step:,}; {where}", signum)

    def advance(self, steps: int) -> None:
        """``steps`` more env steps."""
        self._step += steps

    # ------------------------------------------------------------------ episodes and evaluations
    def episode(
        self,
        step: int,
        episode: int,
        ret: float,
        length: int,
        epsilon: float,
        loss: float | None = None,
        q_mean: float | None = None,
    ) -> None:
        """One finished episode (its return joins the recent ones)."""
        self.recent.append(ret)

    def evaluate(self, agent: Any, step: int, episodes: int) -> tuple[float, float] | None:
        """Play ``eval_episodes`` greedy episodes; (mean, std) of their returns. None: Ctrl-C
        or SIGTERM came while they played, and they were abandoned."""
        result = self._play(agent, step)
        return None if result is None else (float(result.returns.mean()), float(result.returns.std()))

    def _play(self, agent: Any, step: int) -> Any:
        """The evaluation's episodes (an ``EvalResult``), or None where a stop abandoned them."""
        cfg = self.config
        stop = lambda: self.interrupted  # noqa: E731
        try:
            result = evaluate(agent, cfg.env_id, cfg.eval_episodes, self.eval_seed, cfg.eval_epsilon, cfg.gamma, stop)
        except EvaluationStopped:
            return None
        if not math.isfinite(float(result.returns.mean())):
            raise NonFiniteError(f"non-finite evaluation return at step {step}; the last checkpoint is kept")
        return result

    def reached_goal(self, eval_mean: float) -> bool:
        """The evaluation met ``stop_at_return``: the run may stop early."""
        return self.config.stop_at_return is not None and eval_mean >= self.config.stop_at_return

    # ------------------------------------------------------------------ checkpoints and the end
    def save(self, step: int, payload: dict[str, Any], **_: Any) -> None:
        """Nothing is kept (see :attr:`writes`)."""

    def wait_saved(self) -> None:
        """Nothing is being written."""

    def close(self) -> None:
        """Give Ctrl-C and SIGTERM back."""
        self._stop.restore()

    def abandon(self) -> None:
        """A run that stops on an error."""
        self.close()

    def stopped(self, where: str) -> Interrupted:
        """The exception that ends a run stopped by Ctrl-C or SIGTERM, once its last checkpoint
        is saved; ``where`` says how to go on."""
        return self.interruption(where)

    def finish(self, summary: dict[str, Any], title: str) -> dict[str, Any]:
        """The run's summary."""
        return summary


class RunMonitor(Monitor):
    """Logging, evaluation, checkpoints, Ctrl-C and the summary of one run in ``run_dir``.

    ``step`` and ``wall_s`` are where a resumed run continues from (its metrics rows past
    ``step`` are dropped: they are logged again); a fresh run starts at 0.
    """

    # Where stderr is not a terminal (a log file, a batch job), a bar redrawn in place piles up
    # as one endless line: the progress is then a plain line every LINE_EVERY_S seconds.
    LINE_EVERY_S = 30.0
    # TensorBoard's `perf/steps_per_s` (CleanRL's charts/SPS, SB3's time/fps): the rate over
    # windows of at least this long, written at an episode's end (no cost per step)
    RATE_EVERY_S = 5.0
    writes = True

    def __init__(
        self, config: Config, run_dir: Path, *, step: int = 0, wall_s: float = 0.0, progress: bool = False
    ) -> None:
        self.run_dir = run_dir
        self.logger = Logger(run_dir, resume_step=step if step else None)
        table = "\n".join(f"| {key} | `{value}` |" for key, value in config.to_dict().items())
        self.logger.text("config", f"| key | value |\n|---|---|\n{table}", step)  # as this session runs it
        self.checkpoints = CheckpointDir(run_dir, keep=config.keep_checkpoints)
        super().__init__(config, step=step, wall_s=wall_s)  # takes Ctrl-C over: after what can fail
        episodes = (float(r["return"]) for r in iter_metrics(self.logger.path) if r["kind"] == "episode")
        self.recent.extend(episodes)
        if progress:  # a header for the bar, once the run's input has been checked
            resumed = f", resuming at step {step:,}" if step else ""
            print(f"training preset {config.preset} on {config.env_id}{resumed}", file=sys.stderr)
        self._lines = progress and not sys.stderr.isatty()
        self._bar = tqdm(
            total=config.total_steps,
            initial=step,
            unit="step",
            disable=not progress or self._lines,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self._line_at = (step, self._start_s)  # (step, time) of the last line
        self._rate_at = (step, self._start_s)  # (step, time) of the last perf/steps_per_s point
        self._epsilon: float | None = None  # the latest episode's, for the progress line
        self._last_eval: tuple[int, float] | None = None  # (step, mean return)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="dqnkit-checkpoint")
        self._saving: Future[None] | None = None

    # ------------------------------------------------------------------ time and progress
    def advance(self, steps: int) -> None:
        """Move the progress bar by ``steps`` env steps (or, without a terminal, print a
        progress line when one is due)."""
        self._bar.update(steps)
        super().advance(steps)
        if self._lines and time.perf_counter() >= self._line_at[1] + self.LINE_EVERY_S:
            print(self.progress_line(), file=sys.stderr, flush=True)
            self._line_at = (self._step, time.perf_counter())

    def progress_line(self) -> str:
        """Steps done, steps/s since the previous line, the mean return of the last 100
        episodes, epsilon and the latest evaluation, as one line."""
        total, (step, at) = self.config.total_steps, self._line_at
        parts = [f"step {self._step:,}/{total:,} ({100 * self._step / total:.0f}%)"]
        parts.append(f"{(self._step - step) / max(time.perf_counter() - at, 1e-9):,.0f} steps/s")
        if self.recent:
            parts.append(f"return {np.mean(self.recent):.1f} (last {len(self.recent)} episodes)")
        if self._epsilon is not None:
            parts.append(f"epsilon {self._epsilon:.3f}")
        if self._last_eval is not None:
            parts.append(f"eval {self._last_eval[1]:.1f} at step {self._last_eval[0]:,}")
        return "  ".join(parts)

    # ------------------------------------------------------------------ what is logged
    def episode(
        self,
        step: int,
        episode: int,
        ret: float,
        length: int,
        epsilon: float,
        loss: float | None = None,
        q_mean: float | None = None,
    ) -> None:
        """One finished episode: a metrics row, the bar's recent return, and TensorBoard's
        steps/s when a window has passed."""
        super().episode(step, episode, ret, length, epsilon)
        self._epsilon = epsilon
        values = {"return": ret, "length": length, "epsilon": round(epsilon, 5), "loss": loss, "q_mean": q_mean}
        self.logger.row("episode", step, episode=episode, **values, wall_s=round(self.wall_s(), 3))
        now = time.perf_counter()
        if now >= self._rate_at[1] + self.RATE_EVERY_S:
            self.logger.scalar("perf/steps_per_s", (step - self._rate_at[0]) / (now - self._rate_at[1]), step)
            self._rate_at = (step, now)
        self._bar.set_postfix(ep=episode, ret=f"{np.mean(self.recent):.1f}", eps=f"{epsilon:.3f}", refresh=False)

    def evaluate(self, agent: Any, step: int, episodes: int) -> tuple[float, float] | None:
        """Play ``eval_episodes`` greedy episodes; log them; (mean, std) of their returns.
        None: Ctrl-C or SIGTERM came while they played, and they were abandoned (nothing
        logged); a stop while the film plays ends the film there, the evaluation logged."""
        cfg = self.config
        self._bar.set_description(f"evaluating {cfg.eval_episodes} episodes")  # ten Atari games take minutes
        try:
            result = self._play(agent, step)
        finally:
            self._bar.set_description(None)
        if result is None:
            return None
        mean, std = float(result.returns.mean()), float(result.returns.std())
        probe = {}
        if cfg.log_overestimation:
            probe["q_pred"], probe["q_real"] = overestimation(agent, result)
        values = {"return": mean, "return_std": std, "wall_s": round(self.wall_s(), 3), **probe}
        self.logger.row("eval", step, episode=episodes, **values)
        self.logger.flush()
        self._last_eval = (step, mean)
        if cfg.eval_video != "none":  # the evaluation's own seed and RNG: training goes on unchanged
            path = self.run_dir / "videos" / f"step_{step:010d}.{cfg.eval_video}"
            path.parent.mkdir(exist_ok=True)
            film = (agent, cfg.env_id, path, self.eval_seed, cfg.eval_epsilon, cfg.video_max_steps)
            record_video(*film, stop=lambda: self.interrupted)
        return mean, std

    def save(  # type: ignore[override]
        self,
        step: int,
        payload: dict[str, Any],
        *,
        before: Callable[[], None] | None = None,
        after: Callable[[list[Path]], None] | None = None,
        background: bool = False,
    ) -> None:
        """A checkpoint of ``step``. Metrics first: a resumed run keeps exactly the rows up to
        its checkpoint's step, so they must be on disk before the checkpoint that vouches for them.

        ``before`` writes what the checkpoint refers to (replay chunks), ``after`` gets the
        numbered checkpoints kept once it is on disk. ``background``: all three run on a
        writer thread while the loop goes on (``payload`` must hold copies, not live state);
        saves stay in order, and one that failed raises at the next :meth:`save` or
        :meth:`wait_saved`.
        """
        self.logger.flush()
        self.wait_saved()

        def write() -> None:
            if before is not None:
                before()
            self.checkpoints.save(step, payload)
            if after is not None:
                after(self.checkpoints.numbered())

        if background:
            self._saving = self._writer.submit(write)
        else:
            write()

    def wait_saved(self) -> None:
        """Wait for the checkpoint being written in the background; raise what made it fail."""
        saving, self._saving = self._saving, None
        if saving is not None:
            saving.result()

    # ------------------------------------------------------------------ the end
    def close(self) -> None:
        """Stop the bar and give Ctrl-C back; the run's files stay open for :meth:`finish`.
        A checkpoint still being written is finished first, so a run that stops on an error
        leaves a complete run directory (the save's own error, if any, is kept for
        :meth:`wait_saved`)."""
        self._bar.close()
        super().close()
        if self._saving is not None:
            wait_futures([self._saving])

    def abandon(self) -> None:
        """A run that stops on an error: close the checkpoint writer, metrics.csv and the
        TensorBoard writer, whose rows are on disk up to the error. (They stayed open, with
        TensorBoard's thread, in a process that goes on after the error.)"""
        self.close()
        self._writer.shutdown()
        self.logger.close()

    def stopped(self, where: str) -> Interrupted:
        """Wait for the last checkpoint and close metrics.csv and TensorBoard, then the
        exception that ends the run (see :meth:`Monitor.stopped`)."""
        self.wait_saved()
        self.logger.close()
        return self.interruption(where)

    def finish(self, summary: dict[str, Any], title: str) -> dict[str, Any]:
        """Write ``summary.json`` (with the version) and the learning curve; return the summary."""
        self.wait_saved()
        self._writer.shutdown()
        self.logger.close()
        summary = {**summary, "run_dir": str(self.run_dir), "dqnkit_version": __version__}
        atomic_write_text(self.run_dir / "summary.json", json_text(summary, indent=2))
        from dqnkit.plots import learning_curve  # matplotlib (0.3 s): not for load() and eval

        learning_curve(self.run_dir / "metrics.csv", self.run_dir / "learning_curve.png", title=title)
        return summary


def record_learning_stats(state: Any, stats: Any) -> None:
    """Add one update's loss and mean Q to ``state.loss_sum`` / ``state.q_sum`` / ``state.n_losses``
    (tensors: adding them never waits for the device)."""
    state.loss_sum, state.q_sum = state.loss_sum + stats.loss, state.q_sum + stats.q_mean
    state.n_losses += 1


def pop_learning_stats(state: Any, step: int) -> tuple[float | None, float | None]:
    """Mean loss and Q since the last call (None before learning starts); resets the sums.
    A non-finite loss stops the run here, at the first episode row that would show it."""
    if not state.n_losses:  # nothing learned since the last row: the sums are still zero
        return None, None
    loss, q_mean = (state.loss_sum / state.n_losses).item(), (state.q_sum / state.n_losses).item()
    if not math.isfinite(loss):  # checked on the host value: a torch.isfinite per episode costs more
        check_loss(state.loss_sum, step)
    state.loss_sum, state.q_sum, state.n_losses = torch.zeros(()), torch.zeros(()), 0
    return loss, q_mean


class _StopFlag:
    """Turns Ctrl-C (SIGINT) and SIGTERM (``kill``, a batch scheduler's preemption, ``docker
    stop``) into a flag checked between iterations, so the checkpoint written on the way out
    is taken at a consistent point. ``signum``: the first of them received, else None. A
    second Ctrl-C stops at once, keeping the last complete checkpoint: the step may still
    hold a long evaluation (ten Atari games), and a user pressing again will not wait."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave the signals alone
            self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            again = "Ctrl-C again: at once, without" if signum == signal.SIGINT else signal.Signals(signum).name
            # os.write: a print could land inside the progress bar's own write to stderr
            os.write(2, f"\nstopping at the end of this step to save a checkpoint ({again})\n".encode())
        elif signum == signal.SIGINT:  # a long Atari evaluation still to finish: the user will not wait
            self.restore()
            raise KeyboardInterrupt("stopped at once: the run keeps its last complete checkpoint")

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
