"""A network's gradients as views of one flat tensor.

An update of a small MLP on the CPU is a few large matmuls and many tiny ops, and the tiny
ops cost their Python and dispatch overhead, not their arithmetic. With every gradient a view
of one flat buffer, zeroing them is one op, and gradient-norm clipping is a norm and a multiply
(``clip_grad_norm_(foreach=True)`` groups the tensors by device and dtype, takes each one's
norm and stacks them, every update). Backward accumulates into the views in place, so the
optimizer reads the same gradients as ever.
"""

from __future__ import annotations

import torch
from torch import nn


class GradBuffer:
    """The ``.grad`` of each of ``params`` as a view of :attr:`flat`.

    ``zero_`` (before each backward) zeroes the buffer and puts back any view that
    something else replaced (``optimizer.zero_grad(set_to_none=True)``, a CUDA graph's
    capture): a gradient outside the buffer would be neither zeroed nor clipped.
    """

    def __init__(self, params: list[nn.Parameter]) -> None:
        first = params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in params):
            raise ValueError("a GradBuffer holds parameters of one dtype on one device")
        self.params = params
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
        self.views = list(torch.split(self.flat, [p.numel() for p in params]))
        self.views = [view.view_as(p) for view, p in zip(self.views, params)]

    def zero_(self) -> None:
        """Every gradient to zero, in place, and each ``.grad`` its view of the buffer."""
        self.flat.zero_()
        for param, view in zip(self.params, self.views):
            if param.grad is not view:
                param.grad = view

    def clip_norm_(self, max_norm: float) -> None:
        """Scale the gradients so that their global L2 norm is at most ``max_norm``: the
        arithmetic of ``torch.nn.utils.clip_grad_norm_``, with no host sync."""
        norm = torch.linalg.vector_norm(self.flat)
        self.flat.mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0))
