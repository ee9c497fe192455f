import json
import os
import re
import signal
import warnings

import numpy as np
import pytest
import torch

from dqnkit import Config, load, presets, resume, train
from dqnkit.algorithms import crossed, epsilon
from dqnkit.build import build, load_replay
from dqnkit.errors import CheckpointError, ConfigError, DqnkitError
from dqnkit.logger import read_metrics
from dqnkit.training import train_in_memory

TINY = dict(
    total_steps=600,
    learning_starts=100,
    batch_size=16,
    buffer_size=1000,
    hidden_sizes=(16,),
    eval_every=300,
    eval_episodes=2,
    train_freq=2,
    gradient_steps=1,
    target_update_interval=50,
    exploration_steps=300,
)


def _cfg(**overrides) -> Config:
    return presets.get("cartpole", **{**TINY, "stop_at_return": None, **overrides})


def _q(agent) -> np.ndarray:
    probe = np.random.default_rng(0).standard_normal((32, *agent.obs_shape)).astype(np.float32)
    return agent.q_values(probe)


# ------------------------------------------------------- termination vs truncation
def _stored(run) -> set[tuple[float, float, float]]:
    """(obs, next_obs, terminated) of every transition in the run's final replay (its checkpoint)."""
    replay = load_replay(run)
    rows = zip(*(getattr(replay, name)[: len(replay)] for name in ("obs", "next_obs", "terminated")))
    return {(float(o[0]), float(n[0]), float(t)) for o, n, t in rows}


@pytest.mark.parametrize("num_envs", [1, 3])
def test_truncation_stores_the_true_last_obs_and_bootstraps(tmp_path, num_envs):
    cfg = Config(
        env_id="dqnkit-test/Walk-v0",
        total_steps=60,
        learning_starts=20,
        batch_size=4,
        hidden_sizes=(4,),
        eval_every=0,
        eval_episodes=1,
        num_envs=num_envs,
    )
    train(cfg, tmp_path / "run")
    capture_replay = _stored(tmp_path / "run")
    # Walk is cut by its time limit at t=6: the last transition 5 -> 6 is *truncated*:
    # stored with the real final obs 6 (not the reset obs 0) and terminated = 0.
    assert (5.0, 6.0, 0.0) in capture_replay
    assert all(nxt == obs + 1 for obs, nxt, _ in capture_replay), "a reset obs leaked into a transition"
    assert all(term == 0.0 for *_, term in capture_replay)


def test_termination_is_stored_as_terminal(tmp_path):
    cfg = Config(
        env_id="dqnkit-test/WalkGoal-v0",
        total_steps=60,
        learning_starts=20,
        batch_size=4,
        hidden_sizes=(4,),
        eval_every=0,
        eval_episodes=1,
        num_envs=2,
    )
    train(cfg, tmp_path / "run")
    assert _stored(tmp_path / "run") == {(0.0, 1.0, 0.0), (1.0, 2.0, 0.0), (2.0, 3.0, 0.0), (3.0, 4.0, 1.0)}


