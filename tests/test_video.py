"""Films: GIFs streamed to disk frame by frame, a length cap, memory that does not grow with
the episode, and envs without a time limit (max_episode_steps)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageSequence

from dqnkit import Config, presets, train
from dqnkit.build import build
from dqnkit.cli import main
from dqnkit.errors import ConfigError
from dqnkit.evaluate import evaluate, record_video, warn_if_endless
from dqnkit.logger import read_metrics
from dqnkit.video import GifWriter, default_max_steps

ENDLESS = "dqnkit-test/Endless-v0"  # tests/conftest.py: no time limit, never ends, 200x300 frames
TESTS = Path(__file__).parent


def _cfg(**overrides) -> Config:
    tiny = dict(total_steps=300, learning_starts=100, batch_size=16, buffer_size=500, hidden_sizes=(8,))
    return presets.get("cartpole", **{**tiny, "eval_every": 0, "final_eval": False, "device": "cpu", **overrides})


def _gif(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The frames of a GIF as a viewer shows them, and each frame's duration in ms."""
    with Image.open(path) as image:
        pairs = [(np.array(f.convert("RGB")), f.info["duration"]) for f in ImageSequence.Iterator(image)]
    return [f for f, _ in pairs], [d for _, d in pairs]


# ------------------------------------------------------------------ the GIF writer
def test_a_streamed_gif_shows_every_frame_as_given(tmp_path):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (20, 3), dtype=np.uint8)  # within a GIF's 256 colours: no loss
    frames = [colours[rng.integers(0, 20, (30, 40))] for _ in range(5)]
    frames[2][5:9, 7:30] = frames[1][5:9, 7:30]  # frames that differ in part and in whole
    writer = GifWriter(tmp_path / "a.gif", fps=20)
    for frame in frames:
        writer.append(frame)
    writer.close()
    shown, durations = _gif(tmp_path / "a.gif")
    assert len(shown) == 5 and all(np.array_equal(a, b) for a, b in zip(shown, frames))
    assert durations == [50] * 5


def test_a_still_stretch_is_one_frame_whose_duration_grows(tmp_path):
    """CliffWalking's agent bumping into a wall is the same frame 27,000 times: one frame,
    split where its duration would pass the 16 bits a GIF frame has (655 s)."""
    still, moved = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)
    writer = GifWriter(tmp_path / "still.gif", fps=4)  # 25 hundredths a frame
    for frame in [still] * 3000 + [moved]:
        writer.append(frame)
    writer.close()
    shown, durations = _gif(tmp_path / "still.gif")
    assert len(shown) == 3 and sum(durations) == 3001 * 250
    assert max(durations) <= 655_350 and np.array_equal(shown[-1], moved)


def test_a_gif_frame_cut_short_is_cut_off_and_the_file_stays_valid(tmp_path, monkeypatch):
    """Ctrl-C inside the encoder: the file ends after the last whole frame."""
    import dqnkit.video

    frames = [np.full((6, 8, 3), shade, np.uint8) for shade in (10, 90, 170)]
    writer, real, calls = GifWriter(tmp_path / "a.gif", fps=10), dqnkit.video.GifWriter._write_frame, []

    def write(self, *args):
        calls.append(1)
        real(self, *args)
        if len(calls) == 2:
            self._file.write(b"half a frame")
            raise KeyboardInterrupt

    monkeypatch.setattr(dqnkit.video.GifWriter, "_write_frame", write)
    with pytest.raises(KeyboardInterrupt):
        for frame in frames:
            writer.append(frame)
    monkeypatch.undo()
    writer.close()
    shown, _ = _gif(tmp_path / "a.gif")
    assert len(shown) == 1 and np.array_equal(shown[0], frames[0])


def test_a_gif_without_a_frame_is_not_left_behind(tmp_path):
    from dqnkit.evaluate import _close_or_remove

    _close_or_remove(GifWriter(tmp_path / "a.gif", fps=10), tmp_path / "a.gif")
    assert not (tmp_path / "a.gif").exists()


# ------------------------------------------------------------------ films of an episode
def test_a_film_is_cut_at_max_steps_and_says_so(tmp_path):
    agent = build(_cfg(env_id=ENDLESS)).agent
    video = record_video(agent, ENDLESS, tmp_path / "a.gif", max_steps=40)
    assert video.cut and video.frames == 41 and video.episode_return == -40
    assert len(_gif(tmp_path / "a.gif")[0]) == 41


def test_the_default_cap_is_five_minutes_of_playback():
    assert default_max_steps(30.0) == 9000 and default_max_steps(4.0) == 1200


def test_a_stop_mid_film_leaves_a_valid_file_with_the_frames_so_far(tmp_path):
    agent = build(_cfg(env_id=ENDLESS)).agent
    asked = iter(range(10**6))
    video = record_video(agent, ENDLESS, tmp_path / "a.mp4", max_steps=10**6, stop=lambda: next(asked) >= 25)
    assert video.cut and video.frames == 26
    assert sum(1 for _ in imageio_ffmpeg.read_frames(str(tmp_path / "a.mp4"))) - 1 == 26  # the first item is the meta


def test_ctrl_c_mid_film_closes_the_gif_with_the_frames_so_far(tmp_path, monkeypatch):
    import conftest

    def render(self):
        if self.t == 12:
            raise KeyboardInterrupt
        return real(self)

    real = conftest.Endless.render
    monkeypatch.setattr(conftest.Endless, "render", render)
    agent = build(_cfg(env_id=ENDLESS)).agent
    with pytest.raises(KeyboardInterrupt):
        record_video(agent, ENDLESS, tmp_path / "a.gif", max_steps=100)
    assert len(_gif(tmp_path / "a.gif")[0]) == 12  # steps 0..11 were filmed


