"""The joint marginal of correlated Gaussian equations compiled as one operation.

`fundgap.correlated.joint_marginal_loglik` writes the likelihood as a PyTensor graph (the
reference, and what the JAX backends trace); compiled node by node with its gradient it
took minutes on a machine with empty caches. Here the same sums are one numba function
with the gradient written out (cached by numba on disk, compiled once per machine), wrapped
as one PyTensor Op whose gradient is an output of the same call, as fundgap.marginal_kernel
does for one equation.

With F = -2 log L - n K log(2 pi) (fundgap.correlated's notation: W = R - sum_c s_c s_c'/n_c,
A_s = Sigma + n_s T, H_s = A_s^-1, B_p = I + D M_p D, beta_p = D b_p, gamma_p = B_p^-1 beta_p):

    F = (n - C) log|Sigma| + tr(Sigma^-1 W) + sum_s count_s log|A_s|
        + sum_c s_c' H_c s_c / n_c + sum_p (log|B_p| - beta_p' gamma_p)

the gradient goes in reverse: dF/dB_p = B_p^-1 + gamma gamma', so dF/dM_p = D (.) D and
dF/dd_k = 2 (M D dF/dB)_kk - 2 gamma_k b_k; dF/db_p = -2 D gamma; then each county's H_c
collects s_c s_c' / n_c, n_c dF/dM_p and the symmetrised dF/db_p s_c'; each size's
dF/dA_s = count_s H_s - H_s (dF/dH_s) H_s feeds Sigma and T; the county sums s_c take
2 H_c s_c / n_c - 2 Sigma^-1 s_c / n_c + H_c dF/db_p, and theta takes
2 (Z'Z Theta - Z'Y) Sigma^-1 - Z_c' dF/ds. K x K algebra is written as loops (K is the
number of mediators): numba's LAPACK calls cost more than the arithmetic at this size.
tests/test_correlated.py holds value and gradient to the graph's.
"""

from __future__ import annotations

import math

import llvmlite.binding as llvm
import numba
import numpy as np
import pytensor.tensor as pt
from numba import types
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import numba_njit, register_funcify_default_op_cache_key

_LOG_2PI = math.log(2 * math.pi)


@numba.njit(cache=True)
def _inverse_spd(matrix, inverse, factor, lower):
    """Writes the inverse of a small symmetric positive definite matrix into `inverse` and
    returns its log-determinant (Cholesky by loops into the scratch `factor` and `lower`,
    whose upper triangles are never read; -inf where it is not positive definite, so the
    sampler rejects the point)."""
    size = matrix.shape[0]
    determinant = 1.0
    for j in range(size):
        total = matrix[j, j]
        for k in range(j):
            total -= factor[j, k] * factor[j, k]
        if not total > 0.0:
            return -np.inf
        determinant *= total                    # one log at the end: K is small
        factor[j, j] = math.sqrt(total)
        lower[j, j] = 1.0 / factor[j, j]
        for i in range(j + 1, size):
            total = matrix[i, j]
            for k in range(j):
                total -= factor[i, k] * factor[j, k]
            factor[i, j] = total * lower[j, j]
    for i in range(size):                       # lower = L^-1
        for j in range(i):
            total = 0.0
            for k in range(j, i):
                total -= factor[i, k] * lower[k, j]
            lower[i, j] = total * lower[i, i]
    for i in range(size):
        for j in range(i + 1):
            total = 0.0
            for k in range(i, size):
                total += lower[k, i] * lower[k, j]
            inverse[i, j] = total
            inverse[j, i] = total
    return math.log(determinant)


