"""The CLI as a user meets it: exit codes, one-line errors, and (where the process matters)
real subprocesses of ``python -m dqnkit``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dqnkit.cli import main

TINY = [
    "--steps",
    "600",
    "--set",
    "learning_starts=100",
    "--set",
    "eval_every=300",
    "--set",
    "eval_episodes=2",
    "--set",
    "hidden_sizes=16",
    "--set",
    "stop_at_return=none",
    "--quiet",
]


def dqnkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "dqnkit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_refused(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_eval_resume_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    result = dqnkit("train", "--preset", "cartpole", "--seed", "2", "--run-dir", str(run), *TINY)
    assert result.returncode == 0, result.stderr
    # a person reads the result, where the run is and what to run next; JSON is behind --json
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("600 steps in") and "evaluation return" in lines[0]
    assert f"run directory: {run}" in lines[1] and f"dqnkit eval {run}" in lines[2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 600 and summary["seed"] == 2
    assert json.loads((run / "config.json").read_text())["seed"] == 2

    result = dqnkit("eval", str(run), "--episodes", "3", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["episodes"] == 3 and len(out["returns"]) == 3 and out["epsilon"] == 0.0  # the run's eval_epsilon
    assert out["return_mean"] == pytest.approx(sum(out["returns"]) / 3)
    # --epsilon plays with another rate: at 1 every action is random, CartPole's ~20 steps (in-process:
    # the subprocesses above are the ones whose process matters)
    assert main(["eval", str(run), "--episodes", "3", "--epsilon", "1", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == 1.0 and max(out["returns"]) < 100

    result = dqnkit("train", "--resume", str(run), "--steps", "900", "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((run / "summary.json").read_text())
    assert json.loads(result.stdout)["steps"] == 900

    # a complete run has nothing to resume: refused before it warns, evaluates or writes anything
    written = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    for args, fragment in (
        ([], "is complete at step 900: nothing to resume"),
        (["--steps", "900"], "not above"),
        (["--steps", "1200", "--set", "lr=0.1"], "lr changes what the run learns"),
    ):
        code = main(["train", "--resume", str(run), *args])
        assert_refused(subprocess.CompletedProcess([], code, "", capsys.readouterr().err), fragment)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == written


def test_presets_listing_and_detail(capsys):
    assert main(["presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"cartpole", "cartpole-zoo", "cartpole-lesson"} <= set(names)
    assert main(["presets", "cartpole-zoo"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["train_freq"] == 256 and detail["gradient_steps"] == 128


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--env", "NoSuchEnv-v0"], "unknown environment"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["train", "--set", "colour=red"], "unknown config key"),
        (["train", "--set", "gamma=high"], "gamma"),
        (["train", "--set", "gamma=1.5"], "gamma"),
        (["train", "--steps", "-10"], "total_steps"),
        (["train", "--steps", "1.5e2x"], "--steps: expected a whole number (1000000, 1_000_000 or 1e6)"),
        (["train", "--set", "batch_size=999", "--set", "buffer_size=10"], "batch_size"),
        (["train", "--steps", "500"], "nothing would be learned"),
        (["train", "--env", "Pendulum-v1"], "Discrete actions"),
        (["train", "--env", "dqnkit-test/Said-v0"], "has a Text observation space; dqnkit needs an array"),
        (["train", "--env", "no_such_module:Env-v0"], "cannot import 'no_such_module', the module that registers it"),
        (["eval", "no/such/run"], "does not exist"),
        (["eval", "no/such/run", "--epsilon", "1.5"], "--epsilon: 1.5 must be <= 1.0"),
        (["eval", "no/such/run", "--seed", "-1"], "--seed: -1 must be >= 0"),
        (["train", "--resume", "no/such/run"], "does not exist"),
        (["train", "--resume", "run", "--config", "c.json", "--set", "lr=1"], "own config; drop --config"),
        (["train", "--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # in-process (a subprocess per case would cost seconds of imports)
    code = main([*args, "--json"])  # not --quiet: what is printed before the refusal counts too
    assert_refused(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), fragment)
    assert not (tmp_path / "runs").exists(), "nothing may be written for refused input"


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--steps", "2000", "--run-dir", "afile/run"],
        ["train", "--steps", "2000", "--run-dir", "afile"],
        ["apex", "--steps", "2000", "--run-dir", "afile/run"],
        ["eval", "afile"],
        ["plot", "runs", "--out", "afile/curves.png"],
        ["bench", "replay", "--out", "afile/replay.json"],
        ["tabular", "random-walk", "--out", "afile/walk"],
        ["experiment", "target-ablation", "--out", "afile/exp/deeper"],
    ],
)
def test_a_file_where_a_directory_is_needed_is_one_line_exit_2(args, tmp_path, monkeypatch, capsys):
    """Each was a NotADirectoryError or FileExistsError traceback (Ape-X's after starting Ray)."""
    import dqnkit.tabular.experiments as tabular

    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("mine")
    for work in ("n_step_td", "td_control"):  # refused before the work, not after it (5 s of random walk)
        monkeypatch.setattr(tabular, work, lambda *a, **k: pytest.fail("worked before refusing its --out"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile is a file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and Path("afile").read_text() == "mine"


@pytest.mark.slow
def test_a_refusal_from_the_installed_command_is_one_line_exit_2(tmp_path):
    assert_refused(dqnkit("train", "--env", "NoSuchEnv-v0", "--quiet", cwd=tmp_path), "unknown environment")
    assert not (tmp_path / "runs").exists()


CORRIDOR = """
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    observation_space = gym.spaces.Box(0, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return np.eye(4, dtype=np.float32)[self.pos], {}

    def step(self, action):
        self.pos = min(3, max(0, self.pos + 2 * int(action) - 1))
        return np.eye(4, dtype=np.float32)[self.pos], float(self.pos == 3), self.pos == 3, False, {}


gym.register("Corridor-v0", entry_point=Corridor, max_episode_steps=20)
"""


def test_a_users_own_env_trains_and_evaluates_by_module_and_id(tmp_path, monkeypatch, capsys):
    """gymnasium's ``module:Env-v0`` ids: importing the module registers the env, for the
    run and again for whoever evaluates it (the id is what config.json keeps)."""
    (tmp_path / "dqnkit_test_corridor.py").write_text(CORRIDOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert main(["train", "--env", "dqnkit_test_corridor:Corridor-v0", "--run-dir", str(run), *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["env_id"] == "dqnkit_test_corridor:Corridor-v0"
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2


def test_output_into_a_closed_pipe_ends_without_a_traceback():
    """``dqnkit train ... | head -1``: the reader leaves before the last lines. It was a
    BrokenPipeError traceback after the run; now the exit status a shell gives such a writer."""
    proc = subprocess.Popen([sys.executable, "-m", "dqnkit", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the listing is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""
    # another pipe broken (an env worker's) is a failure to show, not a closed stdout to hide
    code = "import dqnkit.cli as c\ndef main():\n    raise BrokenPipeError('a worker pipe')\nc.main = main\nc.entry()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "BrokenPipeError: a worker pipe" in proc.stderr


@pytest.mark.slow
def test_a_runs_config_json_is_the_base_of_another_run(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--preset", "cartpole-rainbow", "--run-dir", str(first), *TINY, "--set", "lr=0.002"]) == 0
    args = ["train", "--config", str(first / "config.json"), "--seed", "4", "--run-dir", str(second), "--quiet"]
    assert main(args) == 0
    before, after = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert {k for k in before if before[k] != after[k]} == {"seed"} and after["seed"] == 4
    # a partial file goes over the preset (its own, or --env's family's), and --set over the file
    (tmp_path / "part.json").write_text(json.dumps({"lr": 0.003, "hidden_sizes": [8]}))
    third = tmp_path / "third"
    assert main(["train", "--config", str(tmp_path / "part.json"), "--run-dir", str(third), *TINY]) == 0
    config = json.loads((third / "config.json").read_text())
    assert config["preset"] == "cartpole" and config["lr"] == 0.003 and config["hidden_sizes"] == [16]


@pytest.mark.parametrize("command", ["train", "apex"])
def test_print_config_prints_the_config_a_command_line_gives_and_writes_nothing(command, tmp_path, capsys):
    run_dir = ["--run-dir", str(tmp_path / "run")]
    args = [command, "--env", "MinAtar/Breakout", "--set", "lr=0.0002", "--steps", "50000", "--print-config"]
    assert main([*args, *run_dir]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["preset"] == "minatar" and printed["lr"] == 0.0002 and printed["total_steps"] == 50000
    assert main([command, "--steps", "5e4", "--env", "MinAtar/Breakout", "--set", "lr=2e-4", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == printed  # --steps reads 5e4 as --set does
    (tmp_path / "mine.json").write_text(json.dumps(printed))  # and it is a --config file that gives it back
    assert main([command, "--config", str(tmp_path / "mine.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json"]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[1]", "expected a JSON object of config keys, got a list"),
        ('{"lr": ', "not JSON"),
        ('{"lr": "fast"}', "lr: cannot use 'fast' (expected a number)"),
        ('{"steps": 9000, "dqnkit_version": "0"}', "unknown config key 'dqnkit_version'; is it a run's config.json?"),
        (None, "No such file or directory"),
    ],
)
def test_a_config_file_that_is_not_a_config_is_one_line_exit_2(tmp_path, monkeypatch, capsys, content, fragment):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    code, err = main(["train", "--config", "config.json"]), capsys.readouterr().err
    assert_refused(subprocess.CompletedProcess([], code, "", err), f"--config config.json: {fragment}")
    assert not (tmp_path / "runs").exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code = main(["train", "--run-dir", str(run), *TINY])
    assert_refused(subprocess.CompletedProcess([], code, "", capsys.readouterr().err), "not empty")
    assert (run / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_minimal_example_runs():
    example = Path(__file__).parent.parent / "examples" / "dqn_minimal.py"
    result = subprocess.run([sys.executable, str(example), "2500"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "step   2500" in result.stdout


def test_a_run_without_evaluation_says_so_at_the_end(tmp_path, capsys):
    args = ["train", "--steps", "300", "--run-dir", str(tmp_path / "run"), "--quiet", "--set", "learning_starts=100",
            "--set", "eval_every=0", "--set", "final_eval=false", "--set", "hidden_sizes=16"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("300 steps in") and "not evaluated" in first and "nan" not in first
    # and its JSON is strict JSON (null, not NaN: jq and JavaScript refuse NaN)
    assert main([*args, "--overwrite", "--json"]) == 0
    for text in (capsys.readouterr().out, (tmp_path / "run" / "summary.json").read_text()):
        assert json.loads(text, parse_constant=_refuse)["eval_return_mean"] is None


def _refuse(name):
    raise AssertionError(f"{name} is not JSON")


def test_json_outputs_are_strict_json_where_a_value_is_not_finite(tmp_path, capsys):
    """A greedy policy that never reaches the goal has return -inf: null in results.json."""
    out = tmp_path / "cliff"
    args = ["tabular", "cliff-walking", "--episodes", "1", "--seeds", "1", "--out", str(out), "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=_refuse)
    assert printed == json.loads((out / "results.json").read_text(), parse_constant=_refuse)
    assert None in [method["greedy_return"] for method in printed["methods"].values()]


def test_presets_and_a_refused_command_line_answer_without_importing_torch():
    """torch takes about 1 s to import: ``presets``, ``--help`` and a refused command line do
    without it (1.6 s each before, 0.15 s here), as does ``import dqnkit`` until ``train``,
    ``load`` or ``resume`` is first used."""
    script = (
        "import contextlib, io, sys\n"
        "import dqnkit\n"
        "from dqnkit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    codes = [main(['presets']), main(['train', '--set', 'lr=abc']), main(['bench', 'speed', '--envs', '2'])]\n"
        "    codes.append(main(['train', '--resume', 'runs/x', '--seed', '1']))\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exit:\n"
        "        codes.append(exit.code)\n"
        "print(codes, 'torch' in sys.modules, dqnkit.Config.__name__)\n"
        "print(dqnkit.train.__module__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[0, 2, 2, 2, 0] False Config", "dqnkit.training True"]


@pytest.mark.slow
def test_a_dqnkit_warning_reads_as_one_line_like_its_errors(tmp_path):
    """The command line prints dqnkit's own warnings as ``warning: ...``, without the source
    line that raised them (``restore(parts, ckpt)  # ...`` meant nothing to a user)."""
    from dqnkit import presets, train

    settings = dict(total_steps=400, learning_starts=100, num_envs=2, vector_env="async", eval_every=0)
    train(presets.get("cartpole", **settings, final_eval=False, stop_at_return=None), tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-m", "dqnkit", "train", "--resume", str(tmp_path / "run"), "--steps", "500", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    about = [line for line in result.stderr.splitlines() if "fresh episodes" in line or "restore(" in line]
    assert about == [
        "warning: CartPole-v1 cannot save its episode in progress: resuming with fresh episodes, so this "
        "run will not be bit-identical to an uninterrupted one"
    ]


@pytest.mark.slow
def test_the_progress_bar_on_a_terminal_says_when_it_evaluates(tmp_path):
    """The bar stood still, without a word, while an evaluation played (ten Atari games take minutes)."""
    import fcntl
    import pty
    import struct
    import termios

    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    args = ["train", "--steps", "3000", "--set", "eval_every=1500", "--set", "eval_episodes=7"]
    proc = subprocess.Popen([sys.executable, "-m", "dqnkit", *args, "--run-dir", str(tmp_path / "run")],
                            stdout=terminal, stderr=terminal)  # fmt: skip
    os.close(terminal)
    shown = b""
    while chunk := _read(main_fd):
        shown += chunk
    assert proc.wait(timeout=120) == 0
    text = shown.decode(errors="replace")
    assert "evaluating 7 episodes: " in text and "step/s" in text


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # the terminal's other end closed: the process ended
        return b""
