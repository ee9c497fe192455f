"""Video files of played episodes: frames go to disk as they come, so a film's memory does
not grow with its length.

MP4 frames are piped to ffmpeg (imageio-ffmpeg's H.264 encoder). GIF frames are written by
:class:`GifWriter`, a streaming writer on Pillow's frame encoder: Pillow's own
``save_all`` (and imageio's GIF writer on it) keeps every frame until the file closes,
which for a 27,000-step episode of 240x720 frames is more memory than a machine has.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

VIDEO_FORMATS = (".mp4", ".gif")

# A film's default length cap, in seconds of playback at the env's frame rate: long enough
# for a whole Atari game by a fair agent (a Pong game lasts about two minutes), short enough
# that an agent walking in circles in an env without a time limit does not film for hours.
DEFAULT_FILM_SECONDS = 300


class FrameWriter(Protocol):
    """What :func:`open_video` returns, for either format."""

    def append(self, frame: np.ndarray) -> None:
        """Write one uint8 [H, W, 3] frame (the size of the first)."""

    def close(self) -> None:
        """Finish the file: a valid video of the frames appended so far."""


def require_video_writer(suffix: str) -> None:
    """Refuse (exit 2) a ``suffix`` video before anything is played or trained, where its
    writer is missing: Pillow for .gif, imageio with imageio-ffmpeg (an H.264 encoder) for .mp4."""
    try:
        if suffix == ".gif":
            import PIL.GifImagePlugin  # noqa: F401
        else:
            import imageio.v2  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
    except ImportError as exc:
        from dqnkit.errors import DqnkitError

        raise DqnkitError(f"{suffix} videos need {exc.name}: pip install 'dqnkit[video]'") from None


def open_video(path: Path, fps: float) -> FrameWriter:
    """A writer for ``path`` (.gif or .mp4) that takes frames from :func:`video_frame`."""
    if path.suffix.lower() == ".gif":
        return GifWriter(path, fps)
    return _Mp4Writer(path, fps)


def quiet_sdl() -> None:
    """Set SDL (pygame, which draws CartPole, CliffWalking and Box2D frames) up for
    rgb_array rendering in a process that owns its signals: no screen (without one SDL printed
    "error: XDG_RUNTIME_DIR is invalid or not set" wherever there is no display session),
    and no signal handlers: SDL's turned SIGTERM into a quit event nobody reads, so `kill`
    did nothing to a process filming CliffWalking."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")


def default_max_steps(fps: float) -> int:
    """The longest film, in env steps, when the user sets none: :data:`DEFAULT_FILM_SECONDS`."""
    return max(1, round(fps * DEFAULT_FILM_SECONDS))


def video_fps(env: gym.Env, suffix: str) -> float:
    """Frames per second that play the episode in real time: an Atari step is ``frame_skip``
    frames of a 60 Hz console. A GIF stores each frame's duration in hundredths of a second,
    so its rate is rounded to one it can hold (Atari's 15 fps is 7 hundredths, 14.29 fps),
    and that rate is the one reported."""
    try:
        fps = 60 / env.get_wrapper_attr("frame_skip")
    except AttributeError:
        fps = env.metadata.get("render_fps") or 30
    if suffix == ".gif":
        fps = 100 / max(1, round(100 / fps))
    return float(fps)


def video_frame(frame: np.ndarray, min_side: int = 160) -> np.ndarray:
    """uint8 RGB [H, W, 3] that a video encoder takes and a person can see: float frames in
    [0, 1] (MinAtar renders 10x10 of them) become uint8, and small ones are scaled up by whole
    pixels. Sides are padded to even numbers, which H.264 needs."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    scale = -(-min_side // min(frame.shape[:2]))
    if scale > 1:
        frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
    return np.pad(frame, pad) if any(p[1] for p in pad) else frame


class _Mp4Writer:
    """H.264 through ffmpeg: each frame goes down ffmpeg's pipe as it comes."""

    def __init__(self, path: Path, fps: float) -> None:
        import imageio.v2 as imageio

        # H.264 needs even sides only; imageio's default (multiples of 16) would stretch
        # Atari's 210 rows to 224 and warn about it on every video.
        self._writer: Any = imageio.get_writer(path, mode="I", fps=fps, macro_block_size=2)
        self._broken = False

    def append(self, frame: np.ndarray) -> None:
        try:
            self._writer.append_data(frame)
        except BaseException:  # cut mid-write (a second Ctrl-C): imageio kills ffmpeg, the file is not playable
            self._broken = True
            raise

    def close(self) -> None:
        """Finish the file; raises where a write was cut short (the caller removes the file)."""
        self._writer.close()
        if self._broken:
            raise OSError("the film's encoder was stopped mid-frame")


