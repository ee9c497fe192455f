"""The DQN update as one captured CUDA graph.

Eagerly, one update of the Nature CNN launches about a hundred small kernels (forward of
both networks, the loss, backward, clipping, the fused Adam step), and at batch 32 the host
spends longer launching them than the GPU spends running them: 3.7 ms per update against
~0.6 ms of GPU work on an H200 (issue 14). Captured once and replayed, the same kernels cost
one launch.

How :class:`GraphedUpdate` keeps the arithmetic of the eager update:

- It captures the update step it is handed (``DQNAgent``'s, the function the eager path
  runs) on static device buffers, and knows only what it is handed: the step, the networks
  and optimizer whose state a warm-up changes, and the noise generator. Noisy layers draw
  inside the graph from the agent's own generator (registered with the graph, so each
  replay draws fresh noise and advances it); Adam is built ``capturable`` so its step count
  lives on the device.
- Capturing needs a few warm-up updates first (cuBLAS/cuDNN pick their kernels and
  allocate workspaces); the networks, the optimizer and the noise generator are put back
  exactly as they were afterwards, so warming up changes nothing that is learned.
- A batch enters with two host-to-device copies from pinned memory (the frames of ``obs``
  and ``next_obs`` together, and every small field packed as float64, exact for these
  values), issued ``non_blocking``: the host returns as soon as the work is queued, and goes
  on stepping envs and sampling while the GPU runs. Two pinned slots alternate, so a batch
  is never written into memory the previous copy may still be reading. Stacks a frame
  replay gathered on the device (:mod:`dqnkit.replay.device_frames`) are copied there, and
  only the small fields cross from the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from dqnkit.replay.uniform import Batch

_SMALL = ("actions", "rewards", "terminated", "horizons", "weights")  # packed as rows of one float64 [5, B]
_WARMUP = 3  # eager updates before capture, as in PyTorch's whole-network capture example


class Learner(NamedTuple):
    """What a captured update needs of the agent that owns it: its update ``step`` (a batch
    of device tensors -> a NamedTuple of tensors), the ``networks`` and ``optimizer`` whose
    state the warm-up updates change and put back, and the ``noise`` generator that noisy
    layers draw from inside the graph (None: no noisy layers)."""

    step: Callable[[Batch], Any]
    networks: Sequence[nn.Module]
    optimizer: torch.optim.Optimizer
    noise: torch.Generator | None
    device: torch.device


class GraphedUpdate:
    """``learner.step`` captured for batches of ``len(example.actions)`` transitions."""

    def __init__(self, learner: Learner, example: Batch) -> None:
        self.learner = learner
        self.batch_size = b = len(example.actions)
        obs = torch.as_tensor(example.obs[:1])  # numpy, or stacks a replay gathered on the device
        dtype = obs.dtype
        device = learner.device
        self._obs_dev = torch.empty((2 * b, *obs.shape[1:]), dtype=dtype, device=device)  # obs, then next_obs
        self._small_dev = torch.empty((len(_SMALL), b), dtype=torch.float64, device=device)
        self._obs_host = [torch.empty(self._obs_dev.shape, dtype=dtype).pin_memory() for _ in range(2)]
        self._small_host = [torch.empty(self._small_dev.shape, dtype=torch.float64).pin_memory() for _ in range(2)]
        self._copied = [torch.cuda.Event(), torch.cuda.Event()]
        self._slot = 0
        self._copy_in(example)
        self.graph, self._out = self._capture()

    def __call__(self, batch: Batch) -> Any:
        """Queue one update on ``batch``; returns without waiting for the GPU."""
        self._copy_in(batch)
        self.graph.replay()
        # The graph writes its outputs to the same memory on every replay: hand out copies.
        return type(self._out)(*(t.clone() for t in self._out))

    # ------------------------------------------------------------------ internals
    def _copy_in(self, batch: Batch) -> None:
        slot, b = self._slot, self.batch_size
        self._slot ^= 1
        self._copied[slot].synchronize()  # the copy that last read this pinned slot has finished
        small_host = self._small_host[slot].numpy()
        for row, name in enumerate(_SMALL):
            small_host[row] = getattr(batch, name)
        if torch.is_tensor(batch.obs):  # gathered on the device already (DeviceFrames)
            self._obs_dev[:b].copy_(batch.obs)
            self._obs_dev[b:].copy_(batch.next_obs)
        else:
            obs_host = self._obs_host[slot].numpy()
            obs_host[:b], obs_host[b:] = batch.obs, batch.next_obs
            self._obs_dev.copy_(self._obs_host[slot], non_blocking=True)
        self._small_dev.copy_(self._small_host[slot], non_blocking=True)
        self._copied[slot].record()

    def _static_batch(self) -> Batch:
        """The device buffers as the batch of tensors the step takes (conversions are captured too)."""
        b, small = self.batch_size, self._small_dev
        return Batch(
            self._obs_dev[:b],
            small[0].long(),
            small[1].float(),
            self._obs_dev[b:],
            small[2].float(),
            small[3].long(),
            small[4].float(),
            None,
        )

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, Any]:
        learner = self.learner
        saved = _Saved(learner)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(_WARMUP):
                    learner.step(self._static_batch())
            torch.cuda.current_stream().wait_stream(side)
        finally:
            saved.restore()
        graph = torch.cuda.CUDAGraph()
        if learner.noise is not None:
            graph.register_generator_state(learner.noise)
        learner.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            out = learner.step(self._static_batch())
        return graph, out


class _Saved:
    """The state warm-up updates change, copied so that it can be put back in place (the
    tensors must stay the same objects: the graph records their addresses)."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.nets = [{k: v.clone() for k, v in net.state_dict().items()} for net in learner.networks]
        self.optim = {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
            for p, state in learner.optimizer.state.items()
        }
        self.noise = None if learner.noise is None else learner.noise.get_state()

    def restore(self) -> None:
        learner = self.learner
        torch.cuda.synchronize()
        for net, state in zip(learner.networks, self.nets):
            net.load_state_dict(state)  # copies into the existing tensors
        for p, state in learner.optimizer.state.items():
            before = self.optim.get(id(p))
            for key, value in state.items():
                if not torch.is_tensor(value):
                    continue
                if before is None:  # created by the warm-up: zero, as in a fresh Adam
                    value.zero_()
                else:
                    value.copy_(before[key])
        if learner.noise is not None:
            learner.noise.set_state(self.noise)
        learner.optimizer.zero_grad(set_to_none=True)


