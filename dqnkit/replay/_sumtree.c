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
 * Zero-width children are skipped; u past the end lands on the last non-zero leaf. */
void sumtree_find(const double *nodes, const int64_t *offsets, int64_t depth, int64_t fanout,
                  const double *prefix, int64_t n, int64_t *out) {
    for (int64_t i = 0; i < n; i++) {
        double u = prefix[i];
        int64_t node = 0;
        for (int64_t d = 1; d <= depth; d++) {
            const double *children = nodes + offsets[d] + node * fanout;
            int64_t chosen = -1, last_nonzero = 0;
            for (int64_t k = 0; k < fanout; k++) {
                if (children[k] > 0) {
                    last_nonzero = k;
                    if (u < children[k]) {
                        chosen = k;
                        break;
                    }
                    u -= children[k];
                }
            }
            if (chosen < 0) { /* rounding pushed u past this subtree: take its last leaf */
                chosen = last_nonzero;
                u = INFINITY;
            }
            node = node * fanout + chosen;
        }
        out[i] = node;
    }
}

/* Set leaves in order (a repeated index: the last value wins), re-summing each ancestor
 * from its children so that no rounding error accumulates. */
void sumtree_update(double *nodes, const int64_t *offsets, int64_t depth, int64_t fanout,
                    const int64_t *indices, const double *values, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        int64_t node = indices[i];
        nodes[offsets[depth] + node] = values[i];
        for (int64_t d = depth - 1; d >= 0; d--) {
            node /= fanout;
            const double *children = nodes + offsets[d + 1] + node * fanout;
            double sum = 0.0;
            for (int64_t k = 0; k < fanout; k++) sum += children[k];
            nodes[offsets[d] + node] = sum;
        }
    }
}

/* Built as an extension so that pip compiles it; it is loaded with ctypes, not imported. */
PyMODINIT_FUNC PyInit__sumtree_c(void) {
    PyErr_SetString(PyExc_ImportError, "dqnkit.replay._sumtree_c is loaded with ctypes, not imported");
    return NULL;
}
