"""Ape-X on a real two-node Ray cluster on loopback, with Ray's token authentication.

The head offers one CPU; the second node offers two and the custom resource ``apex_node``,
which the actors ask for, so they must run there. One run completes on it; then the second
node is killed in the middle of another run, which must stop with a one-line error and a
loadable learner. Everything started here is stopped afterwards, also when a test fails.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dqnkit import load

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
SHORT = ["--set", "learning_starts=500", "--set", "eval_episodes=2", "--set", "eval_every=0", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(address: str, env: dict) -> dict[str, dict]:
    """Alive node id -> its resources, as the cluster reports them."""
    code = (
        f"import json, logging, ray; ray.init(address={address!r}, logging_level=logging.ERROR);"
        "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    # a token of the cluster's own: the head, the second node and every client must share it
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = f"127.0.0.1:{_free_port()}"
    node = None
    try:
        head = [RAY, "start", "--head", f"--port={address.split(':')[1]}", "--num-cpus=1"]
        subprocess.run([*head, "--include-dashboard=false", "--disable-usage-stats"], env=env, check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        node = subprocess.Popen(
            [RAY, "start", f"--address={address}", "--num-cpus=2", "--resources", '{"apex_node": 2}', "--block"],
            env=env,
            start_new_session=True,  # its own process group: killing it kills the whole node
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not any("apex_node" in r for r in _nodes(address, env).values()):
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(2)
        yield SimpleNamespace(address=address, env=env, node=node)
    finally:
        if node is not None and node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _apex(cluster, run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dqnkit", "apex", "--ray-address", cluster.address, "--actor-resource", "apex_node",
            "--run-dir", str(run_dir), *SHORT, *args]  # fmt: skip


def test_actors_run_on_the_node_that_offers_their_resource(cluster, tmp_path):
    second = [nid for nid, res in _nodes(cluster.address, cluster.env).items() if "apex_node" in res]
    run = tmp_path / "run"
    proc = subprocess.run(_apex(cluster, run, "--actors", "2", "--steps", "3000", "--json"), env=cluster.env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["actor_nodes"] == second  # every actor ran on the second node
    assert summary["num_actors"] == 2 and summary["steps"] >= 3000 and summary["updates"] > 0


def test_a_client_without_the_token_is_refused_in_one_line(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")  # not the one ~/.ray may hold
    proc = subprocess.run(_apex(cluster, tmp_path / "run", "--ray-timeout", "3", "--steps", "3000"), env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "token authentication" in lines[0] and "RAY_AUTH_MODE=token" in lines[0]
    assert not (tmp_path / "run").exists()


def test_losing_the_actors_node_stops_the_run_with_the_learner_saved(cluster, tmp_path):
    run = tmp_path / "run"
    args = ["--actors", "2", "--steps", "1000000", "--actor-timeout", "15", "--set", "checkpoint_every=2000"]
    proc = subprocess.Popen(_apex(cluster, run, *args), env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "latest.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the node was killed"
            time.sleep(1)
        os.killpg(cluster.node.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-2000:]
    assert "no Ape-X actor has reported" in err and "Traceback" not in err
    assert load(run).updates > 0  # the learner as it was when the actors were lost
