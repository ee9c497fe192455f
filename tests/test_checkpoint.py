import errno
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dqnkit import load, presets, resume, train
from dqnkit.checkpoint import CheckpointDir, atomic_save, safe_load
from dqnkit.errors import CheckpointError

TINY = dict(
    total_steps=400,
    learning_starts=100,
    batch_size=16,
    buffer_size=500,
    hidden_sizes=(8,),
    eval_every=0,
    eval_episodes=1,
    stop_at_return=None,
    exploration_steps=200,
)


class _Exploit:
    """Unpickling this would run os.system: a safe loader must refuse before that."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_round_trip_keeps_numpy_and_rng_state(tmp_path):
    rng = np.random.default_rng(1)
    payload = {"a": np.arange(5, dtype=np.int16), "rng": rng.bit_generator.state, "t": torch.ones(2), "n": None}
    atomic_save(payload, tmp_path / "c.pt")
    back = safe_load(tmp_path / "c.pt")
    assert back["a"].dtype == np.int16 and np.array_equal(back["a"], payload["a"])
    assert back["rng"] == payload["rng"] and torch.equal(back["t"], payload["t"]) and back["n"] is None
    assert not list(tmp_path.glob("*.tmp"))


def test_a_write_the_disk_refuses_leaves_neither_a_partial_file_nor_the_target(tmp_path, monkeypatch):
    atomic_save({"x": torch.zeros(3)}, tmp_path / "c.pt")
    before = (tmp_path / "c.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"\0" * 4096)  # some of it got out
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"x": torch.ones(3)}, tmp_path / "c.pt")
    assert not list(tmp_path.glob("*.tmp"))  # it would hold on to the space that is left
    assert (tmp_path / "c.pt").read_bytes() == before


def test_a_runs_json_files_are_whole_or_absent(tmp_path, monkeypatch):
    """config.json and summary.json are written through a rename (a kill while writing them
    left a cut file: summary.json's mere presence marks a run complete), and so is metrics.csv
    when a resume cuts it back; a failed write keeps the old text."""
    import os

    from dqnkit import files

    renamed, real_replace = [], os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: renamed.append(Path(dst).name) or real_replace(src, dst))
    train(presets.get("cartpole", **TINY), tmp_path / "run")
    assert {"config.json", "summary.json"} <= set(renamed) and "metrics.csv" not in renamed
    resume(tmp_path / "run", total_steps=500)  # metrics.csv is cut back to the checkpoint's step: by a rename too
    assert "metrics.csv" in renamed

    target = tmp_path / "run" / "summary.json"
    before = target.read_text()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write_text(target, "{}")
    assert target.read_text() == before and not list(target.parent.glob("*.tmp"))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save({"format_version": 1, "evil": _Exploit()}, buf)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="refusing to load"):
        safe_load(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        safe_load(tmp_path / "raw.pt")
    assert not (tmp_path / "PWNED").exists()


def test_truncated_and_foreign_files_are_refused(tmp_path):
    atomic_save({"x": torch.zeros(1000)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a dqnkit checkpoint"):
        safe_load(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        safe_load(tmp_path / "missing.pt")


def test_a_corrupt_latest_checkpoint_names_the_earlier_one_that_loads(tmp_path):
    """latest.pt is a hard link to the newest step file: damaged in place, both are. The
    error names the newest earlier checkpoint that loads, and its command makes the run go on."""
    import os

    from dqnkit.checkpoint import load_checkpoint

    run = tmp_path / "run"
    train(presets.get("cartpole", **{**TINY, "checkpoint_every": 100}), run)
    ckpts = CheckpointDir(run)
    newest, earlier = ckpts.numbered()[-1], ckpts.numbered()[-2]
    assert newest.stat().st_ino == ckpts.latest.stat().st_ino
    os.truncate(ckpts.latest, ckpts.latest.stat().st_size // 2)  # a disk's fault, in place
    with pytest.raises(CheckpointError, match="latest.pt is truncated or corrupt") as refused:
        load_checkpoint(run)
    assert f"`ln -f {earlier} {ckpts.latest}`" in str(refused.value)
    ckpts.latest.unlink()
    os.link(earlier, ckpts.latest)  # what the suggested `ln -f` does
    assert resume(run, total_steps=500)["steps"] == 500
    for path in ckpts.numbered():  # none loads: said so
        os.truncate(path, 10)
    with pytest.raises(CheckpointError, match="and no earlier checkpoint of the run loads"):
        load_checkpoint(run)


def test_a_run_stopped_before_its_first_checkpoint_says_how_to_start_it_again(tmp_path):
    from dqnkit.checkpoint import load_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(presets.get("cartpole").to_json())
    with pytest.raises(CheckpointError, match="has no checkpoint: it stopped before its first") as refused:
        load_checkpoint(run)
    assert f"--config {run / 'config.json'} --run-dir {run} --overwrite" in str(refused.value)


def test_checkpoint_dir_keeps_the_newest_and_links_latest(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=2)
    for step in (10, 20, 30):
        ckpts.save(step, {"step": step})
    assert [p.name for p in ckpts.numbered()] == ["step_0000000020.pt", "step_0000000030.pt"]
    assert safe_load(ckpts.latest)["step"] == 30


def test_run_with_a_swapped_malicious_latest_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(presets.get("cartpole", **TINY), tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    latest.unlink()
    torch.save({"format_version": 1, "evil": _Exploit()}, latest)
    with pytest.raises(CheckpointError):
        load(tmp_path / "run")
    assert not (tmp_path / "PWNED").exists()


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    train(presets.get("cartpole", **TINY), tmp_path / "run")
    ckpt = safe_load(tmp_path / "run" / "checkpoints" / "latest.pt")
    ckpt["config"]["hidden_sizes"] = [32]  # config now disagrees with the stored weights
    atomic_save(ckpt, tmp_path / "run" / "checkpoints" / "latest.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load(tmp_path / "run")