def test_eval_video_max_steps_is_reported_in_text_and_json(tmp_path, capsys):
    train(_cfg(env_id=ENDLESS, max_episode_steps=20), tmp_path / "run")  # evaluations end at 20 steps...
    capsys.readouterr()
    args = ["eval", str(tmp_path / "run"), "--episodes", "1", "--video", str(tmp_path / "a.gif")]
    assert main([*args, "--video-max-steps", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["video_cut"] is True and result["video_frames"] == 6
    assert main(args) == 0  # ...and so does the film, which is then not cut
    assert "cut" not in capsys.readouterr().out and len(_gif(tmp_path / "a.gif")[0]) == 21
    assert main([*args, "--video-max-steps", "5"]) == 0
    out = capsys.readouterr().out  # 30 fps is 3 hundredths a frame in a GIF: 33.33 fps
    assert "6 frames at 33.33 fps, the nearest rate a GIF holds: its frames last whole hundredths" in out
    assert "cut at 5 steps (--video-max-steps)" in out


def test_video_max_steps_without_a_video_is_refused(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--video-max-steps", "5"]) == 2
    assert "add --video FILE" in capsys.readouterr().err


# ------------------------------------------------------------------ envs without a time limit
def test_max_episode_steps_cuts_training_and_evaluation_episodes(tmp_path):
    train(_cfg(env_id=ENDLESS, max_episode_steps=25, total_steps=200), tmp_path / "run")
    lengths = {int(row["length"]) for row in read_metrics(tmp_path / "run" / "metrics.csv") if row["kind"] == "episode"}
    assert lengths == {25}
    agent = build(_cfg(env_id=ENDLESS, max_episode_steps=25)).agent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "went 27,000 steps without ending"
        assert evaluate(agent, ENDLESS, 2, seed=0).returns.tolist() == [-25.0, -25.0]


def test_an_env_without_a_time_limit_is_said_before_it_plays(tmp_path):
    with pytest.warns(UserWarning, match="CliffWalking-v1 has no time limit: a training episode lasts"):
        warn_if_endless(_cfg(env_id="CliffWalking-v1"), training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_endless(_cfg(env_id="CliffWalking-v1", max_episode_steps=100), training=True)
        warn_if_endless(_cfg(env_id="CartPole-v1"), training=False)  # its own limit: 500 steps


def test_max_episode_steps_is_refused_for_atari():
    with pytest.raises(ConfigError, match="ends its games at 27,000 steps"):
        presets.get("atari", env_id="ALE/Pong-v5", max_episode_steps=1000)


# ------------------------------------------------------------------ memory
# The peak is VmHWM, this process's own high-water mark: ru_maxrss also counts the pages the
# forked child shared with the test process before exec (1.6 GB late in the slow suite).
_FILM_27000 = """
import re, sys
import conftest  # registers dqnkit-test/Endless-v0
from dqnkit import presets
from dqnkit.evaluate import record_video
from dqnkit.build import build
cfg = presets.get("cartpole", env_id="dqnkit-test/Endless-v0", hidden_sizes=(8,), device="cpu")
video = record_video(build(cfg).agent, cfg.env_id, sys.argv[1], max_steps=27_000)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
print(video.frames, peak_kb * 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_a_27000_step_film_holds_its_memory_under_1_gb(tmp_path, suffix):
    """27,001 frames of 200x300 are 4.9 GB of pixels: the film must stream them to disk.
    (measured in a child process, which has only the film's memory)"""
    out = tmp_path / f"long{suffix}"
    env = {"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _FILM_27000, str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    frames, peak = map(int, done.stdout.split())
    assert frames == 27_001 and peak < 1 << 30, f"peak resident memory {peak / 2**20:.0f} MB"
    if suffix == ".gif":
        with Image.open(out) as image:
            assert image.n_frames == 27_001 and image.size == (300, 200)
    else:
        reader = imageio_ffmpeg.read_frames(str(out))
        assert next(reader)["size"] == (300, 200) and sum(1 for _ in reader) == 27_001


@pytest.mark.slow
def test_reading_a_long_runs_metrics_holds_no_row_list(tmp_path):
    """A long run logs a row per episode (100k episodes: 9 MB on disk, ~100 MB as a list of
    dicts). A resume's rewrite, the recent-return window and the curves stream the rows."""
    import tracemalloc

    from dqnkit.experiments import episodes_by
    from dqnkit.logger import Logger, iter_metrics

    rows = 50_000
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        f.write("kind,step,episode,return,length,epsilon,loss,q_mean,return_std,wall_s,q_pred,q_real\r\n")
        f.writelines(f"episode,{i},{i},{i % 500}.0,20,0.05,0.1,1.5,,{i / 100},,\r\n" for i in range(1, rows + 1))
        f.write("episode,50001")  # cut short by a kill
    tracemalloc.start()
    steps, _, returns = episodes_by(iter_metrics(tmp_path / "metrics.csv"))
    Logger(tmp_path, resume_step=40_000, tensorboard=False).close()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(steps) == rows and returns[-1] == rows % 500
    assert peak < 5 << 20, f"{peak / 2**20:.1f} MB"  # the arrays are 1.2 MB
    assert [int(r["step"]) for r in iter_metrics(tmp_path / "metrics.csv")] == list(range(1, 40_001))
