"""The exact Gaussian marginal compiled as one operation: value and gradient in one call.

`fundgap.marginal.marginal_loglik` writes a Gaussian equation's marginal likelihood (county
and prefecture intercepts integrated out) as a PyTensor graph. That graph is the reference
and what the JAX backends trace, but PyTensor's numba backend compiles it and its gradient
node by node, hundreds of nodes paid again on a machine with empty caches by every model that
holds a Gaussian equation (benchmarks/README.md, "Compiling less"). Here
the same sums are one numba function with its gradient written out, cached by numba on disk
with the package (`cache=True`, compiled once per machine), wrapped as one PyTensor Op
(`GaussianMarginal`) whose gradient is an output of the same call.

With F = -2 log L - n log(2 pi) as in fundgap.marginal (w_c = 1 / (sigma^2 + n_c tau_c^2),
s_c = county sums of the residual y - Z theta, N_p = sum n_c w_c, S_p = sum s_c w_c,
D_p = 1 + tau_p^2 N_p, Q the residual sum of squares):

    F = n log sigma^2 + sum_c log(1 + n_c tau_c^2 / sigma^2) + sum_p log D_p
        + (Q - tau_c^2 sum_c w_c s_c^2) / sigma^2 - tau_p^2 sum_p S_p^2 / D_p

the gradient is taken in reverse through the prefecture sums (dF/dN_p, dF/dS_p), then the
county sums (dF/dw_c, dF/ds_c), then w_c's dependence on sigma^2 and tau_c^2 and s_c's on
theta. tests/test_marginal.py holds value and gradient to the graph's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import numba_njit, register_funcify_default_op_cache_key

_LOG_2PI = math.log(2 * math.pi)


@numba.njit(cache=True)
def gaussian_marginal(levels, n, ZtZ, Zty, yty, inner_n, inner_Z, inner_y, parent, n_outer,
                      size_values, size_counts, theta, sigma, tau_inner, tau_outer):
    """The exact marginal log likelihood of one Gaussian equation with `levels` (0, 1 or 2)
    levels of intercepts, and its gradient in theta and in (sigma, tau_inner, tau_outer).
    Arguments are fundgap.marginal.SufficientStatistics' fields; the sds may be signed."""
    k = theta.shape[0]
    s2 = sigma * sigma
    # products by loops, not BLAS: the statistics may arrive in any memory layout
    fitted = np.zeros(k)
    quadratic = yty
    for i in range(k):
        for j in range(k):
            fitted[i] += ZtZ[i, j] * theta[j]
        quadratic += theta[i] * (fitted[i] - 2.0 * Zty[i])
    logdet = n * math.log(s2)
    quad = quadratic / s2
    d_theta = 2.0 * (fitted - Zty) / s2            # dF/dtheta
    d_s2 = n / s2 - quadratic / (s2 * s2)           # dF/dsigma^2
    d_t2 = 0.0                                      # dF/dtau_inner^2
    d_o2 = 0.0                                      # dF/dtau_outer^2
    if levels >= 1:
        t2 = tau_inner * tau_inner
        for j in range(size_values.shape[0]):
            ratio = size_values[j] * t2 / s2
            logdet += size_counts[j] * math.log1p(ratio)
            d_s2 -= size_counts[j] * ratio / (s2 * (1.0 + ratio))
            d_t2 += size_counts[j] * size_values[j] / (s2 + size_values[j] * t2)
        counties = inner_n.shape[0]
        sums = inner_y.copy()
        for c in range(counties):
            for j in range(k):
                sums[c] -= inner_Z[c, j] * theta[j]
        weight = 1.0 / (s2 + inner_n * t2)
        weighted = weight * sums * sums
        total = weighted.sum()
        quad -= t2 * total / s2
        d_s2 += t2 * total / (s2 * s2)
        d_t2 -= total / s2
        d_weight = -t2 * sums * sums / s2          # dF/dw_c, prefecture part added below
        d_sums = -2.0 * t2 * weight * sums / s2    # dF/ds_c
        if levels == 2:
            o2 = tau_outer * tau_outer
            outer_n = np.zeros(n_outer)
            outer_s = np.zeros(n_outer)
            for c in range(counties):
                outer_n[parent[c]] += inner_n[c] * weight[c]
                outer_s[parent[c]] += sums[c] * weight[c]
            d_outer_n = np.empty(n_outer)
            d_outer_s = np.empty(n_outer)
            for p in range(n_outer):
                denominator = 1.0 + o2 * outer_n[p]
                share = outer_s[p] / denominator
                logdet += math.log(denominator)
                quad -= o2 * outer_s[p] * share
                d_outer_n[p] = o2 / denominator + o2 * o2 * share * share
                d_outer_s[p] = -2.0 * o2 * share
                d_o2 += outer_n[p] / denominator - share * share
            for c in range(counties):
                p = parent[c]
                d_weight[c] += d_outer_n[p] * inner_n[c] + d_outer_s[p] * sums[c]
                d_sums[c] += d_outer_s[p] * weight[c]
        for c in range(counties):
            squared = weight[c] * weight[c]
            d_s2 -= d_weight[c] * squared
            d_t2 -= d_weight[c] * inner_n[c] * squared
            for j in range(k):
                d_theta[j] -= d_sums[c] * inner_Z[c, j]
    value = -0.5 * (n * _LOG_2PI + logdet + quad)
    scales = np.array([-sigma * d_s2, -tau_inner * d_t2, -tau_outer * d_o2])
    return value, -0.5 * d_theta, scales


