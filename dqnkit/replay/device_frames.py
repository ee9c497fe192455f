"""A copy of a :class:`~dqnkit.replay.frames.FrameReplay`'s frames on the training device.

Sampling 32 stacked transitions from host memory gathers 2 x 32 x 4 frames (1.8 MB) from
random places of a multi-GB ring, and the batch then crosses to the GPU: on the H200 machine
of issue 14 that was 0.4 ms of sampling plus 0.15 ms of copying per update, about as long as
the graphed update itself. With the frames mirrored on the device, a sample sends only its
row indices ([2B, stack] int64, 2 KB) and the stacks are gathered there.

The host ring stays the one the replay owns (checkpoints, Ape-X and ``load_replay`` read it);
the mirror follows it lazily: right before a sample, the rows written since the previous
sample are uploaded in one copy. Nothing else changes: the same rows are sampled from the same
RNG, so a run gathers the same stacks either way (tests compare them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# The replay is a FrameReplay, which owns this mirror (``keep_frames_on``) and imports this
# module: read here through its public ring (``capacity``, ``frame_shape``, ``frames``,
# ``rows_since``, ``write_mark``), not imported back.
FrameRing = Any


class DeviceFrames:
    """Every frame of ``replay`` as one uint8 tensor [capacity, H, W] on ``device``."""

    def __init__(self, replay: FrameRing, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.frames = torch.zeros((replay.capacity, *replay.frame_shape), dtype=torch.uint8, device=self.device)
        self._mark: np.ndarray | None = None  # rows per env uploaded so far; None: upload the whole ring

    def invalidate(self) -> None:
        """The host ring was replaced wholesale (a checkpoint loaded): upload all of it next time."""
        self._mark = None

    def stacks(self, replay: FrameRing, rows: np.ndarray) -> torch.Tensor:
        """The frames at flat rows ``rows`` [B, stack] -> [B, stack, H, W] uint8 on the device."""
        self._sync(replay)
        return self.frames[self._upload(rows)]

    def _sync(self, replay: FrameRing) -> None:
        """Upload the rows written since the last sync (each once: ``rows_since`` counts per env)."""
        host = replay.frames.reshape(replay.capacity, *replay.frame_shape)
        if self._mark is None:
            self.frames.copy_(torch.from_numpy(host))
        else:
            rows = replay.rows_since(self._mark)
            if len(rows):
                self.frames.index_copy_(0, self._upload(rows), self._upload(host[rows]))
        self._mark = replay.write_mark()

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device. On CUDA it goes through pinned memory, non_blocking: the host
        does not wait for the update the GPU may still be running (torch's pinned-memory cache
        keeps the block until the copy has read it)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)
