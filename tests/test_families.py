"""Each env family gets its own defaults, a preset of another family is flagged, and
videos come out for every family in both formats (or the format is refused in one line)."""

import warnings

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest

from dqnkit import presets, train
from dqnkit.cli import build_parser, main
from dqnkit.command_config import config_from_args as _config
from dqnkit.video import open_video, video_frame


def _cfg(*argv):
    return _config(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize(
    "env_id, preset",
    [
        ("ALE/Pong-v5", "atari"),
        ("MinAtar/Breakout", "minatar"),
        ("LunarLander-v3", "cartpole"),
        ("CartPole-v1", "cartpole"),
    ],
)
def test_env_alone_picks_its_familys_preset(env_id, preset, capsys):
    config = _cfg("--env", env_id)
    assert config.preset == preset and config.env_id == env_id
    assert "warning" not in capsys.readouterr().err


def test_a_preset_of_another_family_is_flagged_in_one_line(capsys):
    config = _cfg("--preset", "atari", "--env", "CartPole-v1")
    assert config.preset == "atari"  # the user's choice stands
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "would pick --preset cartpole" in err
    _cfg("--preset", "cartpole-c51", "--env", "LunarLander-v3")  # same family: nothing to say
    assert capsys.readouterr().err == ""


def test_video_frames_are_uint8_rgb_big_enough_to_see():
    minatar = video_frame(np.random.default_rng(0).random((10, 10, 3)))
    assert minatar.dtype == np.uint8 and minatar.shape == (160, 160, 3)
    atari = np.zeros((210, 160, 3), np.uint8)
    assert video_frame(atari) is atari  # already fine: untouched


def test_an_atari_sized_mp4_keeps_its_size(tmp_path):
    """210 rows are not a multiple of 16: imageio's default would stretch them to 224."""
    frames = [video_frame(np.full((210, 160, 3), shade, np.uint8)) for shade in (0, 128, 255)]
    writer = open_video(tmp_path / "atari.mp4", fps=15.0)
    for frame in frames:
        writer.append(frame)
    writer.close()
    size = next(imageio_ffmpeg.read_frames(str(tmp_path / "atari.mp4")))["size"]
    assert tuple(size) == (160, 210)


@pytest.fixture(scope="module")
def minatar_run(tmp_path_factory):
    pytest.importorskip("minatar")
    run = tmp_path_factory.mktemp("minatar") / "run"
    train(
        presets.get(
            "minatar",
            env_id="MinAtar/Breakout",
            total_steps=300,
            learning_starts=100,
            buffer_size=1000,
            eval_every=0,
            eval_episodes=1,
            device="cpu",
        ),
        run,
    )
    return run


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_minatar_video_in_both_formats(minatar_run, tmp_path, suffix):
    out = tmp_path / f"play{suffix}"
    with warnings.catch_warnings(record=True) as caught:  # gymnasium's env checker warned twice about MinAtar
        warnings.simplefilter("always")
        assert main(["eval", str(minatar_run), "--episodes", "1", "--video", str(out)]) == 0
    assert [str(w.message) for w in caught] == []
    if suffix == ".gif":
        frames = imageio.mimread(out, memtest=False)
        count, size = len(frames), frames[0].shape[1::-1]
    else:
        count = imageio_ffmpeg.count_frames_and_secs(str(out))[0]
        size = next(imageio_ffmpeg.read_frames(str(out)))["size"]
    assert count >= 2 and tuple(size) == (160, 160)


@pytest.mark.parametrize(
    "name, message",
    [("play.avi", "--video writes .mp4 or .gif files"), ("a-file/play.gif", "a-file is a file, not a directory")],
)
def test_a_video_that_cannot_be_written_is_refused_before_any_work(minatar_run, tmp_path, capsys, name, message):
    (tmp_path / "a-file").write_text("")
    assert main(["eval", str(minatar_run), "--video", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1  # before: a traceback after the evaluation
    assert not (tmp_path / name).exists()


def test_a_video_in_a_missing_directory_is_refused_before_any_work(minatar_run, tmp_path, capsys):
    """A mistyped path silently made a tree of directories; before that, it was a traceback
    after the evaluation."""
    out = tmp_path / "videos" / "new" / "play.gif"
    assert main(["eval", str(minatar_run), "--episodes", "1", "--video", str(out)]) == 2
    assert capsys.readouterr().err == f"error: --video {out}: directory {out.parent} does not exist (create it first)\n"
    assert not (tmp_path / "videos").exists()