class GifWriter:
    """An animated GIF written frame by frame, holding at most two frames in memory.

    Each frame is the rectangle that changed since the frame shown before it, with a
    palette of its own (quantized by Pillow, up to 256 colours), drawn over the previous
    one (disposal 1). A frame equal to the one before it only lengthens that one's
    duration: a still stretch costs a few bytes, which is why the last frame is held
    until the next differs (or the file closes).
    """

    def __init__(self, path: Path, fps: float) -> None:
        self._file = open(path, "wb")  # closed by close()
        self._centiseconds = max(1, round(100 / fps))  # GIF timing is in hundredths of a second
        self._shown: np.ndarray | None = None  # what the file shows once its frames so far are drawn
        self._held: np.ndarray | None = None  # the newest frame, its duration still growing
        self._held_cs = 0

    def append(self, frame: np.ndarray) -> None:
        """Add a uint8 [H, W, 3] frame (every frame the size of the first)."""
        still = self._held is not None and np.array_equal(frame, self._held)
        if still and self._held_cs + self._centiseconds <= _MAX_CENTISECONDS:
            self._held_cs += self._centiseconds
            return
        if self._held is not None:
            self._write_held()
        self._held, self._held_cs = np.array(frame, np.uint8, copy=True), self._centiseconds

    def close(self) -> None:
        """Write the held frame and the trailer: the file is a valid GIF however many frames it
        has. Raises where no frame was written (the caller removes the file)."""
        try:
            if self._held is not None:
                self._write_held()
            if self._shown is None:
                raise ValueError("a GIF needs at least one frame")
            self._file.write(b";")
        finally:
            self._file.close()

    def _write_held(self) -> None:
        """Write the held frame whole, or not at all: a frame cut short (Ctrl-C inside the
        encoder) is cut off the file, which then ends after the last whole frame."""
        end = self._file.tell()
        try:
            self._write_held_frame()
        except BaseException:
            self._file.truncate(end)
            self._file.seek(end)
            self._held = None
            raise

    def _write_held_frame(self) -> None:
        frame = self._held
        assert frame is not None
        if self._shown is None:  # the first frame: the header, then the whole frame
            self._file.write(_gif_header(frame.shape[1], frame.shape[0]))
            self._write_frame(frame, (0, 0), self._held_cs * 10)
            self._shown = frame.copy()
        elif frame.shape != self._shown.shape:
            raise ValueError(f"a GIF's frames share one size: {frame.shape} after {self._shown.shape}")
        else:
            top, left, bottom, right = _changed_box(self._shown, frame)
            self._write_frame(frame[top:bottom, left:right], (left, top), self._held_cs * 10)
            self._shown[top:bottom, left:right] = frame[top:bottom, left:right]
        self._held = None

    def _write_frame(self, pixels: np.ndarray, offset: tuple[int, int], duration_ms: int) -> None:
        from PIL import GifImagePlugin, Image

        # fast octree: exact for frames of up to 256 colours (env renders), 3x faster than median cut
        image = Image.fromarray(np.ascontiguousarray(pixels))
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        chunks = GifImagePlugin.getdata(image, offset, duration=duration_ms, disposal=1, include_color_table=True)
        for chunk in chunks:
            self._file.write(chunk)


_MAX_CENTISECONDS = 0xFFFF  # a frame's duration is 16 bits: a still stretch longer than 10 minutes takes two


def _gif_header(width: int, height: int) -> bytes:
    """GIF89a with no global palette (every frame brings its own), looping forever (the
    NETSCAPE2.0 extension that browsers read)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00"
    return screen + loop


def _changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pixels that differ; one pixel where none does (a
    GIF frame cannot be empty)."""
    changed = before != after  # [H, W, 3]; reduced over rows first: numpy is slow along a 3-long axis
    rows = np.flatnonzero(changed.reshape(len(changed), -1).any(axis=1))
    if rows.size == 0:
        return 0, 0, 1, 1
    band = changed[rows[0] : rows[-1] + 1]
    cols = np.flatnonzero(band.any(axis=0).any(axis=1))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def remove_partial(path: Path) -> None:
    """Delete a film that could not be closed as a valid file."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