# --------------------------------------------------------------- run directory
def test_run_directory_contract(tmp_path):
    run = tmp_path / "run"
    summary = train(_cfg(), run)
    for name in ("config.json", "metrics.csv", "summary.json", "learning_curve.png", "checkpoints/latest.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary
    for key in (
        "env_id",
        "preset",
        "seed",
        "steps",
        "episodes",
        "eval_return_mean",
        "eval_return_std",
        "wall_s",
        "sps",
        "dqnkit_version",
    ):
        assert key in summary
    assert summary["steps"] == 600 and summary["env_id"] == "CartPole-v1" and summary["run_dir"] == str(run)
    assert Config(**{**json.loads((run / "config.json").read_text()), "hidden_sizes": (16,)}) == _cfg()
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("kind,step,episode,return")
    kinds = [line.split(",")[0] for line in lines[1:]]
    assert kinds.count("eval") == 2 and kinds.count("episode") == summary["episodes"]
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_mirrors_the_metrics_and_adds_steps_per_second(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dqnkit.monitor import RunMonitor

    monkeypatch.setattr(RunMonitor, "RATE_EVERY_S", 0.0)  # a point at every episode's end
    run = tmp_path / "run"
    summary = train(_cfg(), run)
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    rows = read_metrics(run / "metrics.csv")
    episodes = [(int(r["step"]), float(r["return"])) for r in rows if r["kind"] == "episode"]
    assert [(e.step, e.value) for e in scalars["episode/return"]] == episodes
    assert [e.step for e in scalars["eval/return"]] == [300, 600]
    assert {"episode/epsilon", "episode/loss", "episode/q_mean", "eval/return_std"} <= set(scalars)
    rates = scalars["perf/steps_per_s"]
    assert len(rates) == summary["episodes"] and all(e.value > 0 for e in rates)
    # the config as a table in TensorBoard's text tab
    (config,) = events.Tensors("config/text_summary")
    assert "| lr | `0.001` |" in config.tensor_proto.string_val[0].decode()


def test_on_eval_hears_every_evaluation_and_may_stop_the_run(tmp_path):
    heard = []
    train(_cfg(), tmp_path / "all", on_eval=lambda step, mean: heard.append((step, mean)))
    rows = read_metrics(tmp_path / "all" / "metrics.csv")
    assert heard == [(int(r["step"]), float(r["return"])) for r in rows if r["kind"] == "eval"]
    assert [step for step, _ in heard] == [300, 600]

    class Stop(Exception):
        pass

    def stop(step, mean):
        raise Stop(step)

    with pytest.raises(Stop):
        train(_cfg(), tmp_path / "stopped", on_eval=stop)
    rows = read_metrics(tmp_path / "stopped" / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["kind"] == "eval"] == [300]  # logged before the hook stopped it
    assert not (tmp_path / "stopped" / "summary.json").exists()


def test_non_empty_run_dir_is_refused_and_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    # from Python, what Python passes (the command line says --run-dir and --overwrite: test_apex)
    with pytest.raises(DqnkitError, match="not empty; choose another `run_dir` or replace it with `overwrite=True`"):
        train(_cfg(), run)  # no checkpoints: resume would not work, so it is not suggested
    assert (run / "precious.txt").read_text() == "keep me"
    train(_cfg(), run, overwrite=True)
    assert not (run / "precious.txt").exists()
    with pytest.raises(DqnkitError, match=re.escape(f"not empty; continue it with `resume({run})`")):
        train(_cfg(), run)


@pytest.mark.slow
def test_a_run_another_process_trains_into_is_refused_and_kept(tmp_path, capsys):
    """A job started twice: a second resume, or an --overwrite, while the first still trains
    into the run directory. (The lock is per open file, so holding it here stands for the
    other process.)"""
    from dqnkit.cli import main
    from dqnkit.files import RunLock

    run = tmp_path / "run"
    train(_cfg(), run)

    def files():  # but the lock, which the stand-in for the other process writes its pid into
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".lock"}

    written = files()
    with RunLock(run):
        assert main(["train", "--resume", str(run), "--steps", "900", "--quiet"]) == 2
        assert f"in use by another dqnkit process (pid {os.getpid()})" in capsys.readouterr().err
        with pytest.raises(DqnkitError, match="in use by another dqnkit process"):
            train(_cfg(), run, overwrite=True)
    assert files() == written  # nothing moved or rewritten
    assert resume(run, total_steps=900)["steps"] == 900  # released: the run goes on


def test_a_replay_this_machine_cannot_allocate_is_refused_and_leaves_no_run(tmp_path, monkeypatch):
    from dqnkit.vector import LeanSyncVectorEnv

    closed, close = [], LeanSyncVectorEnv.close
    monkeypatch.setattr(LeanSyncVectorEnv, "close", lambda self, **kw: closed.append(self) or close(self, **kw))
    with pytest.raises(ConfigError, match="buffer_size 1,000,000,000,000: Unable to allocate .* lower buffer_size"):
        train(_cfg(buffer_size=10**12), tmp_path / "run")  # 50 TB: numpy's allocation fails at once
    assert not (tmp_path / "run").exists()  # before, a traceback and a run directory to remove by hand
    assert len(closed) == 1  # and the envs built before it are closed


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_a_run_that_stops_on_an_error_closes_its_envs(tmp_path, monkeypatch, stop):
    """An error in the loop, Ctrl-C, or a resume whose checkpoint does not fit: the async
    envs' worker processes are gone after it (they were left running in a process that goes on)."""
    import multiprocessing

    import dqnkit.training

    run, real = tmp_path / "run", dqnkit.training.check_transition

    def failing(rewards, next_obs, step):
        if step >= 300:
            raise stop("injected")
        real(rewards, next_obs, step)

    monkeypatch.setattr(dqnkit.training, "check_transition", failing)
    with pytest.raises(stop, match="injected") as stopped:
        train(_cfg(num_envs=2, vector_env="async", overlap_env_step=True), run)
    # while the error is still held (its traceback keeps the run's frames, and the envs, alive)
    assert stopped.traceback and multiprocessing.active_children() == []
    monkeypatch.undo()

    def refused(parts, ckpt):
        raise CheckpointError("injected")

    train(_cfg(num_envs=2, vector_env="async", total_steps=200), tmp_path / "short")
    monkeypatch.setattr(dqnkit.training, "restore", refused)
    with pytest.raises(CheckpointError, match="injected") as not_fitting:
        resume(tmp_path / "short", total_steps=400)
    assert not_fitting.traceback and multiprocessing.active_children() == []


def test_an_env_that_fails_to_close_after_an_error_does_not_hide_it(tmp_path, monkeypatch):
    """An async worker killed with the run left a pipe that close() broke on: the run ended
    in that BrokenPipeError, which the command line took for its own closed stdout (exit 141)."""
    import dqnkit.training
    from dqnkit.vector import LeanSyncVectorEnv

    def broken(self, **kwargs):
        raise BrokenPipeError("a worker's pipe")

    def failing(rewards, next_obs, step):
        raise RuntimeError("the real error")

    monkeypatch.setattr(LeanSyncVectorEnv, "close", broken)
    monkeypatch.setattr(dqnkit.training, "check_transition", failing)
    with pytest.raises(RuntimeError, match="the real error"):
        train(_cfg(), tmp_path / "run")


def test_a_replay_larger_than_the_available_memory_is_warned_about(tmp_path, monkeypatch):
    import dqnkit.build

    monkeypatch.setattr(dqnkit.build, "available_memory", lambda: 1024)  # 1 KB left
    needs = r"the replay needs \d+\.\d KB once full \(buffer_size 1,000\) and this machine has 1.0 KB available"
    with pytest.warns(UserWarning, match=needs):
        train(_cfg(), tmp_path / "run")  # allocated (its pages come as it fills), so the run starts
    monkeypatch.undo()
    assert dqnkit.build.available_memory() > 0  # this machine's MemAvailable


@pytest.mark.parametrize(
    "env_id, size", [("FrozenLake-v1", 16), pytest.param("Blackjack-v1", 32 + 11 + 2, marks=pytest.mark.slow)]
)
def test_discrete_observations_are_one_hot_vectors_and_resume_exactly(tmp_path, env_id, size):
    """FrozenLake's cell, Blackjack's tuple of counts: refused before ("wrap the env"), which
    a command-line user cannot do; now the float32 one-hot vector SB3 also feeds its network.
    Their episode in progress is saved too (toy-text envs keep it in plain attributes)."""
    whole = train(_cfg(env_id=env_id), tmp_path / "whole")
    replay = load_replay(tmp_path / "whole")
    obs = replay.obs[: len(replay)]
    assert obs.dtype == np.float32 and obs.shape[1:] == (size,)
    assert set(np.unique(obs)) == {0.0, 1.0} and whole["steps"] == 600
    train(_cfg(env_id=env_id, total_steps=300), tmp_path / "split")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot save its episode in progress"
        resumed = resume(tmp_path / "split", total_steps=600)
    assert np.array_equal(_q(load(tmp_path / "whole")), _q(load(tmp_path / "split")))
    assert resumed["episodes"] == whole["episodes"]


def test_an_evaluation_without_a_time_limit_is_cut_and_said(tmp_path, monkeypatch):
    """CliffWalking-v1 has no time limit: a greedy agent walking into a wall played forever."""
    import dqnkit.evaluate

    monkeypatch.setattr(dqnkit.evaluate, "EVAL_STEP_LIMIT", 300)
    agent = build(_cfg(env_id="CliffWalking-v1")).agent  # untrained: it keeps bumping into a wall
    with pytest.warns(UserWarning, match="CliffWalking-v1 has no time limit and 2 evaluation episode"):
        returns = dqnkit.evaluate.evaluate(agent, "CliffWalking-v1", 2, seed=0).returns
    assert len(returns) == 2 and all(returns <= -300)  # every one of its 300 steps cost at least 1


def test_bad_env_is_refused_before_the_run_dir_is_created(tmp_path):
    with pytest.raises(DqnkitError, match="Discrete actions"):
        train(_cfg(env_id="Pendulum-v1"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------- determinism, resume
def test_same_seed_is_bit_identical_and_another_seed_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = train(_cfg(seed=3), tmp_path / "a")
    agent_b, b = train_in_memory(_cfg(seed=3))  # the same loop, written nowhere
    agent_c, c = train_in_memory(_cfg(seed=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # train_in_memory wrote nothing
    assert np.array_equal(_q(load(tmp_path / "a")), _q(agent_b))
    assert {k: a[k] for k in b} == {**b, "wall_s": a["wall_s"], "sps": a["sps"]}  # the same summary, less the files
    assert not np.array_equal(_q(agent_b), _q(agent_c))
    assert c["seed"] == 4


def test_train_in_memory_stopped_by_ctrl_c_says_nothing_is_kept(tmp_path, monkeypatch):
    import dqnkit.training

    real = dqnkit.training.check_transition

    def ctrl_c(rewards, next_obs, step):
        if step == 300:
            os.kill(os.getpid(), signal.SIGINT)  # the monitor turns it into a flag
        real(rewards, next_obs, step)

    monkeypatch.setattr(dqnkit.training, "check_transition", ctrl_c)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 301; nothing is kept"):
        train_in_memory(_cfg())
    assert not list(tmp_path.iterdir())


def test_train_then_resume_equals_one_long_run(tmp_path):
    full = train(_cfg(total_steps=1200, num_envs=2), tmp_path / "full")
    train(_cfg(total_steps=600, num_envs=2), tmp_path / "split")
    resumed = resume(tmp_path / "split", total_steps=1200)
    assert np.array_equal(_q(load(tmp_path / "full")), _q(load(tmp_path / "split")))
    assert resumed["episodes"] == full["episodes"] and resumed["updates"] == full["updates"]


def test_load_and_load_replay_build_no_env(tmp_path, monkeypatch):
    import dqnkit.build

    train(_cfg(), tmp_path / "run")
    from dqnkit.envs import EnvMaker

    monkeypatch.setattr(dqnkit.build, "check_env_id", lambda env_id: pytest.fail("load() built an env"))
    monkeypatch.setattr(EnvMaker, "make", lambda *a, **k: pytest.fail("load() built an env"))
    monkeypatch.setattr(EnvMaker, "make_vec", lambda *a, **k: pytest.fail("load() built envs"))
    agent = load(tmp_path / "run")
    obs = np.zeros((5, 4), np.float32)
    assert agent.q_values(obs).shape == (5, 2)
    assert isinstance(agent.act(obs[0], greedy=True), int)
    replay = load_replay(tmp_path / "run")  # nor does load_replay: the checkpoint records the dtype
    assert replay.obs.dtype == np.float32 and len(replay) == 600


def test_a_loaded_agent_builds_no_optimizer_until_it_learns(tmp_path):
    """``load`` for acting never builds the optimizer: torch.optim's first optimizer imports
    ``torch._dynamo``, 0.8 s of every ``dqnkit eval`` here. Checked in a fresh process, where
    nothing else has imported it; the loaded Adam state still reaches a later learn (resume
    tests check that bit for bit)."""
    import subprocess
    import sys

    train(_cfg(), tmp_path / "run")
    script = (
        "import sys, numpy as np; from dqnkit import load\n"
        f"agent = load({str(tmp_path / 'run')!r})\n"
        "agent.act(np.zeros(4, np.float32), greedy=True); agent.q_values(np.zeros((3, 4), np.float32))\n"
        "print('torch._dynamo' in sys.modules, 'matplotlib' in sys.modules)\n"
        "print(agent.optimizer.state_dict()['state'][0]['step'].item())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    # nor matplotlib (0.3 s), which only a run's end needs for its learning curve
    assert out.split() == ["False", "False", str(float(load(tmp_path / "run").updates))]


# ------------------------------------------------------------------ the schedule
def test_crossed_counts_multiples_in_the_half_open_interval():
    assert crossed(0, 4, 4) == 1 and crossed(3, 4, 4) == 1 and crossed(4, 7, 4) == 0
    assert crossed(0, 12, 4) == 3 and crossed(5, 6, 0) == 0


def test_epsilon_schedules():
    lin = Config(eps_start=1.0, eps_end=0.1, exploration_steps=100)
    assert epsilon(lin, 0, 0) == 1.0 and epsilon(lin, 50, 0) == pytest.approx(0.55) and epsilon(lin, 500, 0) == 0.1
    frac = Config(eps_start=1.0, eps_end=0.0, exploration_fraction=0.5, total_steps=1000, learning_starts=0)
    assert epsilon(frac, 250, 0) == pytest.approx(0.5)
    exp = Config(eps_schedule="exponential", eps_start=1.0, eps_end=0.01, eps_decay=0.5)
    assert epsilon(exp, 10**6, 0) == 1.0 and epsilon(exp, 0, 3) == 0.125 and epsilon(exp, 0, 100) == 0.01


def test_build_is_seeded():
    a, b = build(_cfg(seed=5)), build(_cfg(seed=5))
    for p, q in zip(a.agent.q_net.parameters(), b.agent.q_net.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------- learning
@pytest.mark.slow
def test_cartpole_learns(tmp_path):
    """A short run must clearly beat the random policy (about 22 per episode)."""
    cfg = presets.get("cartpole", total_steps=12_000, eval_every=4000, stop_at_return=None)
    summary = train(cfg, tmp_path / "run")
    assert summary["eval_return_mean"] >= 150, summary


def test_resume_with_more_steps_continues_past_an_early_stop(tmp_path):
    run = tmp_path / "run"
    first = train(_cfg(stop_at_return=0.0), run)  # any evaluation satisfies it
    assert first["stopped_early"] and first["steps"] == 300
    with pytest.raises(ConfigError, match="stopped early .* at step 300: nothing to resume"):
        resume(run)  # no more steps: the run is finished (before, it re-saved and re-warned)
    # with more steps it trains on, until the next evaluation meets the threshold again
    assert resume(run, total_steps=900)["steps"] == 600
    # a run stopped between its last checkpoint and its summary finishes the summary
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    assert resume(run)["steps"] == 600 and json.loads((run / "summary.json").read_text())["steps"] == 600
    assert summary["eval_return_mean"] == json.loads((run / "summary.json").read_text())["eval_return_mean"]


def test_resume_may_change_run_settings_but_not_what_the_run_learns(tmp_path):
    """A run trained on a GPU (its config says device=cuda) goes on on a CPU-only machine with
    --device cpu; a setting such as eval_every may change; lr may not."""
    from dqnkit.checkpoint import CheckpointDir, atomic_save, safe_load

    run = tmp_path / "run"
    train(_cfg(total_steps=300, eval_every=0, checkpoint_every=300), run)
    latest = CheckpointDir(run).latest
    ckpt = safe_load(latest)
    ckpt["config"]["device"] = "cuda"  # as a GPU run saved it
    atomic_save({k: v for k, v in ckpt.items() if k != "format_version"}, latest)
    if not torch.cuda.is_available():
        with pytest.raises(DqnkitError, match="device cuda requested but torch sees no CUDA GPU"):
            resume(run, total_steps=600)
    with pytest.raises(ConfigError, match="lr changes what the run learns"):
        resume(run, total_steps=600, changes={"device": "cpu", "lr": 0.1})
    summary = resume(run, total_steps=600, changes={"device": "cpu", "eval_every": 150})
    assert summary["steps"] == 600 and summary["device"] == "cpu"
    config = json.loads((run / "config.json").read_text())
    assert config["device"] == "cpu" and config["eval_every"] == 150
    evals = [int(r["step"]) for r in read_metrics(run / "metrics.csv") if r["kind"] == "eval"]
    assert evals == [300, 450, 600]  # the final one at 300, then every 150 from there


def test_resume_with_another_stop_at_return_continues_past_an_early_stop(tmp_path):
    run = tmp_path / "run"
    assert train(_cfg(stop_at_return=0.0), run)["stopped_early"]
    summary = resume(run, changes={"stop_at_return": None})
    assert summary["steps"] == 600 and not summary["stopped_early"]


def test_env_without_savable_state_resumes_with_fresh_episodes_and_says_so(tmp_path):
    cfg = Config(
        env_id="dqnkit-test/Opaque-v0",
        total_steps=40,
        learning_starts=10,
        batch_size=4,
        hidden_sizes=(4,),
        eval_every=0,
        eval_episodes=1,
    )
    train(cfg, tmp_path / "run")
    with pytest.warns(UserWarning, match="fresh episodes"):
        summary = resume(tmp_path / "run", total_steps=80)
    assert summary["steps"] == 80 and summary["resumed_with_fresh_episodes"] is True


def test_eval_records_a_video(tmp_path, monkeypatch, capfd):
    from dqnkit.cli import main

    train(_cfg(), tmp_path / "run")
    # on a machine without a display session, SDL (pygame draws CartPole) printed "error:
    # XDG_RUNTIME_DIR is invalid ..." to stderr, though nothing is shown on a screen
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("SDL_VIDEODRIVER", "")  # recorded, so that the test leaves the variable as it was
    monkeypatch.delenv("SDL_VIDEODRIVER")
    capfd.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--episodes", "1", "--video", str(tmp_path / "ep.gif")]) == 0
    assert (tmp_path / "ep.gif").read_bytes()[:3] == b"GIF"
    out, err = capfd.readouterr()
    assert out.startswith("1 episode, epsilon 0: return") and err == ""


def test_eval_video_films_each_evaluation_and_leaves_training_unchanged(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # no display session: nothing printed about it
    monkeypatch.setenv("SDL_VIDEODRIVER", "")
    monkeypatch.delenv("SDL_VIDEODRIVER")
    filmed = train(_cfg(eval_video="gif"), tmp_path / "filmed")
    plain = train(_cfg(), tmp_path / "plain")
    videos = sorted(p.name for p in (tmp_path / "filmed" / "videos").iterdir())
    assert videos == ["step_0000000300.gif", "step_0000000600.gif"]
    assert all((tmp_path / "filmed" / "videos" / v).read_bytes()[:3] == b"GIF" for v in videos)

    def rows(run):  # all but the wall clock
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_metrics(run / "metrics.csv")]

    assert rows(tmp_path / "filmed") == rows(tmp_path / "plain")  # filming draws no training randoms
    assert filmed["eval_return_mean"] == plain["eval_return_mean"]
    assert capfd.readouterr().err == ""


def test_eval_video_without_imageio_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed: its import fails
    with pytest.raises(DqnkitError, match=r"\.mp4 videos need imageio_ffmpeg: pip install 'dqnkit\[video\]'"):
        train(_cfg(eval_video="mp4"), tmp_path / "run")  # mp4 failed at the first evaluation
    monkeypatch.setitem(sys.modules, "imageio", None)
    with pytest.raises(DqnkitError, match=r"\.mp4 videos need imageio: pip install 'dqnkit\[video\]'"):
        train(_cfg(eval_video="mp4"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    train(_cfg(eval_video="gif"), tmp_path / "run")  # a GIF needs Pillow alone, which matplotlib brings
    assert len(list((tmp_path / "run" / "videos").glob("*.gif"))) == 2


def test_resume_is_exact_with_prioritized_replay_and_n_step(tmp_path):
    rainbow = dict(prioritized=True, n_step=3, dueling=True, hidden_sizes=(16, 16), per_beta_steps=1200)
    train(_cfg(total_steps=1200, **rainbow), tmp_path / "full")
    train(_cfg(total_steps=600, **rainbow), tmp_path / "split")
    resume(tmp_path / "split", total_steps=1200)
    assert np.array_equal(_q(load(tmp_path / "full")), _q(load(tmp_path / "split")))


# Seed 0 in CI (each run takes 1-2 minutes here); the README's five with DQNKIT_SOLVE_SEEDS=5.
SOLVE_SEEDS = range(int(os.environ.get("DQNKIT_SOLVE_SEEDS", "1")))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cartpole", "cartpole-rainbow", "cartpole-c51", "cartpole-qr", "pqn-cartpole"])
@pytest.mark.parametrize("seed", SOLVE_SEEDS)
def test_presets_solve_cartpole(tmp_path, preset, seed):
    summary = train(presets.get(preset, seed=seed), tmp_path / "run")
    assert summary["eval_return_mean"] >= 475, summary


@pytest.mark.parametrize("flush", [True, False])
def test_training_flushes_denormals_as_configured_and_gives_the_mode_back(tmp_path, monkeypatch, flush):
    from dqnkit.agent import DQNAgent
    from dqnkit.training import _flushing_denormals

    seen, learn = set(), DQNAgent.learn

    def spy(agent, batch):
        seen.add(_flushing_denormals())
        return learn(agent, batch)

    monkeypatch.setattr(DQNAgent, "learn", spy)
    train(_cfg(flush_denormal=flush), tmp_path / "run")
    assert seen == {flush}
    assert not _flushing_denormals()  # the caller's thread is as it was


def test_a_plot_of_a_run_without_episodes_says_so_without_a_warning(tmp_path):
    import warnings

    from dqnkit.plots import learning_curve

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("kind,step,episode,return,return_std,wall_s\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when legend() finds no labelled lines
        out = learning_curve(metrics, tmp_path / "curve.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_without_a_terminal_progress_is_plain_lines(tmp_path, capsys, monkeypatch):
    """A bar redrawn in place piles up as one endless line in a log file: where stderr is not
    a terminal (pytest's capture is not), progress is a line every LINE_EVERY_S seconds."""
    from dqnkit.monitor import RunMonitor

    monkeypatch.setattr(RunMonitor, "LINE_EVERY_S", 0.0)  # a line every vector step
    train(_cfg(total_steps=400, num_envs=2), tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == "training preset cartpole on CartPole-v1"
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 200 and steps[-1].startswith("step 400/400 (100%)  ")
    assert " steps/s  return " in steps[-1] and "  epsilon " in steps[-1]
    assert steps[-1].endswith(" at step 300") and "  eval " in steps[-1]  # eval_every=300
