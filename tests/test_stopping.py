"""Ctrl-C and SIGTERM stop every command within about a second, wherever it is (an env step,
an encoder call, a long evaluation), closing what it wrote: exit 130 or 143."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dqnkit import load, presets, resume, train
from dqnkit.checkpoint import load_checkpoint
from dqnkit.cli import main
from dqnkit.errors import Interrupted
from dqnkit.evaluate import _GymEpisodes
from dqnkit.logger import read_metrics

TINY = dict(total_steps=600, learning_starts=100, batch_size=16, buffer_size=1000, hidden_sizes=(16,), device="cpu")


def _cfg(**overrides):
    return presets.get("cartpole", **{**TINY, "stop_at_return": None, **overrides})


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in read_metrics(run / "metrics.csv")]


def _q(run: Path) -> np.ndarray:
    agent = load(run)
    return agent.q_values(np.random.default_rng(0).standard_normal((16, *agent.obs_shape)).astype(np.float32))


@pytest.mark.slow
def test_sigterm_during_an_evaluation_saves_and_the_resumed_run_plays_it(tmp_path, monkeypatch):
    """The evaluation is abandoned within a step (ten Atari games took minutes before the
    run saved); the checkpoint says it is due, and the resumed run plays it at its step."""
    cfg = _cfg(eval_every=200, eval_episodes=2)
    train(cfg, tmp_path / "whole")
    resets, steps, real_reset, real_step = itertools.count(1), itertools.count(1), _GymEpisodes.reset, _GymEpisodes.step

    def reset(self):  # the second evaluation's episodes start
        self.kill_at = 3 if next(resets) == 2 else None  # CartPole episodes last 8+ steps
        return real_reset(self)

    def step(self, actions, playing):
        if self.kill_at is not None and next(steps) == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, actions, playing)

    monkeypatch.setattr(_GymEpisodes, "reset", reset)
    monkeypatch.setattr(_GymEpisodes, "step", step)
    with pytest.raises(Interrupted, match="by SIGTERM at step 400") as stopped:
        train(cfg, tmp_path / "split")
    assert stopped.value.signum == signal.SIGTERM
    loop = load_checkpoint(tmp_path / "split")["loop"]
    assert loop["step"] == 400 and loop["eval_due"] and loop["eval_step"] == 200
    assert [r["step"] for r in _rows(tmp_path / "split") if r["kind"] == "eval"] == ["200"]
    monkeypatch.undo()
    resume(tmp_path / "split")
    assert _rows(tmp_path / "split") == _rows(tmp_path / "whole")  # the evaluation at 400 included
    assert np.array_equal(_q(tmp_path / "split"), _q(tmp_path / "whole"))


def test_sigterm_during_the_final_evaluation_saves_and_resume_finishes_it(tmp_path, monkeypatch):
    cfg = _cfg(eval_every=0, eval_episodes=2)
    calls, real_step = itertools.count(1), _GymEpisodes.step

    def step(self, actions, playing):
        if next(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, actions, playing)

    monkeypatch.setattr(_GymEpisodes, "step", step)
    with pytest.raises(Interrupted, match="by SIGTERM at step 600"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists()
    monkeypatch.undo()
    summary = resume(tmp_path / "run")
    assert summary["steps"] == 600 and np.isfinite(summary["eval_return_mean"])
    assert [r["step"] for r in _rows(tmp_path / "run") if r["kind"] == "eval"] == ["600"]


def test_sigterm_mid_film_exits_143_with_a_valid_gif(tmp_path, monkeypatch, capsys):
    import conftest

    train(_cfg(env_id="dqnkit-test/Endless-v0", max_episode_steps=50, eval_every=0, final_eval=False), tmp_path / "run")
    real = conftest.Endless.render

    def render(self):
        if self.t == 30:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(conftest.Endless, "render", render)
    out, before = tmp_path / "film.gif", signal.getsignal(signal.SIGTERM)
    assert main(["eval", str(tmp_path / "run"), "--episodes", "1", "--video", str(out)]) == 143
    err = capsys.readouterr().err  # the film ends between two steps: the frames up to the signal's
    assert f"stopped by SIGTERM; the video {out} holds the 31 frames filmed before it" in err
    with Image.open(out) as image:
        assert 30 <= image.n_frames < 51
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is its own only


def _cliff_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    train(_cfg(env_id="CliffWalking-v1", total_steps=300, eval_every=0, final_eval=False), run)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_eval_video_on_cliffwalking_within_2_s(tmp_path, signum):
    """CliffWalking has no time limit and pygame draws it: SDL caught SIGTERM and the process
    filmed on (growing to 24 GB), until only SIGKILL ended it."""
    run, out = _cliff_run(tmp_path), tmp_path / "cw.gif"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dqnkit.cli", "eval", str(run), "--episodes", "1", "--video", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's foreground job
        env={k: v for k, v in os.environ.items() if not k.startswith("SDL_")},  # as a user's shell has it
    )
    while not out.exists() and proc.poll() is None:  # the evaluation (27,000 steps) plays first
        time.sleep(0.1)
    time.sleep(1.0)  # filming now
    assert proc.poll() is None, proc.communicate()
    sent = time.perf_counter()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert time.perf_counter() - sent < 2.0 and proc.returncode == 128 + signum, err
    assert "frames filmed before it" in err and "Traceback" not in err
    with Image.open(out) as image:
        image.seek(image.n_frames - 1)  # every frame decodes


@pytest.mark.parametrize("command", ["tabular", "plot"])
def test_sigterm_stops_tabular_and_plot_with_exit_143(tmp_path, monkeypatch, capsys, command):
    """Commands without a run of their own stop on SIGTERM where they are, as on Ctrl-C."""
    import dqnkit.plots
    import dqnkit.tabular.experiments

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises long before
        raise AssertionError("SIGTERM did not stop the command")

    if command == "tabular":
        monkeypatch.setitem(dqnkit.tabular.experiments.EXPERIMENTS, "random-walk", killed)
        args = ["tabular", "random-walk", "--out", str(tmp_path / "tab")]
    else:
        train(_cfg(total_steps=200, eval_every=0, final_eval=False), tmp_path / "run")
        monkeypatch.setattr(dqnkit.plots, "versus", killed)
        args = ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "compare.png")]
    started = time.perf_counter()
    assert main(args) == 143
    assert time.perf_counter() - started < 4 and "stopped by SIGTERM" in capsys.readouterr().err
