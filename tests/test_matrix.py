"""Every command for every env family, through the command line, as a user runs them.

One row per family (classic control, Box2D, MinAtar, ALE, images through the pixel path);
each cell checks what the command leaves behind (a summary field, a checkpoint, a video with
as many frames as the episode had steps plus one), not only the exit code. Nothing here is
skipped: a missing extra is a failure. The cells of a row run in order on one run directory,
so the module is one slow test per family.
"""

import json

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageSequence

from dqnkit.cli import main

pytestmark = pytest.mark.slow

# env id -> (the preset --env alone picks, whether its episode in progress can be saved (else a
# resumed run starts fresh episodes and says so), overrides that keep the run short, and the
# env's own arguments)
FAMILIES = {
    "CartPole-v1": ("cartpole", True, ["learning_starts=100"], []),
    "LunarLander-v3": ("cartpole", False, ["learning_starts=100"], []),
    "MinAtar/Breakout": ("minatar", False, ["learning_starts=100", "buffer_size=2000"], []),
    "ALE/Breakout-v5": ("atari", False, ["learning_starts=100", "buffer_size=2000"], []),
    # the pixel path: a 96x96 colour image, gray 84x84 frames stacked, the Nature CNN
    "CarRacing-v3": (
        "pixels",
        False,
        ["learning_starts=100", "buffer_size=2000", "max_episode_steps=200"],
        ["--env-kwarg", "continuous=false"],
    ),
}
SHORT = ["eval_every=0", "eval_episodes=1", "checkpoint_every=200", "stop_at_return=null"]


def _run(capsys, *argv: str) -> str:
    """``dqnkit ARGV`` in this process; asserts exit 0 and returns what it printed."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"dqnkit {' '.join(argv)} exited {code}: {err.strip()[-500:]}"
    return out


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _video_frames(path, fps: float) -> int:
    """Frames a player shows: a GIF merges identical consecutive frames into one longer frame
    (Pillow does), so its frames are counted by playing time."""
    if path.suffix == ".gif":
        with Image.open(path) as gif:
            total_ms = sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif))
        return round(total_ms * fps / 1000)
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


@pytest.mark.parametrize("env_id", list(FAMILIES))
def test_every_command_works_for_the_family(env_id, tmp_path, capsys):
    preset, exact_resume, overrides, env_args = FAMILIES[env_id]
    sets = [arg for key in overrides + SHORT for arg in ("--set", key)]
    run = tmp_path / "run"

    # train: the family's preset, a summary, checkpoints and a learning curve
    _run(capsys, "train", "--env", env_id, *env_args, "--steps", "400", "--run-dir", str(run), "--quiet", *sets)
    summary = _summary(run)
    assert (summary["env_id"], summary["preset"], summary["steps"]) == (env_id, preset, 400)
    assert summary["updates"] > 0 and np.isfinite(summary["eval_return_mean"])
    assert (run / "checkpoints" / "latest.pt").exists() and (run / "learning_curve.png").exists()

    # train --resume: continues from the checkpoint to the new total
    _run(capsys, "train", "--resume", str(run), "--steps", "600", "--quiet")
    resumed = _summary(run)
    assert resumed["steps"] == 600 and resumed["updates"] > summary["updates"]
    assert resumed["resumed_with_fresh_episodes"] is not exact_resume

    # eval --json: one JSON line, one finite return per episode
    result = json.loads(_run(capsys, "eval", str(run), "--episodes", "2", "--json"))
    assert len(result["returns"]) == 2 and np.isfinite(result["returns"]).all()

    # eval --video in both formats: every step of the episode is a frame
    for suffix in (".gif", ".mp4"):
        video = tmp_path / f"episode{suffix}"
        result = json.loads(_run(capsys, "eval", str(run), "--episodes", "1", "--json", "--video", str(video)))
        assert result["video"] == str(video) and result["video_frames"] >= 2
        assert _video_frames(video, result["video_fps"]) == result["video_frames"], suffix

    # apex with one actor: the same run-dir contract
    apex = tmp_path / "apex"
    args = ["--env", env_id, *env_args, "--actors", "1", "--steps", "300", "--run-dir", str(apex), "--quiet", *sets]
    _run(capsys, "apex", *args)
    summary = _summary(apex)
    assert summary["num_actors"] == 1 and summary["steps"] >= 300 and summary["env_id"] == env_id
    assert summary["updates"] > 0 and (apex / "checkpoints" / "latest.pt").exists()
    if env_id.startswith("ALE/"):  # the replay train builds: each 84x84 frame stored once
        assert summary["replay_bytes_per_slot"] <= 7.5 * 1024
