"""Benchmarks run end to end in a tiny configuration and report every contender."""

import json
import time

import pytest

from dqnkit.bench.replay import LessonPER
from dqnkit.cli import main


def test_bench_replay_writes_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "replay.json"
    assert main(["bench", "replay", "--capacities", "1000,4000", "--seconds", "0.05", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["capacity"] for r in result["rows"]] == [1000, 4000]
    for row in result["rows"]:
        assert row["dqnkit_us"] > 0 and row["lesson_us"] > 0
        assert row["speedup_vs_lesson"] == round(row["lesson_us"] / row["dqnkit_us"], 1)
    table = capsys.readouterr().out
    assert "dqnkit µs" in table and "lesson µs" in table


def test_lesson_buffer_is_the_lesson_s_algorithm():
    import numpy as np

    buf = LessonPER(4)
    buf.buffer = [(np.zeros(2), 0, 0.0, np.zeros(2), False)] * 4
    buf.priorities[:] = [1.0, 0.0, 0.0, 0.0]
    np.random.seed(0)
    *_, indices, weights = buf.sample(8)
    assert (indices == 0).all() and np.allclose(weights, 1.0)


def test_bench_refuses_bad_options(capsys):
    assert main(["bench", "replay", "--capacities", "10,x"]) == 2
    assert main(["bench", "replay", "--seconds", "0"]) == 2
    assert main(["bench", "speed", "--capacities", "1000"]) == 2
    assert main(["bench", "atari", "--capacities", "1000"]) == 2
    assert main(["bench", "speed", "--seconds", "1"]) == 2
    assert capsys.readouterr().err.count("error:") == 5
    assert main(["bench", "speed", "--envs", "4"]) == 2
    assert "--envs applies to `bench atari` and `bench atari-train` only" in capsys.readouterr().err
    # an option is refused where it does not apply even at its default value (2 was let through)
    for name in ("speed", "atari-train", "checkpoint"):
        assert main(["bench", name, "--seconds", "2"]) == 2
        assert "--seconds applies to `bench replay` and `bench atari` only" in capsys.readouterr().err
    assert main(["bench", "replay", "--capacities", "10000,100"]) == 2
    assert "--capacities must each be at least 256, got '10000,100'" in capsys.readouterr().err
    # zero is refused, not read as "the default" (these ran with 4 or 8 envs, 25k steps, before)
    for name, flag in (("atari", "--envs"), ("atari-train", "--envs"), ("atari-train", "--steps")):
        assert main(["bench", name, flag, "0"]) == 2
        assert f"{flag}: 0 must be >=" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_speed_runs_both_libraries(tmp_path, capsys):
    from dqnkit.bench import speed

    result = speed.run(steps=1500, seeds=1, out=tmp_path / "speed.json", cartpole_steps=2000, cleanrl_steps=12_000)
    assert json.loads((tmp_path / "speed.json").read_text()) == result
    assert result["sb3_zoo"]["wall_s"] > 0 and result["dqnkit_zoo"]["wall_s"] > 0
    ratio = result["sb3_zoo"]["wall_s"] / result["dqnkit_zoo"]["wall_s"]  # of the rounded times
    assert abs(result["zoo_speedup"] - ratio) < 0.02 * ratio + 0.01
    assert len(result["cartpole"]["runs"]) == 1 and result["cartpole"]["runs"][0]["steps"] <= 2000
    k = result["cleanrl_defaults"]
    assert k["sb3_sps"] > 0 and k["dqnkit_sps"] > 0 and 0 < k["dqnkit_overhead_us_per_step"]
    assert k["raw_env_step_us"] > 0 and k["steps"] == 12_000
    assert [u["preset"] for u in result["updates"]] == [case[0] for case in speed.UPDATE_CASES]
    assert all(u["update_us"] > 0 for u in result["updates"])
    captured = capsys.readouterr()
    out = captured.out
    assert "SB3 DQN, rl-zoo settings" in out and "CleanRL dqn.py defaults" in out and "update (µs" in out
    # each part says it finished as it finishes, before the table
    assert [line.split(":")[0] for line in captured.err.splitlines() if line.startswith("  .. ")] == [
        "  .. SB3 at rl-zoo settings",
        "  .. dqnkit cartpole-zoo",
        "  .. cartpole preset",
        "  .. CleanRL defaults",
    ]


@pytest.mark.slow
def test_bench_atari_reports_memory_and_speed(tmp_path, capsys):
    pytest.importorskip("ale_py")
    from dqnkit.bench import atari

    result = atari.run(seconds=0.05, transitions=1000, out=tmp_path / "atari.json", envs=2, eval_games=2)
    assert json.loads((tmp_path / "atari.json").read_text()) == result
    bytes_ = result["replay_bytes_per_transition"]
    assert bytes_["dqnkit_frame_replay"] <= 7.5 * 1024 < bytes_["naive_stacked"]
    assert bytes_["sb3_optimize_memory"] > 3.5 * bytes_["dqnkit_frame_replay"]
    assert (
        min(result["env_sps"][k] for k in ("1", "2", "1 ale", "2 ale")) > 0 and result["updates_per_s"]["batch_32"] > 0
    )
    assert result["eval_s"]["gymnasium"] > 0 and result["eval_s"]["ale"] > 0
    out = capsys.readouterr().out
    assert "replay bytes/transition" in out and "evaluation, 2 random games, ale s" in out


def test_update_timing_refuses_an_unknown_mode_and_a_graph_off_cuda():
    import torch

    from dqnkit.bench.atari_train import update_ms

    result = update_ms(torch.device("cpu"), "eager", updates=2)
    assert result["ms"] > 0 and result["setup_s"] >= 0
    for mode in ("jit", "cuda_graph"):
        with pytest.raises(ValueError, match="mode must be one of"):
            update_ms(torch.device("cpu"), mode)


def test_sample_timing_gathers_where_it_says(monkeypatch):
    import torch

    from dqnkit.bench.atari_train import sample_ms
    from dqnkit.replay.device_frames import DeviceFrames

    calls = []
    stacks = DeviceFrames.stacks
    monkeypatch.setattr(DeviceFrames, "stacks", lambda self, *args: calls.append(1) or stacks(self, *args))
    assert sample_ms(torch.device("cpu"), "host", rows=800, samples=10) > 0 and not calls
    assert sample_ms(torch.device("cpu"), "device", rows=800, samples=10) > 0 and len(calls) == 40 + 10


def test_a_failing_compile_is_reported_beside_the_other_timings(monkeypatch):
    import torch

    from dqnkit.bench import atari_train

    def fake(device, mode):
        if mode == "compile":
            raise RuntimeError("Compiler: cc is not found\nmore detail")
        return {"ms": 2.0, "setup_s": 0.1}

    monkeypatch.setattr(atari_train, "update_ms", fake)
    result = atari_train.update_timings(torch.device("cpu"), compile_update=True)
    assert result == {
        "update_ms": {"eager": 2.0},
        "update_setup_s": {"eager": 0.1},
        "compile_error": "Compiler: cc is not found",
    }


def test_bench_atari_train_refuses_its_flags_elsewhere(capsys):
    assert main(["bench", "speed", "--compile"]) == 2
    assert "--compile applies to `bench atari-train` only" in capsys.readouterr().err
    assert main(["bench", "speed", "--variant", "frame_gather=host"]) == 2
    assert "--variant applies to `bench atari-train` only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("frame_gathers=host", "unknown config key 'frame_gathers'"),
        ("frame_gather=gpu", "frame_gather"),
        ("learning_starts=30000", "learning_starts 30000 is not below total_steps 25000"),
        ("frame_gather", "--variant expects key=value, got 'frame_gather'"),
    ],
)
def test_a_bad_variant_is_refused_before_any_run(tmp_path, capsys, variant, message):
    out = tmp_path / "atari-train.json"
    assert main(["bench", "atari-train", "--variant", variant, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_bench_atari_train_compares_sb3_and_times_every_update_mode(tmp_path, capsys):
    pytest.importorskip("ale_py")
    pytest.importorskip("stable_baselines3")
    out = tmp_path / "atari-train.json"
    args = ["bench", "atari-train", "--steps", "1000", "--envs", "2", "--device", "cpu", "--compile"]
    args += ["--variant", "frame_gather=device"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["envs"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["sb3"]["sps"] > 0 and row["dqnkit"]["sps"] > 0 and row["dqnkit"]["updates_per_s"] > 0
        assert row["speedup"] == round(row["dqnkit"]["sps"] / row["sb3"]["sps"], 2)
        assert row["sb3"]["gpu_busy"] is None  # no GPU to sample on the CPU
    assert set(result["update_ms"]) == {"eager", "compile"} and min(result["update_ms"].values()) > 0
    assert result["update_setup_s"]["compile"] > 0
    assert set(result["sample_ms"]) == {"host"} and result["sample_ms"]["host"] > 0
    (variant,) = result["variants"]
    assert variant["envs"] == 2 and variant["set"] == "frame_gather=device" and variant["dqnkit"]["sps"] > 0
    assert variant["default_speedup"] == round(result["rows"][-1]["dqnkit"]["sps"] / variant["dqnkit"]["sps"], 2)
    captured = capsys.readouterr()
    printed = captured.out
    assert "dqnkit vs SB3" in printed and "compile" in printed and "gathered on the host" in printed
    progress = [line for line in captured.err.splitlines() if line.startswith("  .. ")]
    assert [line.split(":")[0] for line in progress] == [
        "  .. 1 env, SB3",
        "  .. 1 env, dqnkit",
        "  .. 2 envs, SB3",
        "  .. 2 envs, dqnkit",
        "  .. dqnkit with frame_gather=device",
        "  .. one update",
    ]
    assert "dqnkit with frame_gather=device" in printed


@pytest.mark.slow  # ~15-35 s: the fast suite keeps the shorter tests of the same code
def test_bench_checkpoint_compares_full_and_incremental(tmp_path, capsys):
    out = tmp_path / "checkpoint.json"
    assert main(["bench", "checkpoint", "--capacities", "20000", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["mode"], r["new_transitions"]): r for r in result["checkpoints"]}
    assert set(rows) == {(m, n) for m in ("full", "incremental") for n in (10_000, 100_000)}
    for new in (10_000, 100_000):
        full, incremental = rows[("full", new)], rows[("incremental", new)]
        assert full["bytes_written"] >= result["replay_bytes"]  # the whole replay, every time
        # the new rows (at most a ring of them: 100k new rows rewrite the whole 20k ring) and a small state
        assert incremental["bytes_written"] <= 1.05 * full["bytes_written"]
        assert incremental["loop_blocked_s"] <= incremental["writer_s"]
    assert rows[("incremental", 10_000)]["written_over_new"] <= 1.1
    assert rows[("incremental", 10_000)]["bytes_written"] < rows[("full", 10_000)]["bytes_written"] / 1.5
    assert 1.0 <= result["disk"]["disk_over_replay"] < 3
    assert all(t["steps_per_s_checkpointing"] > 0 for t in result["throughput"])
    captured = capsys.readouterr()
    assert "written / new" in captured.out
    assert "  .. one checkpoint each way timed" in captured.err.splitlines()
    assert main(["bench", "checkpoint", "--capacities", "30000,40000"]) == 2
    assert main(["bench", "checkpoint", "--capacities", "100"]) == 2


def test_the_sb3_peer_leaves_no_log_folder_behind(tmp_path, monkeypatch):
    """SB3's default logger makes a ``SB3-<time>`` folder in the temp directory per learn()."""
    import tempfile

    from dqnkit.bench import speed

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    speed._sb3_dqn("cartpole-cleanrl", seed=0).learn(50)
    assert not list(tmp_path.glob("SB3-*"))


@pytest.mark.parametrize("case", [0, 4, 5], ids=["mlp", "qr", "minatar-cnn"])
def test_bench_times_the_update_of_each_network(case):
    from dqnkit.bench import speed

    row = speed.update_us(*speed.UPDATE_CASES[case], updates=3, blocks=1)
    assert row["preset"] == speed.UPDATE_CASES[case][0] and row["update_us"] > 0


def test_bench_atari_timer_skips_the_first_call_and_waits_for_the_device():
    """The first call (an optimizer's build, a CUDA graph's capture) is not timed, and the
    clock stops only after ``sync`` (queued GPU work): updates/s read 1.1 instead of 50 on
    this CPU when the first learn built the optimizer inside the timed loop."""
    from dqnkit.bench.atari import _timed

    events = []

    def fn():
        events.append("call")
        if len(events) == 1:
            time.sleep(0.5)

    calls, elapsed = _timed(fn, 0.01, sync=lambda: events.append("sync"))
    assert elapsed < 0.5 and calls == events.count("call") - 1 >= 1
    assert events[:2] == ["call", "sync"] and events[-1] == "sync"
