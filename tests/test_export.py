"""`dqnkit export`: every network and head exported, loaded as a user loads it, and checked
against the agent; the command's refusals; a mismatch deletes the file; the example plays
with torch blocked from importing."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dqnkit import presets
from dqnkit.build import build_agent
from dqnkit.cli import main
from dqnkit.envs import EnvMaker, check_env_id
from dqnkit.training import train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from dqnkit import export as export_module  # noqa: E402
from dqnkit.export import RTOL, ExportMismatch, export, load_exported, random_play  # noqa: E402

ROOT = Path(__file__).parent.parent

# (preset, keys over it): one per network and head
NETWORKS = {
    "mlp": ("cartpole", {}),
    "dueling": ("cartpole", {"dueling": True}),
    "c51": ("cartpole-c51", {}),
    "qr": ("cartpole-qr", {}),
    "noisy": ("cartpole", {"noisy": True, "noisy_sigma0": 2.0}),
    "pqn-layernorm": ("pqn-cartpole", {}),
    "minatar-cnn": ("minatar", {"env_id": "MinAtar/Breakout"}),
    "nature-cnn": ("atari", {"env_id": "ALE/Breakout-v5"}),
}
NEEDS = {"minatar-cnn": "minatar", "nature-cnn": "ale_py"}
# An ONNX export takes ~2 s (the torch.export-based exporter): the fast suite exports one
# MLP and one CNN head, the slow one every other network.
FAST_ONNX = ("mlp", "c51", "nature-cnn")
ONNX_CASES = [name if name in FAST_ONNX else pytest.param(name, marks=pytest.mark.slow) for name in NETWORKS]


def untrained_agent(name: str):
    """A fresh agent of NETWORKS[name]: the check needs no training, only the network."""
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    preset, keys = NETWORKS[name]
    config = presets.get(preset, **keys)
    shape, _, n_actions = check_env_id(config.env_id)
    return build_agent(config, shape, n_actions, learns=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny CartPole run: a few hundred steps, no evaluation."""
    run = tmp_path_factory.mktemp("export") / "cartpole"
    keys = dict(total_steps=400, learning_starts=100, eval_every=0, final_eval=False, hidden_sizes=(32,))
    train(presets.get("cartpole", **keys), run)
    return run


@pytest.mark.parametrize("name", ONNX_CASES)
def test_every_network_and_head_exports_to_onnx_and_matches_the_agent(name, tmp_path):
    agent = untrained_agent(name)
    result = export(agent, tmp_path / "policy.onnx")
    assert result.ok and result.observations == 256 and result.max_rel <= RTOL, result.summary()
    # as a user runs it: onnxruntime, the env's own dtype, any batch size
    observations = random_play(agent, 8, seed=3)
    q = load_exported(tmp_path / "policy.onnx", "onnx")(observations)
    assert q.dtype == np.float32 and q.shape == (8, agent.n_actions)
    with agent.evaluation():
        np.testing.assert_allclose(q, agent.q_values(observations), rtol=RTOL, atol=RTOL * 0.1)


@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_and_head_exports_to_torchscript_and_matches_the_agent(name, tmp_path):
    result = export(untrained_agent(name), tmp_path / "policy.pt", "torchscript")
    assert result.ok, result.summary()


def test_the_noise_is_off_in_the_exported_network(tmp_path):
    """The check has teeth for noisy nets: with its noise on, the network computes other Q-values."""
    agent = untrained_agent("noisy")
    export(agent, tmp_path / "policy.pt", "torchscript")
    observations = random_play(agent, 16)
    exported = load_exported(tmp_path / "policy.pt", "torchscript")(observations)
    agent.act(observations)  # training mode: draws fresh noise
    noisy = agent.q_values(observations)
    assert np.abs(noisy - exported).max() > 100 * RTOL


def test_the_command_writes_a_checked_file_with_its_metadata(run_dir, capsys):
    assert main(["export", str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"wrote {run_dir / 'policy.onnx'} (onnx") and "[B, 4] -> Q-values [B, 2]" in out[0]
    assert out[1].startswith("checked: 256 observations of random play: greedy actions equal")
    meta = {p.key: p.value for p in onnx.load(run_dir / "policy.onnx").metadata_props}
    assert meta["env_id"] == "CartPole-v1" and meta["preset"] == "cartpole" and meta["n_actions"] == "2"
    assert json.loads(meta["obs_shape"]) == [4] and meta["obs_dtype"] == "float32"
    import dqnkit

    assert meta["dqnkit_version"] == dqnkit.__version__

    # an earlier checkpoint by its step, as TorchScript
    step = int(sorted((run_dir / "checkpoints").glob("step_*.pt"))[0].stem.split("_")[1])
    out_pt = run_dir / "early.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--checkpoint", f"step_{step}.pt",
                 "--out", str(out_pt)]) == 0  # fmt: skip
    assert out_pt.is_file() and "greedy actions equal" in capsys.readouterr().out