@numba.njit(cache=True)
def joint_marginal(levels, n, ZtZ, ZtY, YtY, inner_n, inner_Z, inner_Y, parent, n_outer,
                   size_values, size_counts, size_index, distinct_starts, distinct_of,
                   starts, theta, sigma, tau_inner, tau_outer):
    """The joint marginal log likelihood of K Gaussian equations with correlated errors
    (covariance `sigma`) and `levels` (0, 1 or 2) levels of independent intercepts, and its
    gradient in theta (the equations' stacked [alpha, beta_std]), sigma (symmetric) and the
    sds. Arguments are fundgap.correlated.JointStatistics' fields (`inner_Z` its
    distinct_Z) and `starts` (offsets)."""
    P, K = ZtY.shape
    bad = (-np.inf, np.zeros(P), np.zeros((K, K)), np.zeros(K), np.zeros(K))
    coefficients = np.zeros((P, K))
    for k in range(K):
        for j in range(starts[k], starts[k + 1]):
            coefficients[j, k] = theta[j]
    fitted = np.ascontiguousarray(ZtZ) @ coefficients    # Z'Z Theta
    products = YtY.copy()                        # R
    for a in range(K):
        for b in range(K):
            for j in range(P):
                products[a, b] += (coefficients[j, a] * (fitted[j, b] - ZtY[j, b])
                                   - ZtY[j, a] * coefficients[j, b])
    factor, lower = np.empty((K, K)), np.empty((K, K))
    sigma_inverse = np.empty((K, K))
    logdet_sigma = _inverse_spd(sigma, sigma_inverse, factor, lower)
    if logdet_sigma == -np.inf:
        return bad
    counties = inner_n.shape[0]
    within = products
    d_sums = np.zeros((counties, K))
    sums = np.zeros((counties, K))
    scaled = np.zeros((counties, K))
    if levels >= 1:
        within = products.copy()
        # s_c = Y_c - Z_c Theta with each distinct design block once (BLAS)
        distinct = np.zeros((inner_Z.shape[1], K))
        for k in range(K):
            base, first = distinct_starts[distinct_of[k]], starts[k]
            for j in range(starts[k + 1] - first):
                distinct[base + j, k] = theta[first + j]
        sums = inner_Y - np.ascontiguousarray(inner_Z) @ distinct
        scaled = sums / inner_n.reshape((-1, 1))     # s_c / n_c
        within -= scaled.T @ sums
    value = (n - counties) * logdet_sigma
    d_sigma = (n - counties) * sigma_inverse
    for a in range(K):
        for b in range(K):
            value += sigma_inverse[a, b] * within[a, b]
    # - Sigma^-1 W Sigma^-1
    product = sigma_inverse @ within @ sigma_inverse
    d_sigma -= product
    d_inner = np.zeros(K)                         # dF/d tau_inner^2
    d_outer = np.zeros(K)                         # dF/d tau_outer (signed)
    if levels >= 1:
        d_sums -= 2.0 * scaled @ sigma_inverse
        sizes = size_values.shape[0]
        precision = np.empty((sizes, K, K))
        d_precision = np.zeros((sizes, K, K))
        block = np.empty((K, K))
        for s in range(sizes):
            for a in range(K):
                for b in range(K):
                    block[a, b] = sigma[a, b]
                block[a, a] += size_values[s] * tau_inner[a] * tau_inner[a]
            logdet = _inverse_spd(block, precision[s], factor, lower)
            if logdet == -np.inf:
                return bad
            value += size_counts[s] * logdet
        weighted = np.zeros((counties, K))        # H_c s_c
        for c in range(counties):
            s = size_index[c]
            for a in range(K):
                total = 0.0
                for b in range(K):
                    total += precision[s, a, b] * sums[c, b]
                weighted[c, a] = total
                value += total * scaled[c, a]
                d_sums[c, a] += 2.0 * total / inner_n[c]
        # dF/dH_c = sym(u_c s_c'): u_c = s_c / n_c, plus the prefecture's dF/db_p (below)
        u = scaled.copy()
        if levels == 2:
            # per prefecture, as K x K entries over all prefectures at once (entry ab of
            # prefecture p at [a * K + b, p]): each step a loop over p that vectorises
            KK = K * K
            # M_p = sum over its counties of n_c H_c: a loop over the counties, not a dense
            # (prefectures x sizes) product, which grew with the distinct county sizes
            outer_m = np.zeros((KK, n_outer))
            for c in range(counties):
                p, s = parent[c], size_index[c]
                for a in range(K):
                    for b in range(K):
                        outer_m[a * K + b, p] += inner_n[c] * precision[s, a, b]
            outer_b = np.zeros((K, n_outer))                                    # b_p
            for c in range(counties):
                for a in range(K):
                    outer_b[a, parent[c]] += weighted[c, a]
            factor_p = np.zeros((KK, n_outer))                                  # chol(B_p)
            lower_p = np.zeros((KK, n_outer))                                   # its inverse
            determinant = np.ones(n_outer)
            step = np.empty(n_outer)
            for j in range(K):
                jj = j * K + j
                for p in range(n_outer):
                    step[p] = 1.0 + tau_outer[j] * outer_m[jj, p] * tau_outer[j]
                for k in range(j):
                    for p in range(n_outer):
                        step[p] -= factor_p[j * K + k, p] * factor_p[j * K + k, p]
                if not step.min() > 0.0:
                    return bad
                for p in range(n_outer):
                    determinant[p] *= step[p]
                    factor_p[jj, p] = math.sqrt(step[p])
                    lower_p[jj, p] = 1.0 / factor_p[jj, p]
                for i in range(j + 1, K):
                    for p in range(n_outer):
                        step[p] = tau_outer[i] * outer_m[i * K + j, p] * tau_outer[j]
                    for k in range(j):
                        for p in range(n_outer):
                            step[p] -= factor_p[i * K + k, p] * factor_p[j * K + k, p]
                    for p in range(n_outer):
                        factor_p[i * K + j, p] = step[p] * lower_p[jj, p]
            for i in range(K):
                for j in range(i):
                    for p in range(n_outer):
                        step[p] = 0.0
                    for k in range(j, i):
                        for p in range(n_outer):
                            step[p] -= factor_p[i * K + k, p] * lower_p[k * K + j, p]
                    for p in range(n_outer):
                        lower_p[i * K + j, p] = step[p] * lower_p[i * K + i, p]
            inverse_p = np.zeros((KK, n_outer))                                 # B_p^-1
            for i in range(K):
                for j in range(i + 1):
                    for k in range(i, K):
                        for p in range(n_outer):
                            inverse_p[i * K + j, p] += (lower_p[k * K + i, p]
                                                        * lower_p[k * K + j, p])
                    if j < i:
                        for p in range(n_outer):
                            inverse_p[j * K + i, p] = inverse_p[i * K + j, p]
            for p in range(n_outer):
                value += math.log(determinant[p])
            gamma = np.zeros((K, n_outer))                                      # B_p^-1 D b_p
            for a in range(K):
                for b in range(K):
                    for p in range(n_outer):
                        gamma[a, p] += inverse_p[a * K + b, p] * tau_outer[b] * outer_b[b, p]
            d_outer_b = np.empty((K, n_outer))
            for a in range(K):
                for p in range(n_outer):
                    value -= tau_outer[a] * outer_b[a, p] * gamma[a, p]
                    d_outer[a] -= 2.0 * gamma[a, p] * outer_b[a, p]
                    d_outer_b[a, p] = -2.0 * tau_outer[a] * gamma[a, p]
            # dF/dB_p = B_p^-1 + gamma gamma'; d/dd_a: 2 (M D dF/dB)_aa; dF/dM_p = D dF/dB D
            d_m = np.empty((n_outer, KK))
            for a in range(K):
                for b in range(K):
                    for p in range(n_outer):
                        d_block = inverse_p[b * K + a, p] + gamma[b, p] * gamma[a, p]
                        d_outer[a] += 2.0 * outer_m[a * K + b, p] * tau_outer[b] * d_block
                        d_m[p, a * K + b] = tau_outer[a] * d_block * tau_outer[b]
            for c in range(counties):
                p, s = parent[c], size_index[c]
                for a in range(K):
                    for b in range(K):
                        d_precision[s, a, b] += inner_n[c] * d_m[p, a * K + b]
                for a in range(K):
                    total = 0.0
                    for b in range(K):
                        total += precision[s, a, b] * d_outer_b[b, p]
                    d_sums[c, a] += total
                    u[c, a] += d_outer_b[a, p]
        # summed per size over the counties of that size; K x K products as loops: a small
        # matrix product per size (a BLAS call and a copy each) cost more than the
        # arithmetic where the data have hundreds of distinct county sizes
        for c in range(counties):
            s = size_index[c]
            for a in range(K):
                for b in range(K):
                    d_precision[s, a, b] += 0.5 * (u[c, a] * sums[c, b] + u[c, b] * sums[c, a])
        left = np.empty((K, K))
        for s in range(sizes):
            # dF/dA_s = count_s H_s - H_s dF/dH_s H_s
            for a in range(K):
                for b in range(K):
                    total = 0.0
                    for k in range(K):
                        total += precision[s, a, k] * d_precision[s, k, b]
                    left[a, b] = total
            for a in range(K):
                for b in range(K):
                    total = 0.0
                    for k in range(K):
                        total += left[a, k] * precision[s, k, b]
                    d_a = size_counts[s] * precision[s, a, b] - total
                    d_sigma[a, b] += d_a
                    if a == b:
                        d_inner[a] += size_values[s] * d_a
    # theta: 2 (Z'Z Theta - Z'Y) Sigma^-1 from R, -Z_c' dF/ds from the county sums
    d_theta = np.zeros(P)
    for k in range(K):
        for j in range(starts[k], starts[k + 1]):
            for b in range(K):
                d_theta[j] += 2.0 * (fitted[j, b] - ZtY[j, b]) * sigma_inverse[b, k]
    if levels >= 1:
        from_sums = np.ascontiguousarray(inner_Z).T @ d_sums
        for k in range(K):
            base, first = distinct_starts[distinct_of[k]], starts[k]
            for j in range(starts[k + 1] - first):
                d_theta[first + j] -= from_sums[base + j, k]
    value = -0.5 * (n * K * _LOG_2PI + value)
    return (value, -0.5 * d_theta, -0.5 * d_sigma, -0.5 * 2.0 * tau_inner * d_inner,
            -0.5 * d_outer)


