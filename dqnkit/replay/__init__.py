"""Replay buffers. They store arrays and sample batches; they know nothing of networks."""

from dqnkit.replay.frames import FrameReplay, PrioritizedFrameReplay
from dqnkit.replay.prioritized import PrioritizedReplay
from dqnkit.replay.sumtree import SumTree
from dqnkit.replay.uniform import Batch, UniformReplay

__all__ = ["Batch", "FrameReplay", "PrioritizedFrameReplay", "PrioritizedReplay", "SumTree", "UniformReplay"]
