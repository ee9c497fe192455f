"""A wide, array-backed sum tree with batch ``find`` and ``update``.

Each node sums ``fanout`` children, so a 1M-leaf tree with fanout 16 is 5 levels deep
instead of 20. The two hot loops run in a small C library (``_sumtree.c``, compiled at
install time, called through ctypes); where it could not be built, the same tree is
walked with numpy one *level* at a time for the whole batch (Dopamine's approach, made
wide). Both are checked against a brute-force cumulative sum in the tests; the measured
speed of each is in the README (``dqnkit bench replay``).

Layout: the levels are stored one after another in ``nodes`` (``levels[d]`` is a view,
``fanout**d`` long; ``levels[0]`` the root, ``levels[-1]`` the leaves, zero-padded).
"""

from __future__ import annotations

import ctypes
import importlib.util

import numpy as np


def _load_c() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("dqnkit.replay._sumtree_c")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(spec.origin)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.sumtree_find.argtypes = [ptr, ptr, i64, i64, ptr, i64, ptr]
    lib.sumtree_update.argtypes = [ptr, ptr, i64, i64, ptr, ptr, i64, ptr]
    lib.sumtree_find.restype = lib.sumtree_update.restype = None
    return lib


_C = _load_c()


class SumTree:
    """Sums over non-negative leaf values; ``find`` maps prefix sums to leaves."""

    def __init__(self, capacity: int, fanout: int = 16, use_c: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if fanout < 2:
            raise ValueError(f"fanout must be >= 2, got {fanout}")
        self.capacity, self.fanout = int(capacity), int(fanout)
        self.depth = 1
        while fanout**self.depth < capacity:
            self.depth += 1
        sizes = [fanout**d for d in range(self.depth + 1)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.nodes = np.zeros(self.offsets[-1], dtype=np.float64)
        self.levels = [self.nodes[self.offsets[d] : self.offsets[d + 1]] for d in range(self.depth + 1)]
        self._c = _C if use_c else None
        self._nodes_ptr, self._offsets_ptr = self.nodes.ctypes.data, self.offsets.ctypes.data  # fixed buffers

    @property
    def total(self) -> float:
        """The sum of all priorities (the root)."""
        return float(self.levels[0][0])

    @property
    def leaves(self) -> np.ndarray:
        """The priorities themselves: a view of the bottom level [fanout ** depth], zero past capacity."""
        return self.levels[-1]

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values at ``indices``."""
        return self.leaves[np.asarray(indices)]

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``indices`` to ``values``; with duplicate indices the last one wins.

        Duplicates are removed at the leaves: numpy does not promise which of two values
        written to one element by a single fancy assignment lands. Parents need no such care:
        a parent listed twice is written twice with the same freshly summed value.
        """
        indices = np.asarray(indices, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if indices.size == 0:
            return
        if indices.min() < 0 or indices.max() >= self.capacity:
            raise IndexError("sum tree index out of range")
        if (values < 0).any() or not np.isfinite(values).all():
            raise ValueError("sum tree values must be finite and non-negative")
        if self._c is not None:
            indices, values = np.ascontiguousarray(indices), np.ascontiguousarray(values)
            scratch = np.empty_like(indices)
            self._c.sumtree_update(
                self._nodes_ptr,
                self._offsets_ptr,
                self.depth,
                self.fanout,
                indices.ctypes.data,
                values.ctypes.data,
                indices.size,
                scratch.ctypes.data,
            )
            return
        last, pos = np.unique(indices[::-1], return_index=True)  # last occurrence of each index
        self.leaves[last] = values[::-1][pos]
        nodes = last
        for depth in range(self.depth - 1, -1, -1):
            nodes = nodes // self.fanout
            children = self.levels[depth + 1].reshape(-1, self.fanout)
            self.levels[depth][nodes] = children[nodes].sum(axis=1)

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (after loading leaves from a checkpoint)."""
        for depth in range(self.depth - 1, -1, -1):
            self.levels[depth][:] = self.levels[depth + 1].reshape(-1, self.fanout).sum(axis=1)

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """For each u, the leaf i with sum(leaves[:i]) <= u < sum(leaves[:i+1]). [B]

        Zero-width leaves are never returned; u at or above ``total`` (float rounding)
        lands on the last non-zero leaf.
        """
        u = np.array(prefix_sums, dtype=np.float64)  # a copy: the numpy walk consumes it
        nodes = np.zeros(u.shape, dtype=np.int64)
        if self._c is not None:
            self._c.sumtree_find(
                self._nodes_ptr, self._offsets_ptr, self.depth, self.fanout, u.ctypes.data, u.size, nodes.ctypes.data
            )
            return nodes
        rows = np.arange(u.size)
        for level in self.levels[1:]:
            children_BK = level.reshape(-1, self.fanout)[nodes]
            csum_BK = np.cumsum(children_BK, axis=1)
            child = (csum_BK <= u[:, None]).sum(axis=1)  # children wholly below u
            last_nonzero = self.fanout - 1 - np.argmax(children_BK[:, ::-1] > 0, axis=1)
            child = np.minimum(child, last_nonzero)
            u -= csum_BK[rows, child] - children_BK[rows, child]
            nodes = nodes * self.fanout + child
        return nodes