class JointGaussianMarginal(Op):
    """The joint marginal of a block of correlated Gaussian equations as a PyTensor Op.

    Inputs: theta (the equations' [alpha, beta_std] stacked), the errors' covariance, the
    inner and outer sds (K-vectors; ignored beyond `levels`), then the statistics in
    fundgap.correlated.JointStatistics' order. Outputs: the value and its gradients; only
    the value is differentiable, and its gradient comes from the same call.
    """

    __props__ = ("levels", "starts")
    STATISTICS = ("n", "ZtZ", "ZtY", "YtY", "inner_n", "distinct_Z", "inner_Y",
                  "inner_parent", "n_outer", "size_values", "size_counts", "size_index",
                  "distinct_starts", "distinct_of")
    INTEGERS = ("inner_parent", "n_outer", "size_index", "distinct_starts", "distinct_of")

    def __init__(self, levels: int, starts: tuple[int, ...]):
        self.levels = int(levels)
        self.starts = tuple(int(s) for s in starts)

    def make_node(self, theta, sigma, tau_inner, tau_outer, *statistics) -> Apply:
        inputs = [pt.as_tensor(x).astype("float64") for x in (theta, sigma, tau_inner,
                                                               tau_outer)]
        for name, value in zip(self.STATISTICS, statistics, strict=True):
            kind = "int64" if name in self.INTEGERS else "float64"
            inputs.append(pt.as_tensor(value).astype(kind))
        return Apply(self, inputs, [pt.dscalar(), pt.dvector(), pt.dmatrix(), pt.dvector(),
                                    pt.dvector()])

    def perform(self, node, inputs, outputs) -> None:
        theta, sigma, tau_inner, tau_outer, *statistics = inputs
        named = dict(zip(self.STATISTICS, statistics, strict=True))
        results = joint_marginal(
            self.levels, float(named["n"]), named["ZtZ"], named["ZtY"], named["YtY"],
            named["inner_n"], named["distinct_Z"], named["inner_Y"], named["inner_parent"],
            int(named["n_outer"]), named["size_values"], named["size_counts"],
            named["size_index"], named["distinct_starts"],
            named["distinct_of"],
            np.asarray(self.starts), theta, sigma, tau_inner, tau_outer)
        for storage, result, variable in zip(outputs, results, node.outputs, strict=True):
            storage[0] = np.asarray(result, dtype=variable.dtype)

    def infer_shape(self, fgraph, node, shapes):
        return [(), shapes[0], shapes[1], shapes[2], shapes[3]]

    def connection_pattern(self, node):
        differentiable = [True] * 4 + [False] * len(self.STATISTICS)
        return [[d and k == 0 for k in range(5)] for d in differentiable]

    def grad(self, inputs, output_gradients):
        for gradient in output_gradients[1:]:
            if not isinstance(gradient.type, DisconnectedType):
                raise NotImplementedError("only the marginal value is differentiable")
        _, *gradients = self(*inputs)
        value_gradient = output_gradients[0]
        return [*(value_gradient * g for g in gradients),
                *(DisconnectedType()() for _ in self.STATISTICS)]


