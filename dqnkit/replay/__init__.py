"""Replay buffers. They store arrays and sample batches; they know nothing of networks."""

from dqnkit.replay.uniform import Batch, UniformReplay

__all__ = ["Batch", "UniformReplay"]
