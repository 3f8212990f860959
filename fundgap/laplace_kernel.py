"""The Laplace form compiled as one operation: mode search, value and exact gradient.

`fundgap.laplace.laplace_terms` writes the nested Laplace approximation as a PyTensor graph
(a while loop for the mode, one differentiated Newton step, the second-order term) and lets
PyTensor differentiate it. That graph is the reference, and the only form a JAX backend can
trace, but numba compiles it node by node, per equation, on a machine with empty caches
and every time the data change (benchmarks/README.md has the seconds). Here the same
approximation is one numba function, written once, cached by numba on disk with the package
(`cache=True`), and wrapped as one PyTensor Op (`LaplaceMarginal`) whose gradient is an
output of the same call.

For campaign i in county c in prefecture p, eta_i = f_i + tau_c u_c + tau_p v_p (u, v
standard-normal intercepts, tau the signed sds; one grouping is tau_p = 0 with a single
prefecture). At the mode (u*, v*), with H = I + J'WJ (W the campaigns' curvature, summed by
county: A_c = 1 + tau_c^2 W_c, B_c = tau_c tau_p W_c, Schur S_p = 1 + tau_p^2 W_p - sum
B_c^2 / A_c),

    V = sum_i log p(y_i | eta_i) - |u|^2 / 2 - |v|^2 / 2 - log det H / 2 + C2,

C2 the expansion's next term (laplace._second_order). Its gradient in theta = (f, tau,
the family's own parameter) is the partial one at fixed (u*, v*) plus, by the implicit
function theorem, lambda' dg/dtheta with lambda = H^-1 dV/dz (one more block-arrowhead
solve): the exact gradient of the approximation, as the graph's differentiated Newton step
gives it. The partial derivatives of log det H and C2 are taken in reverse order through
their county and prefecture sums by hand (`_phi`), which needs each family's log density
differentiated five times in eta and once more in its own parameter (fundgap.laplace_jets);
tests/test_laplace_kernel.py checks value and gradient against the graph.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
import pytensor.tensor as pt
from numba import types
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import numba_njit, register_funcify_default_op_cache_key

from fundgap.laplace_jets import (
    FACTORED_CODES,
    FACTORED_LIMIT,
    _campaign_gradient,
    _constants,
    _count_tables,
    _factored_gradient,
    _factored_mode_sums,
    _factored_sums,
    _mode_sums,
    _shifts,
    _sums,
)

# Newton iterations for the mode: at most this many, stopping when no linear predictor moves
# more than TOLERANCE (the full step after it squares the error); each step moves no linear
# predictor by more than MAX_STEP, so a count far above its start cannot overshoot.
MAX_ITERATIONS = 50
TOLERANCE = 1e-8
MAX_STEP = 1.0
@numba.njit(cache=True)
def _predictor(f, tau1, tau2, u, v, inner, parent, eta):
    for i in range(len(f)):
        c = inner[i]
        eta[i] = f[i] + tau1 * u[c] + tau2 * v[parent[c]]


@numba.njit(cache=True)
def _solve(A, B, schur, parent, right_inner, right_outer, x_inner, x_outer):
    """x = H^-1 (right_inner, right_outer) for the block-arrowhead H (county diagonal A,
    county-prefecture coupling B, prefecture Schur complements)."""
    x_outer[:] = right_outer
    for c in range(len(A)):
        x_outer[parent[c]] -= B[c] * right_inner[c] / A[c]
    x_outer /= schur
    for c in range(len(A)):
        x_inner[c] = (right_inner[c] - B[c] * x_outer[parent[c]]) / A[c]


@numba.njit(cache=True)
def _blocks(tau1, tau2, weight, parent, n_outer, A, B, schur, outer_weight):
    outer_weight[:] = 0.0
    schur[:] = 1.0
    for c in range(len(weight)):
        A[c] = 1 + tau1 * tau1 * weight[c]
        B[c] = tau1 * tau2 * weight[c]
        outer_weight[parent[c]] += weight[c]
        schur[parent[c]] -= B[c] * B[c] / A[c]
    for p in range(n_outer):
        schur[p] += tau2 * tau2 * outer_weight[p]


@numba.njit(cache=True)
def _newton_step(tau1, tau2, u, v, first, weight, parent, n_outer, A, B, schur,
                 step_inner, step_outer):
    """The Newton step at (u, v) from the county sums; returns the largest change it makes
    to a linear predictor."""
    outer_weight = np.empty(n_outer)
    _blocks(tau1, tau2, weight, parent, n_outer, A, B, schur, outer_weight)
    gradient_inner = tau1 * first - u
    outer_first = np.zeros(n_outer)
    for c in range(len(first)):
        outer_first[parent[c]] += first[c]
    gradient_outer = tau2 * outer_first - v
    _solve(A, B, schur, parent, gradient_inner, gradient_outer, step_inner, step_outer)
    change = 0.0
    for c in range(len(u)):
        change = max(change, abs(tau1 * step_inner[c]))
    for p in range(n_outer):
        change = max(change, abs(tau2 * step_outer[p]))
    return change


@numba.njit(cache=True)
def bounded(term):
    """The expansion's next term as the approximation uses it: term / sqrt(1 + term^2), per
    independent block (a prefecture with its counties; a county where there is one grouping).
    Where a block carries information (the term small) this is the term to its own order;
    where it carries almost none (a county holding one binary response, its mode in the flat
    tail of a monotone likelihood) the term grows with the sd without bound, and a sampler
    follows it off to sds of hundreds, so it is bounded in (-1, 1) (log 1 + x, whose
    first-order term it is, would be unbounded below)."""
    return term / np.sqrt(1 + term * term)


@numba.njit(cache=True)
def bounded_slope(term):
    return (1 + term * term) ** -1.5


@numba.njit(cache=True)
def _phi(tau1, tau2, weight, outer_weight, third, fourth, A, B, schur, parent, n_outer,
         correct):
    """-log det H / 2 + C2 from the county sums (and the prefecture sums of the weight, as
    `_blocks` left them), and its partial derivatives in the county sums (weight, third,
    fourth) and in the two sds, by reverse accumulation."""
    n_inner = len(weight)
    logdet = np.sum(np.log(A)) + np.sum(np.log(schur))
    value = -0.5 * logdet
    bar_A = -0.5 / A
    bar_schur = -0.5 / schur
    bar_B = np.zeros(n_inner)
    bar_weight = np.zeros(n_inner)
    bar_third = np.zeros(n_inner)
    bar_fourth = np.zeros(n_inner)
    bar_tau1 = 0.0
    bar_tau2 = 0.0
    if correct:
        own = tau1 * tau1 / A
        load = tau2 - tau1 * B / A
        s = schur[parent]
        var = own + load * load / s
        rank = np.zeros(n_outer)
        cube = np.zeros(n_outer)
        for c in range(n_inner):
            rank[parent[c]] += third[c] * var[c] * load[c]
            cube[parent[c]] += third[c] * load[c] ** 3
        # each prefecture's term (its counties' own and its cross terms), then bounded
        block = rank**2 / schur / 8 + cube**2 / schur**3 / 12
        own_terms = (fourth * var**2 / 8 + (third * var) ** 2 * own / 8
                     + third**2 * var**3 / 12 - third**2 * load**6 / s**3 / 12)
        for c in range(n_inner):
            block[parent[c]] += own_terms[c]
        value += np.sum(bounded(block))
        slope = bounded_slope(block)                # d bounded / d block, per prefecture
        weight_c = slope[parent]
        bar_rank = slope * rank / schur / 4
        bar_cube = slope * cube / schur**3 / 6
        bar_schur += slope * (-(rank / schur) ** 2 / 8 - cube**2 / schur**4 / 4)
        bar_var = weight_c * (fourth * var / 4 + third**2 * var * own / 4
                              + third**2 * var**2 / 4)
        bar_own = weight_c * third**2 * var**2 / 8
        bar_fourth[:] = weight_c * var**2 / 8
        bar_third[:] = weight_c * (third * var**2 * own / 4 + third * var**3 / 6
                                   - third * load**6 / s**3 / 6)
        bar_load = -weight_c * third**2 * load**5 / s**3 / 2
        bar_s = weight_c * third**2 * load**6 / s**4 / 4
        for c in range(n_inner):
            p = parent[c]
            bar_third[c] += bar_rank[p] * var[c] * load[c] + bar_cube[p] * load[c] ** 3
            bar_var[c] += bar_rank[p] * third[c] * load[c]
            bar_load[c] += (bar_rank[p] * third[c] * var[c]
                            + 3 * bar_cube[p] * third[c] * load[c] ** 2)
        bar_own += bar_var
        bar_load += bar_var * 2 * load / s
        bar_s -= bar_var * load**2 / s**2
        for c in range(n_inner):
            bar_schur[parent[c]] += bar_s[c]
        bar_tau2 += np.sum(bar_load)
        bar_tau1 += np.sum(-bar_load * B / A + bar_own * 2 * tau1 / A)
        bar_B += -bar_load * tau1 / A
        bar_A += bar_load * tau1 * B / A**2 - bar_own * tau1 * tau1 / A**2
    # schur_p = 1 + tau2^2 W_p - sum_c B_c^2 / A_c;  A = 1 + tau1^2 W;  B = tau1 tau2 W
    bar_tau2 += np.sum(bar_schur * 2 * tau2 * outer_weight)
    for c in range(n_inner):
        p = parent[c]
        bar_weight[c] += bar_schur[p] * tau2 * tau2
        bar_B[c] -= bar_schur[p] * 2 * B[c] / A[c]
        bar_A[c] += bar_schur[p] * B[c] ** 2 / A[c] ** 2
    bar_tau1 += np.sum(bar_B * tau2 * weight + bar_A * 2 * tau1 * weight)
    bar_tau2 += np.sum(bar_B * tau1 * weight)
    bar_weight += bar_B * tau1 * tau2 + bar_A * tau1 * tau1
    return value, bar_weight, bar_third, bar_fourth, bar_tau1, bar_tau2


@numba.njit(cache=True)
def laplace_marginal(code, correct, y, f, tau1, tau2, aux, inner, parent, n_outer,
                     max_iterations, tolerance, max_step):
    """The Laplace approximation of log p(y | theta) for one equation and its gradient.

    Returns (value, d/df per campaign, d/d(tau_inner, tau_outer), d/d aux, u*, v*, A, B,
    Schur, Newton steps taken, the last step's largest change to a linear predictor).
    """
    n, n_inner = len(y), len(parent)
    u, v = np.zeros(n_inner), np.zeros(n_outer)
    eta, first, weight = np.empty(n), np.empty(n_inner), np.empty(n_inner)
    A, B, schur = np.empty(n_inner), np.empty(n_inner), np.empty(n_outer)
    step_inner, step_outer = np.empty(n_inner), np.empty(n_outer)
    iterations = 0
    factored = code in FACTORED_CODES and np.max(np.abs(f)) <= FACTORED_LIMIT
    exp_f = np.exp(f) if factored else np.empty(0)
    shift = np.empty(n_inner)
    # the search: damped Newton from zero, each county's curvature kept non-negative (these
    # families' curvatures are positive: no clip needed in the factored pass)
    for _ in range(max_iterations):
        if not (factored and _factored_sums(code, y, exp_f, tau1, tau2, u, v, inner, parent,
                                            aux, shift, first, weight)):
            _predictor(f, tau1, tau2, u, v, inner, parent, eta)
            _sums(code, y, eta, aux, inner, n_inner, first, weight)
        change = _newton_step(tau1, tau2, u, v, first, weight, parent, n_outer, A, B, schur,
                              step_inner, step_outer)
        damping = min(1.0, max_step / max(change, 1e-300))
        u += damping * step_inner
        v += damping * step_outer
        iterations += 1
        if damping * change < tolerance:
            break
    # Newton's error is quadratic: after a step below the tolerance the mode is exact to
    # rounding; that step's size is the residual the fit's gate checks
    residual = damping * change

    # at the mode: per county, the sums of its campaigns' jets; H's blocks
    _predictor(f, tau1, tau2, u, v, inner, parent, eta)
    # the written-out passes where the mode's county shifts are in range too
    factored = factored and _shifts(tau1, tau2, u, v, parent, shift)
    if factored:
        sums = _factored_mode_sums(code, y, f, exp_f, shift, inner, aux,
                                   _constants(code, aux), _count_tables(code, aux, y),
                                   tau1 * u + tau2 * v[parent])
    else:
        sums = _mode_sums(code, y, eta, aux, inner, n_inner)
    first[:] = sums[:, 1]
    weight[:] = -sums[:, 2]
    outer_weight = np.empty(n_outer)
    _blocks(tau1, tau2, weight, parent, n_outer, A, B, schur, outer_weight)
    third, fourth = sums[:, 3].copy(), sums[:, 4].copy()
    phi, bar_weight, bar_third, bar_fourth, bar_tau1, bar_tau2 = _phi(
        tau1, tau2, weight, outer_weight, third, fourth, A, B, schur, parent, n_outer, correct)
    value = np.sum(sums[:, 0]) - 0.5 * (np.sum(u * u) + np.sum(v * v)) + phi

    # dPhi / d eta_i is -bar_weight d3 + bar_third d4 + bar_fourth d5 (the county's factors
    # times the campaign's eta-derivatives d_k), so its county sums come from the jets';
    # then dV/dz = J' that (the log joint's own z-gradient is zero at the mode) and
    # lambda = H^-1 dV/dz
    phi_county = -bar_weight * sums[:, 3] + bar_third * sums[:, 4] + bar_fourth * sums[:, 5]
    right_inner, right_outer = tau1 * phi_county, np.zeros(n_outer)
    for c in range(n_inner):
        right_outer[parent[c]] += tau2 * phi_county[c]
    adjoint_inner, adjoint_outer = np.empty(n_inner), np.empty(n_outer)
    _solve(A, B, schur, parent, right_inner, right_outer, adjoint_inner, adjoint_outer)

    # dV/dtheta = partial at the mode + adjoint' dg/dtheta (g the log joint's z-gradient);
    # in the sds and the family's parameter through county sums, in f per campaign
    zeta = tau1 * adjoint_inner + tau2 * adjoint_outer[parent]
    county_grad = sums[:, 1] + phi_county + sums[:, 2] * zeta     # sum of dV/df_i by county
    grad_tau = np.zeros(2)
    outer_first = np.zeros(n_outer)
    for c in range(n_inner):
        outer_first[parent[c]] += first[c]
        grad_tau[0] += adjoint_inner[c] * first[c] + county_grad[c] * u[c]
        grad_tau[1] += county_grad[c] * v[parent[c]]
    for p in range(n_outer):
        grad_tau[1] += adjoint_outer[p] * outer_first[p]
    grad_tau[0] += bar_tau1
    grad_tau[1] += bar_tau2
    grad_aux = np.zeros(len(aux))
    if len(aux):
        # the county curvature is minus the summed second derivative
        grad_aux[0] = np.sum(sums[:, 6] + sums[:, 7] * zeta - bar_weight * sums[:, 8]
                             + bar_third * sums[:, 9] + bar_fourth * sums[:, 10])
    grad_f = np.empty(n)
    if factored:
        _factored_gradient(code, y, exp_f, shift, inner, aux, bar_weight, bar_third,
                           bar_fourth, zeta, grad_f)
    else:
        _campaign_gradient(code, y, eta, aux, inner, bar_weight, bar_third, bar_fourth, zeta,
                           grad_f)
    return (value, grad_f, grad_tau, grad_aux, u, v, A, B, schur, iterations, residual)


class LaplaceMarginal(Op):
    """One equation's Laplace marginal log likelihood as a PyTensor Op.

    Inputs: y, the fixed part of the linear predictor f, the inner and outer signed sds,
    the family's own parameters (a vector, empty for none), each campaign's county, each
    county's prefecture, the number of prefectures. Outputs: the value, its gradient in f,
    in the two sds and in the family's parameters, then u*, v*, A, B, the Schur complements,
    the Newton steps taken and the residual (what `laplace.add_laplace_likelihood` keeps
    per draw). Only the value is differentiable; its gradient is the Op's own output, so a
    logp-and-gradient function calls the kernel once.
    """

    __props__ = ("family_code", "correct")

    def __init__(self, family_code: int, correct: bool):
        self.family_code = int(family_code)
        self.correct = bool(correct)

    def make_node(self, y, f, tau_inner, tau_outer, aux, inner, parent, n_outer) -> Apply:
        inputs = [pt.as_tensor(y).astype("float64"), pt.as_tensor(f).astype("float64"),
                  pt.as_tensor(tau_inner).astype("float64"),
                  pt.as_tensor(tau_outer).astype("float64"),
                  pt.as_tensor(aux).astype("float64"), pt.as_tensor(inner).astype("int64"),
                  pt.as_tensor(parent).astype("int64"), pt.as_tensor(n_outer).astype("int64")]
        vector = pt.dvector
        outputs = [pt.dscalar(), vector(), vector(), vector(), vector(), vector(), vector(),
                   vector(), vector(), pt.lscalar(), pt.dscalar()]
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, outputs) -> None:
        y, f, tau_inner, tau_outer, aux, inner, parent, n_outer = inputs
        results = laplace_marginal(self.family_code, self.correct, y, f, float(tau_inner),
                                   float(tau_outer), aux, inner, parent, int(n_outer),
                                   MAX_ITERATIONS, TOLERANCE, MAX_STEP)
        for storage, result, variable in zip(outputs, results, node.outputs, strict=True):
            storage[0] = np.asarray(result, dtype=variable.dtype)

    def infer_shape(self, fgraph, node, shapes):
        y, _, _, _, aux, _, parent, _ = shapes
        n_outer = node.inputs[7]
        return [(), y, (2,), aux, parent, (n_outer,), parent, parent, (n_outer,), (), ()]

    def connection_pattern(self, node):
        # the value depends on f, the sds and the family's parameters; the rest are
        # returned for the intercepts' conditional draws, not differentiated
        differentiable = [False, True, True, True, True, False, False, False]
        return [[d and k == 0 for k in range(len(node.outputs))] for d in differentiable]

    def grad(self, inputs, output_gradients):
        for gradient in output_gradients[1:]:
            if not isinstance(gradient.type, DisconnectedType):
                raise NotImplementedError("only the Laplace value is differentiable")
        outputs = self(*inputs)
        value_gradient = output_gradients[0]
        disconnected = [DisconnectedType()() for _ in range(3)]
        return [DisconnectedType()(), value_gradient * outputs[1],
                value_gradient * outputs[2][0], value_gradient * outputs[2][1],
                value_gradient * outputs[3], *disconnected]


# bump when the kernel's arithmetic changes, so PyTensor's numba cache drops old code (the
# C entry's symbol carries the version too, so no cached caller can reach an older kernel)
KERNEL_VERSION = 11
SYMBOL = f"fundgap_laplace_marginal_v{KERNEL_VERSION}"

_f8p, _i8p, _i8, _f8 = (types.CPointer(types.float64), types.CPointer(types.int64),
                        types.int64, types.float64)
# code, correct, y, f, n, tau_inner, tau_outer, aux, n_aux, inner, parent, n_inner, n_outer,
# then the outputs: value, grad_f, grad_tau, grad_aux, u, v, A, B, schur, iterations, residual
_C_SIGNATURE = types.void(_i8, _i8, _f8p, _f8p, _i8, _f8, _f8, _f8p, _i8, _i8p, _i8p, _i8,
                          _i8, _f8p, _f8p, _f8p, _f8p, _f8p, _f8p, _f8p, _f8p, _f8p, _i8p,
                          _f8p)


@numba.cfunc(_C_SIGNATURE, cache=True)
def _laplace_c(code, correct, y, f, n, tau_inner, tau_outer, aux, n_aux, inner, parent,
               n_inner, n_outer, value, grad_f, grad_tau, grad_aux, u, v, A, B, schur,
               iterations, residual):
    """`laplace_marginal` behind a C interface (pointers and sizes; the outputs written in
    place), so the compiled operation calls it by symbol instead of compiling it again."""
    results = laplace_marginal(
        code, correct != 0, numba.carray(y, n), numba.carray(f, n), tau_inner, tau_outer,
        numba.carray(aux, n_aux), numba.carray(inner, n), numba.carray(parent, n_inner),
        n_outer, MAX_ITERATIONS, TOLERANCE, MAX_STEP)
    value[0] = results[0]
    for target, source, size in ((grad_f, results[1], n), (grad_tau, results[2], 2),
                                 (grad_aux, results[3], n_aux), (u, results[4], n_inner),
                                 (v, results[5], n_outer), (A, results[6], n_inner),
                                 (B, results[7], n_inner), (schur, results[8], n_outer)):
        out = numba.carray(target, size)
        out[:] = source
    iterations[0] = results[9]
    residual[0] = results[10]


# numba links a called function's code into its caller and optimises it again there: called
# directly, the kernel was compiled anew into every PyTensor wrapper, every function holding
# one and nutpie's callbacks (benchmarks/README.md, "Compiling less"). Called
# by a symbol that this process maps to the cached C entry, it is compiled once per machine,
# and code that PyTensor or nutpie cached on disk finds it again by name.
llvm.add_symbol(SYMBOL, _laplace_c.address)
_laplace_external = types.ExternalFunction(SYMBOL, _C_SIGNATURE)


@register_funcify_default_op_cache_key(LaplaceMarginal)
def _numba_laplace(op: LaplaceMarginal, node=None, **kwargs):
    code, correct = op.family_code, int(op.correct)

    # without fast-math: the kernel's arithmetic must not depend on how this wrapper was built
    @numba_njit(fastmath=False)
    def laplace_op(y, f, tau_inner, tau_outer, aux, inner, parent, n_outer):
        y, f = np.ascontiguousarray(y), np.ascontiguousarray(f)
        aux, inner = np.ascontiguousarray(aux), np.ascontiguousarray(inner)
        parent = np.ascontiguousarray(parent)
        n, n_aux, n_inner, outer = len(y), len(aux), len(parent), n_outer.item()
        value, grad_f, grad_tau = np.empty(1), np.empty(n), np.empty(2)
        grad_aux, u, v = np.empty(n_aux), np.empty(n_inner), np.empty(outer)
        A, B, schur = np.empty(n_inner), np.empty(n_inner), np.empty(outer)
        iterations, residual = np.empty(1, np.int64), np.empty(1)
        _laplace_external(code, correct, y.ctypes, f.ctypes, n, tau_inner.item(),
                          tau_outer.item(), aux.ctypes, n_aux, inner.ctypes, parent.ctypes,
                          n_inner, outer, value.ctypes, grad_f.ctypes, grad_tau.ctypes,
                          grad_aux.ctypes, u.ctypes, v.ctypes, A.ctypes, B.ctypes,
                          schur.ctypes, iterations.ctypes, residual.ctypes)
        return (np.asarray(value[0]), grad_f, grad_tau, grad_aux, u, v, A, B, schur,
                np.asarray(iterations[0]), np.asarray(residual[0]))

    return laplace_op, KERNEL_VERSION
