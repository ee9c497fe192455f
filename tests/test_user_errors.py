"""What a newcomer is told when an id, a path or a keystroke is not what dqnkit expects: one
line that points the right way, in the caller's own terms (flags on the command line,
arguments in Python)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dqnkit import presets, resume, train
from dqnkit.cli import main
from dqnkit.errors import ConfigError, DqnkitError
from dqnkit.experiments import summary_markdown
from dqnkit.tabular.experiments import summary_text


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize(
    "env_id, hint",
    [
        ("Cartpole-v1", "did you mean CartPole-v1?"),
        ("CartPol-v1", "did you mean CartPole-v1 or CartPole-v0?"),
        ("ALE/pong-v5", "did you mean ALE/Pong-v5?"),
        ("MinAtar/breakout", "did you mean MinAtar/Breakout?"),
        ("LunarLander-v2", "LunarLander-v2 is an old version; use LunarLander-v3"),
        ("ALE/Pong-v4", "ALE/Pong-v4 is an old version; use ALE/Pong-v5"),
    ],
)
def test_a_mistyped_or_old_id_names_the_one_meant(capfd, env_id, hint):
    if env_id.startswith("ALE/"):
        pytest.importorskip("ale_py")
    if env_id.startswith("MinAtar/"):
        pytest.importorskip("minatar")
    assert main(["train", "--env", env_id, "--steps", "100000"]) == 2
    err = capfd.readouterr().err
    assert hint in err and err.count("\n") == 1, err  # no gymnasium warning above it


def test_an_old_gym_atari_id_names_the_ale_id_and_its_setting(capsys):
    pytest.importorskip("ale_py")
    err = _error(capsys, "train", "--env", "PongNoFrameskip-v4")
    assert "dqnkit trains ALE/Pong-v5" in err and "--set repeat_action_probability=0" in err


@pytest.mark.slow
def test_an_old_version_prints_no_raw_deprecation_warning():
    """gymnasium's warning came with terminal colour codes and a source line, above dqnkit's error."""
    done = subprocess.run(
        [sys.executable, "-m", "dqnkit.cli", "train", "--env", "Taxi-v3"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr == "error: Taxi-v3 is an old version; use Taxi-v4\n"


def test_python_callers_are_told_python_terms_and_the_cli_its_flags(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    cfg = presets.get("cartpole", total_steps=200, learning_starts=50, eval_every=0, final_eval=False)
    with pytest.raises(DqnkitError) as refused:
        train(cfg, run)
    assert "`overwrite=True`" in str(refused.value) and "--" not in str(refused.value)
    err = _error(capsys, "train", "--run-dir", str(run))
    assert "choose another --run-dir or replace it with --overwrite" in err
    with pytest.raises(ConfigError, match="raise `total_steps`"):
        presets.get("cartpole", total_steps=100)
    train(cfg, tmp_path / "done")
    with pytest.raises(ConfigError, match="`total_steps` 100 is not above the 200 steps"):
        resume(tmp_path / "done", total_steps=100)
    assert "--steps 100 is not above" in _error(capsys, "train", "--resume", str(tmp_path / "done"), "--steps", "100")


def test_eval_of_a_directory_of_runs_names_the_runs(tmp_path, capsys):
    cfg = presets.get("cartpole", total_steps=200, learning_starts=50, eval_every=0, final_eval=False)
    train(cfg, tmp_path / "runs" / "a")
    err = _error(capsys, "eval", str(tmp_path / "runs"))
    assert "is not a dqnkit run directory" in err and f"the runs in it: {tmp_path / 'runs' / 'a'}" in err


def test_ctrl_c_before_the_run_starts_says_so(monkeypatch, capsys):
    import dqnkit.training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dqnkit.training, "check_env_id", interrupted)
    assert main(["train", "--steps", "5000"]) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"  # it was an empty line


def test_the_two_returns_of_an_experiment_are_named_apart():
    result = {
        "experiment": "x",
        "description": "d",
        "preset": "cartpole",
        "steps": 1000,
        "seeds": 2,
        "variants": {
            "a": {"final_return_iqm": 26.7, "final_return_ci95": [25.0, 28.5], "final_return_per_seed": [25, 28.5]}
        },
    }
    table = summary_markdown(result)
    assert "| variant | training return, last 100 episodes: IQM [95% CI] |" in table
    assert "| a | 26.70 [25.00, 28.50] |" in table
    methods = {"sarsa": {"online_return_last100": -20.0, "online_return_last100_std": 1.0, "greedy_path_steps": 17}}
    cliff = dict(experiment="cliff-walking", episodes=50, alpha=0.5, epsilon=0.1, seeds=2, methods=methods)
    assert "online return, last 50 episodes" in summary_text(cliff)