# bump when the kernel's arithmetic changes, so PyTensor's numba cache drops old code (the
# C entry's symbol carries the version too, so no cached caller can reach an older kernel)
KERNEL_VERSION = 3
SYMBOL = f"fundgap_joint_marginal_v{KERNEL_VERSION}"

_f8p, _i8p, _i8, _f8 = (types.CPointer(types.float64), types.CPointer(types.int64),
                        types.int64, types.float64)
# sizes P, K, counties, distinct columns, sizes, outer levels, distinct blocks, levels; n;
# the statistics; starts, theta, sigma, tau_inner, tau_outer; then the outputs: value,
# d_theta, d_sigma, d_inner, d_outer
_C_SIGNATURE = types.void(_i8, _i8, _i8, _i8, _i8, _i8, _i8, _i8, _f8,
                          _f8p, _f8p, _f8p, _f8p, _f8p, _f8p, _i8p, _f8p, _f8p, _i8p,
                          _i8p, _i8p, _i8p, _f8p, _f8p, _f8p, _f8p,
                          _f8p, _f8p, _f8p, _f8p, _f8p)


@numba.cfunc(_C_SIGNATURE, cache=True)
def _joint_c(P, K, C, columns, sizes, n_outer, blocks, levels, n,
             ZtZ, ZtY, YtY, inner_n, inner_Z, inner_Y, parent, size_values, size_counts,
             size_index, distinct_starts, distinct_of, starts, theta, sigma, tau_inner,
             tau_outer,
             value, d_theta, d_sigma, d_inner, d_outer):
    """`joint_marginal` behind a C interface (pointers and sizes; the outputs written in
    place), so the compiled operation calls it by symbol instead of compiling it again."""
    results = joint_marginal(
        levels, n, numba.carray(ZtZ, (P, P)), numba.carray(ZtY, (P, K)),
        numba.carray(YtY, (K, K)), numba.carray(inner_n, C),
        numba.carray(inner_Z, (C, columns)), numba.carray(inner_Y, (C, K)),
        numba.carray(parent, C if levels == 2 else 0), n_outer,
        numba.carray(size_values, sizes), numba.carray(size_counts, sizes),
        numba.carray(size_index, C), numba.carray(distinct_starts, blocks + 1),
        numba.carray(distinct_of, K),
        numba.carray(starts, K + 1), numba.carray(theta, P), numba.carray(sigma, (K, K)),
        numba.carray(tau_inner, K), numba.carray(tau_outer, K))
    value[0] = results[0]
    numba.carray(d_theta, P)[:] = results[1]
    numba.carray(d_sigma, (K, K))[:, :] = results[2]
    numba.carray(d_inner, K)[:] = results[3]
    numba.carray(d_outer, K)[:] = results[4]