class GraphedAct:
    """The greedy actions of ``q_values`` (observations on the device -> Q [B, A], the
    agent's forward pass) for batches of ``len(example)`` observations,
    captured once: acting runs the Q-network's forward pass every env step, and eagerly that
    is a dozen small kernel launches, plus the copy of every Q-value back to the host. Here it
    is one pinned copy in, one graph replay and ``B`` action indices back.

    It reads the network's parameters where they are, so it follows every update (the
    optimizer and ``load_state_dict`` write into the same tensors). Noisy networks act
    eagerly: their noise is redrawn before every acting step, outside any graph.
    """

    def __init__(self, q_values: Callable[[torch.Tensor], torch.Tensor], device: torch.device, example: np.ndarray):
        self.q_values = q_values
        self.batch_size = len(example)
        obs = torch.from_numpy(np.ascontiguousarray(example))
        self._obs_host = torch.empty_like(obs).pin_memory()
        self._obs_dev = obs.to(device)
        self._actions_host = torch.empty(self.batch_size, dtype=torch.int64).pin_memory()
        self.graph, self._q, self._actions = self._capture()
        with torch.no_grad():  # the graph must compute what the eager forward pass computes
            eager = q_values(self._obs_dev)
        self.graph.replay()
        # loose: should cuDNN pick another kernel, TF32 rounds differently; a broken graph is far off
        if not torch.allclose(self._q, eager, rtol=1e-2, atol=1e-3):
            raise RuntimeError("the captured forward pass disagrees with the eager one")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions [B] int64 for observations [B, *obs_shape]."""
        # The previous call waited for its copies, so the pinned buffers are free to reuse.
        self._obs_host.numpy()[...] = obs
        self._obs_dev.copy_(self._obs_host, non_blocking=True)
        self.graph.replay()
        self._actions_host.copy_(self._actions, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return self._actions_host.numpy().copy()

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(_WARMUP):  # a forward pass changes no state: nothing to put back
                self.q_values(self._obs_dev)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            q = self.q_values(self._obs_dev)
            actions = q.argmax(dim=1)
        return graph, q, actions