def _refused(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--format", "keras"], "argument --format: invalid choice: 'keras'"),
        (["--out", "{tmp}/policy.pt"], "--format onnx writes a .onnx file, not 'policy.pt'"),
        (["--format", "torchscript", "--out", "{tmp}/policy.onnx"], "--format torchscript writes a .pt file"),
        (["--out", "{tmp}/taken.onnx"], "taken.onnx exists; choose another --out or pass --overwrite"),
        (["--checkpoint", "step_7.pt", "--out", "{tmp}/x.onnx"], "has no checkpoint step_7.pt (its checkpoints:"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_work(run_dir, args, fragment, tmp_path, capsys):
    (tmp_path / "taken.onnx").write_text("mine")
    code = main(["export", str(run_dir), *[a.format(tmp=tmp_path) for a in args]])
    _refused(code, capsys.readouterr().err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]
    assert (tmp_path / "taken.onnx").read_text() == "mine"


def test_a_run_without_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    _refused(main(["export", str(tmp_path)]), capsys.readouterr().err, "has no checkpoint: it stopped before its first")
    _refused(main(["export", str(tmp_path / "nope")]), capsys.readouterr().err, "does not exist")
    assert not (tmp_path / "policy.onnx").exists()


def test_missing_onnx_packages_name_the_extra(run_dir, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name)
    )
    code = main(["export", str(run_dir), "--out", str(run_dir / "x.onnx")])
    _refused(code, capsys.readouterr().err, "needs onnxruntime: pip install 'dqnkit[export]'")
    assert not (run_dir / "x.onnx").exists()


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_a_file_that_does_not_match_is_deleted_and_exits_1(run_dir, fmt, suffix, monkeypatch, capsys):
    forward = export_module.QFunction.forward
    monkeypatch.setattr(export_module.QFunction, "forward", lambda self, obs: forward(self, obs) * 1.001)
    out = run_dir / f"bad{suffix}"
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out} does not match the agent, deleted: Q-value of action")
    assert not out.exists()


def test_another_greedy_action_or_shape_is_a_mismatch():
    """Equal Q-values but where the agent acts otherwise (its numpy path for a plain MLP is
    another computation): refused, naming the action; an output of another shape too."""
    agent = untrained_agent("mlp")
    observations = random_play(agent, 32)
    with agent.evaluation():
        q = agent.q_values(observations)
    same = export_module.check_export(agent, lambda obs: q[: len(obs)], observations)
    assert same.ok and same.max_abs == 0
    act = agent.act
    agent.act = lambda obs, **kw: 1 - act(obs, **kw)  # the other of CartPole's two actions
    result = export_module.check_export(agent, lambda obs: q[: len(obs)], observations)
    assert not result.ok and result.actions_differ == 32 - result.near_ties
    assert result.worst.startswith("greedy action for observation ")
    with pytest.raises(ExportMismatch, match=r"returns float32 \[32, 1\], not float32 \[B, A\]"):
        export_module.check_export(agent, lambda obs: q[: len(obs), :1], observations)


@pytest.mark.parametrize("env_kwargs", [None, {"map_name": "8x8"}])
def test_the_example_plays_an_episode_with_torch_blocked(run_dir, tmp_path, env_kwargs):
    policy = tmp_path / "policy.onnx"
    if env_kwargs is None:
        export(untrained_agent("mlp"), policy)  # any CartPole policy: the example only plays it
        said = "CartPole-v1: return "
    else:  # the env's own arguments travel in the file: 8x8 FrozenLake's 64 cells, not the default 16
        config = presets.get("cartpole", env_id="FrozenLake-v1", env_kwargs=env_kwargs, hidden_sizes=(8,))
        shape, _, n_actions = check_env_id(EnvMaker.from_config(config))
        assert shape == (64,)
        export(build_agent(config, shape, n_actions, learns=False), policy)
        said = "FrozenLake-v1: return "
    script = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        f"sys.argv = ['play_onnx.py', {str(policy)!r}, '--report-modules']\n"
        f"runpy.run_path({str(ROOT / 'examples' / 'play_onnx.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(said) and json.loads(lines[1]) == {"torch_imported": False}