# numba links a called function's code into its caller and optimises it again there: called
# directly, the kernel would be compiled anew into every PyTensor wrapper (each spec and
# each of its robustness variants; fundgap.laplace_kernel does the same, for the same
# reason). Called by a symbol this process maps to the cached C entry, it is compiled once
# per machine.
llvm.add_symbol(SYMBOL, _joint_c.address)
_joint_external = types.ExternalFunction(SYMBOL, _C_SIGNATURE)


@register_funcify_default_op_cache_key(JointGaussianMarginal)
def _numba_joint_marginal(op: JointGaussianMarginal, node=None, **kwargs):
    levels, starts = op.levels, np.asarray(op.starts, dtype=np.int64)

    # without fast-math, as fundgap.marginal_kernel's wrapper: the same arithmetic whether
    # numba compiled the kernel or loaded it from its cache
    @numba_njit(fastmath=False)
    def joint_op(theta, sigma, tau_inner, tau_outer, n, ZtZ, ZtY, YtY, inner_n, distinct_Z,
                 inner_Y, parent, n_outer, size_values, size_counts, size_index,
                 distinct_starts, distinct_of):
        ZtZ, ZtY, YtY = (np.ascontiguousarray(ZtZ), np.ascontiguousarray(ZtY),
                         np.ascontiguousarray(YtY))
        inner_n, distinct_Z = np.ascontiguousarray(inner_n), np.ascontiguousarray(distinct_Z)
        inner_Y, parent = np.ascontiguousarray(inner_Y), np.ascontiguousarray(parent)
        size_values = np.ascontiguousarray(size_values)
        size_counts = np.ascontiguousarray(size_counts)
        size_index = np.ascontiguousarray(size_index)
        distinct_starts = np.ascontiguousarray(distinct_starts)
        distinct_of = np.ascontiguousarray(distinct_of)
        theta, sigma = np.ascontiguousarray(theta), np.ascontiguousarray(sigma)
        tau_inner = np.ascontiguousarray(tau_inner)
        tau_outer = np.ascontiguousarray(tau_outer)
        P, K = ZtY.shape
        value, d_theta, d_sigma = np.empty(1), np.empty(P), np.empty((K, K))
        d_inner, d_outer = np.empty(K), np.empty(K)
        _joint_external(P, K, inner_n.shape[0], distinct_Z.shape[1], size_values.shape[0],
                        n_outer.item(), distinct_starts.shape[0] - 1, levels, n.item(),
                        ZtZ.ctypes, ZtY.ctypes, YtY.ctypes, inner_n.ctypes,
                        distinct_Z.ctypes, inner_Y.ctypes, parent.ctypes,
                        size_values.ctypes, size_counts.ctypes, size_index.ctypes,
                        distinct_starts.ctypes, distinct_of.ctypes, starts.ctypes,
                        theta.ctypes, sigma.ctypes, tau_inner.ctypes, tau_outer.ctypes,
                        value.ctypes, d_theta.ctypes, d_sigma.ctypes, d_inner.ctypes,
                        d_outer.ctypes)
        return np.asarray(value[0]), d_theta, d_sigma, d_inner, d_outer

    return joint_op, KERNEL_VERSION
