/* The sum tree's two hot loops in C, called through ctypes (dqnkit/replay/sumtree.py).
 *
 * Layout shared with the numpy fallback: the levels of a `fanout`-ary tree stored one
 * after another in `nodes`; level d starts at offsets[d] and holds fanout**d nodes;
 * level 0 is the root, level `depth` the leaves.
 */
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* For each prefix sum u, the leaf i with sum(leaves[:i]) <= u < sum(leaves[:i+1]).
 * Zero-width children are skipped; u past the end lands on the last non-zero leaf.
 * Level-major order (every query descends one level before any descends the next) keeps
 * the queries' memory reads independent, so the CPU overlaps their cache misses.
 * `u` is consumed; `node` receives the leaf indices. */
void sumtree_find(const double *nodes, const int64_t *offsets, int64_t depth, int64_t fanout,
                  double *u, int64_t n, int64_t *node) {
    for (int64_t i = 0; i < n; i++) node[i] = 0;
    for (int64_t d = 1; d <= depth; d++) {
        for (int64_t i = 0; i < n; i++) {
            const double *children = nodes + offsets[d] + node[i] * fanout;
            double left = u[i];
            int64_t chosen = -1, last_nonzero = 0;
            for (int64_t k = 0; k < fanout; k++) {
                if (children[k] > 0) {
                    last_nonzero = k;
                    if (left < children[k]) {
                        chosen = k;
                        break;
                    }
                    left -= children[k];
                }
            }
            if (chosen < 0) { /* rounding pushed u past this subtree: take its last leaf */
                chosen = last_nonzero;
                left = INFINITY;
            }
            u[i] = left;
            node[i] = node[i] * fanout + chosen;
        }
    }
}

/* Set leaves in order (a repeated index: the last value wins), then re-sum every ancestor
 * from its children, level by level, so that no rounding error accumulates.
 * `scratch` (n int64) receives the ancestors' indices as the walk goes up. */
void sumtree_update(double *nodes, const int64_t *offsets, int64_t depth, int64_t fanout,
                    const int64_t *indices, const double *values, int64_t n, int64_t *scratch) {
    for (int64_t i = 0; i < n; i++) {
        nodes[offsets[depth] + indices[i]] = values[i];
        scratch[i] = indices[i];
    }
    for (int64_t d = depth - 1; d >= 0; d--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t parent = scratch[i] / fanout;
            const double *children = nodes + offsets[d + 1] + parent * fanout;
            double sum = 0.0;
            for (int64_t k = 0; k < fanout; k++) sum += children[k];
            nodes[offsets[d] + parent] = sum;
            scratch[i] = parent;
        }
    }
}

/* Built as an extension so that pip compiles it; it is loaded with ctypes, not imported. */
PyMODINIT_FUNC PyInit__sumtree_c(void) {
    PyErr_SetString(PyExc_ImportError, "dqnkit.replay._sumtree_c is loaded with ctypes, not imported");
    return NULL;
}
