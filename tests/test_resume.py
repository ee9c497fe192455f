"""Exact resume after a kill or Ctrl-C, and what a resumed run keeps and drops."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dqnkit import Config, load, presets, resume, train
from dqnkit.checkpoint import load_checkpoint
from dqnkit.errors import NonFiniteError
from dqnkit.logger import read_metrics

SETTINGS = dict(
    total_steps=4000,
    learning_starts=200,
    batch_size=32,
    buffer_size=4000,
    hidden_sizes=(32,),
    eval_every=1000,
    eval_episodes=2,
    exploration_steps=1000,
    checkpoint_every=500,
    stop_at_return=None,
    train_freq=1,
    gradient_steps=1,
    target_update_interval=100,
)


def _q(run: Path) -> np.ndarray:
    probe = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    return load(run).q_values(probe)


def _start(run: Path, settings: dict = SETTINGS, preset: str = "cartpole") -> subprocess.Popen:
    sets = [
        arg
        for k, v in settings.items()
        if k != "total_steps"
        for arg in ("--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}")
    ]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dqnkit.cli",
            "train",
            "--preset",
            preset,
            "--quiet",
            "--steps",
            str(SETTINGS["total_steps"]),
            "--run-dir",
            str(run),
            *sets,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt")]
        if steps and max(steps) >= at_least:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    train(presets.get("cartpole", **SETTINGS), run)
    return run


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, reference):
    run = tmp_path / "run"
    proc = _start(run)
    _wait_for_checkpoint(run, proc, 1500)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt"))
    assert killed_at < SETTINGS["total_steps"], "the run finished before it was killed"

    # TensorBoard orders event files by name (creation second, host, pid): a writer created in
    # the killed one's second could sort before it. Only a run killed within a second does that.
    started = int(next((run / "tb").glob("events.out.tfevents.*")).name.split(".")[3])
    time.sleep(max(0.0, started + 1 - time.time()))
    summary = resume(run)
    assert summary["steps"] == SETTINGS["total_steps"]
    assert np.array_equal(_q(run), _q(reference))
    # rows the killed process logged past its checkpoint were dropped, then logged again once
    ours, theirs = read_metrics(run / "metrics.csv"), read_metrics(reference / "metrics.csv")
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in ours]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in theirs]
    # and TensorBoard shows each step once: the resumed writer purges the killed one's later events
    assert _tb_points(run, "episode/return") == _tb_points(reference, "episode/return")
    assert _tb_points(run, "eval/return") == _tb_points(reference, "eval/return")


def _tb_points(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_a_metrics_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    """A kill while the logger's buffer was being written leaves a last row without its line
    end. Cut in its first field it stopped the resume (int(None)); cut here, in its second,
    it was read as an episode at step 10 and kept."""
    run = tmp_path / "run"
    settings = {**SETTINGS, "total_steps": 1000, "eval_every": 500}
    train(presets.get("cartpole", **settings), run)
    whole = read_metrics(run / "metrics.csv")
    with open(run / "metrics.csv", "a") as f:
        f.write("episode,10")
    assert read_metrics(run / "metrics.csv") == whole  # plot and the monitor read whole rows only
    assert resume(run, total_steps=1500)["steps"] == 1500
    text = (run / "metrics.csv").read_text()
    assert "episode,10\n" not in text and text.endswith("\n")
    assert [r for r in read_metrics(run / "metrics.csv") if int(r["step"]) <= 1000] == whole


@pytest.mark.slow
def test_sigkill_with_a_1m_replay_then_resume_is_bit_identical(tmp_path):
    """The default incremental checkpoints at 1M capacity: each checkpoint writes only its new
    rows into chunks (a million-row ring, far from full here), and a kill between them loses nothing."""
    settings = {**SETTINGS, "buffer_size": 1_000_000}
    train(presets.get("cartpole", **settings), tmp_path / "reference")
    run = tmp_path / "run"
    proc = _start(run, settings)
    _wait_for_checkpoint(run, proc, 2000)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert resume(run)["steps"] == SETTINGS["total_steps"]
    assert np.array_equal(_q(run), _q(tmp_path / "reference"))
    chunks = sorted((run / "checkpoints" / "replay").glob("chunk_*.pt"))
    assert chunks and all(p.stat().st_size < 200_000 for p in chunks)  # 500 new rows each, not a 1M ring


@pytest.mark.slow
def test_sigkill_with_prioritized_n_step_replay_then_resume_is_bit_identical(tmp_path):
    """PER's sum tree and the n-step folder travel in the checkpoint's small state, the rows in chunks."""
    settings = {**SETTINGS, "per_beta_steps": SETTINGS["total_steps"]}  # beta independent of --steps
    train(presets.get("cartpole-rainbow", **settings), tmp_path / "reference")
    run = tmp_path / "run"
    proc = _start(run, settings, preset="cartpole-rainbow")
    _wait_for_checkpoint(run, proc, 2000)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert resume(run)["steps"] == SETTINGS["total_steps"]
    assert np.array_equal(_q(run), _q(tmp_path / "reference"))


@pytest.mark.parametrize(
    "signum, said",
    [  # a subprocess each (slow); the fast suite stops runs in-process (test_stopping, the second Ctrl-C below)
        pytest.param(signal.SIGINT, "interrupted at step", marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, "by SIGTERM", marks=pytest.mark.slow),
    ],
)
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, reference, signum, said):
    """SIGTERM (`kill`, a scheduler's preemption, `docker stop`) ended the run at once, losing
    the steps since its last checkpoint; now it saves like Ctrl-C, and exits 128 + 15."""
    run = tmp_path / "run"
    proc = _start(run)
    _wait_for_checkpoint(run, proc, 1000)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert said in err and "--resume" in err and "Traceback" not in err
    resume(run)
    assert np.array_equal(_q(run), _q(reference))


def test_a_second_ctrl_c_stops_at_once_keeping_the_last_checkpoint(tmp_path, monkeypatch, capfd):
    import dqnkit.training

    real = dqnkit.training.check_transition

    def ctrl_c_twice(rewards, next_obs, step):
        if step == 1300:
            os.kill(os.getpid(), signal.SIGINT)  # the first asks for a checkpoint at the end of the step
            os.kill(os.getpid(), signal.SIGINT)  # the second will not wait for it
        real(rewards, next_obs, step)

    monkeypatch.setattr(dqnkit.training, "check_transition", ctrl_c_twice)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="stopped at once: the run keeps its last complete checkpoint"):
        train(presets.get("cartpole", **SETTINGS), run)
    assert "Ctrl-C again: at once" in capfd.readouterr().err
    assert load_checkpoint(run)["loop"]["step"] == 1000  # the periodic one, none at 1300
    monkeypatch.undo()
    assert resume(run, total_steps=1500)["steps"] == 1500


def test_non_finite_reward_stops_with_a_named_error(tmp_path):
    cfg = Config(
        env_id="dqnkit-test/NaNReward-v0",
        total_steps=200,
        learning_starts=10,
        batch_size=4,
        hidden_sizes=(4,),
        eval_every=0,
        eval_episodes=1,
    )
    with pytest.raises(NonFiniteError, match=r"non-finite reward .* at step 29"):
        train(cfg, tmp_path / "run")


def test_non_finite_evaluation_return_stops_with_a_named_error(tmp_path, monkeypatch):
    import dqnkit.monitor

    real = dqnkit.monitor.evaluate

    def nan_returns(*args, **kwargs):
        result = real(*args, **kwargs)
        return result._replace(returns=np.full_like(result.returns, np.nan))

    monkeypatch.setattr(dqnkit.monitor, "evaluate", nan_returns)
    cfg = presets.get("cartpole", **{**SETTINGS, "total_steps": 1000, "eval_every": 500})
    with pytest.raises(NonFiniteError, match="non-finite evaluation return at step 500"):
        train(cfg, tmp_path / "run")
    assert not [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["kind"] == "eval"]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    # updates start after the first checkpoint (step 500) and diverge at once (lr 1e30)
    cfg = presets.get("cartpole", **{**SETTINGS, "total_steps": 1500, "learning_starts": 600, "lr": 1e30})
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        train(cfg, tmp_path / "run")
    kept = load_checkpoint(tmp_path / "run")
    assert kept["loop"]["step"] == 500
    assert np.isfinite(_q(tmp_path / "run")).all()  # the kept agent is the sound one


@pytest.mark.slow
def test_a_full_disk_stops_the_cli_in_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    """ENOSPC from a checkpoint: exit 1 and one line that says what to do (it was a traceback)."""
    from dqnkit.cli import main

    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "step_0000001000.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    run = tmp_path / "run"
    monkeypatch.setattr(os, "replace", replace)
    settings = [arg for k, v in {**SETTINGS, "hidden_sizes": 32}.items() for arg in ("--set", f"{k}={v}")]
    assert main(["train", "--run-dir", str(run), "--steps", "1500", "--quiet", *settings]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No space left on device (") and "step_0000001000.pt" in err[0]
    assert "the run keeps its last complete checkpoint: `dqnkit train --resume RUN_DIR` continues it" in err[0]
    monkeypatch.undo()
    assert load_checkpoint(run)["loop"]["step"] == 500
    assert resume(run, total_steps=1500)["steps"] == 1500


@pytest.mark.parametrize("failing", ["step_0000001000.pt.tmp", pytest.param("latest.pt.tmp", marks=pytest.mark.slow)])
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, failing):
    """A crash between writing the new checkpoint and publishing it (the numbered file's
    rename, or `latest`'s) must leave the previous `latest` whole, and the run resumable."""
    real_replace = os.replace

    def replace(src, dst):
        src = Path(src)
        at_1000 = any((src.parent / name).exists() for name in ("step_0000001000.pt", "step_0000001000.pt.tmp"))
        if src.name == failing and at_1000 and not_yet:
            not_yet.clear()
            raise OSError("disk full (injected)")
        real_replace(src, dst)

    not_yet = [True]
    run = tmp_path / "run"
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        train(presets.get("cartpole", **{**SETTINGS, "total_steps": 1500}), run)
    monkeypatch.undo()
    assert load_checkpoint(run)["loop"]["step"] == 500
    assert resume(run)["steps"] == 1500
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [
        "latest.pt",
        "step_0000000500.pt",
        "step_0000001000.pt",
        "step_0000001500.pt",
    ]