class GaussianMarginal(Op):
    """One Gaussian equation's exact marginal log likelihood as a PyTensor Op.

    Inputs: theta (intercept and standardised coefficients), sigma, the inner and outer
    signed sds (ignored beyond `levels`), then the sufficient statistics in
    fundgap.marginal.SufficientStatistics' order. Outputs: the value, its gradient in theta
    and in (sigma, tau_inner, tau_outer); only the value is differentiable, and its gradient
    comes from the same call.
    """

    __props__ = ("levels",)
    STATISTICS = ("n", "ZtZ", "Zty", "yty", "inner_n", "inner_Z", "inner_y", "inner_parent",
                  "n_outer", "size_values", "size_counts")

    def __init__(self, levels: int):
        self.levels = int(levels)

    def make_node(self, theta, sigma, tau_inner, tau_outer, *statistics) -> Apply:
        def real(x):
            return pt.as_tensor(x).astype("float64")

        n, ZtZ, Zty, yty, inner_n, inner_Z, inner_y, parent, n_outer, values, counts = (
            statistics)
        inputs = [real(theta), real(sigma), real(tau_inner), real(tau_outer), real(n),
                  real(ZtZ), real(Zty), real(yty), real(inner_n), real(inner_Z),
                  real(inner_y), pt.as_tensor(parent).astype("int64"),
                  pt.as_tensor(n_outer).astype("int64"), real(values), real(counts)]
        return Apply(self, inputs, [pt.dscalar(), pt.dvector(), pt.dvector()])

    def perform(self, node, inputs, outputs) -> None:
        theta, sigma, tau_inner, tau_outer, n, *statistics = inputs
        (ZtZ, Zty, yty, inner_n, inner_Z, inner_y, parent, n_outer, values,
         counts) = statistics
        results = gaussian_marginal(self.levels, float(n), ZtZ, Zty, float(yty), inner_n,
                                    inner_Z, inner_y, parent, int(n_outer), values, counts,
                                    theta, float(sigma), float(tau_inner), float(tau_outer))
        for storage, result, variable in zip(outputs, results, node.outputs, strict=True):
            storage[0] = np.asarray(result, dtype=variable.dtype)

    def infer_shape(self, fgraph, node, shapes):
        return [(), shapes[0], (3,)]

    def connection_pattern(self, node):
        differentiable = [True] * 4 + [False] * len(self.STATISTICS)
        return [[d and k == 0 for k in range(3)] for d in differentiable]

    def grad(self, inputs, output_gradients):
        for gradient in output_gradients[1:]:
            if not isinstance(gradient.type, DisconnectedType):
                raise NotImplementedError("only the marginal value is differentiable")
        _, grad_theta, grad_scales = self(*inputs)
        value_gradient = output_gradients[0]
        return [value_gradient * grad_theta,
                *(value_gradient * grad_scales[j] for j in range(3)),
                *(DisconnectedType()() for _ in self.STATISTICS)]


# bump when the kernel's arithmetic changes, so PyTensor's numba cache drops old code
KERNEL_VERSION = 1


@register_funcify_default_op_cache_key(GaussianMarginal)
def _numba_gaussian_marginal(op: GaussianMarginal, node=None, **kwargs):
    levels = op.levels

    # without fast-math, as fundgap.laplace_kernel's wrapper: the same arithmetic whether
    # numba compiled the kernel into this wrapper or loaded it from its cache
    @numba_njit(fastmath=False)
    def marginal_op(theta, sigma, tau_inner, tau_outer, n, ZtZ, Zty, yty, inner_n, inner_Z,
                    inner_y, parent, n_outer, values, counts):
        value, grad_theta, grad_scales = gaussian_marginal(
            levels, n.item(), ZtZ, Zty, yty.item(), inner_n, inner_Z, inner_y, parent,
            n_outer.item(), values, counts, theta, sigma.item(), tau_inner.item(),
            tau_outer.item())
        return np.asarray(value), grad_theta, grad_scales

    return marginal_op, KERNEL_VERSION
