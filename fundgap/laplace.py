"""The Laplace form: county and prefecture intercepts integrated out of a non-Gaussian
equation's likelihood by a nested Laplace approximation.

With non-centred intercepts u_county = tau_c z_c and u_prefecture = tau_p z_p (z standard
normal a priori) and eta = eta_fixed + tau_c z_c[county] + tau_p z_p[prefecture],

    log p(y | theta) = log int p(y | eta(z)) N(z; 0, I) dz
                    ~ log p(y | eta(z*)) - |z*|^2 / 2 - log det H(z*) / 2

at the mode z* of the integrand, with H = I + T' W T its negative Hessian (W the
likelihood's negative second derivative in eta, summed by level; T the sds). Counties nest
in prefectures, so H is block-arrowhead: diagonal county terms A_c = 1 + tau_c^2 W_c, one
prefecture term D_p = 1 + tau_p^2 W_p, couplings B_c = tau_c tau_p W_c. A Newton step and
the log-determinant then cost O(counties) through the prefecture Schur complements
S_p = D_p - sum_{c in p} B_c^2 / A_c, with sums over levels taken by index (as
fundgap.marginal's are). The sds enter only through tau z, so they may be signed (the fold
of fundgap.build) and may be zero.

The mode is found by damped Newton steps in a while loop whose gradient is cut (not
differentiated, not unrolled); one more Newton step from the stopped point is
differentiated, and its derivative is the implicit-function one (dz*/dtheta = H^-1
d grad / d theta), so the sampler's gradient is the exact gradient of the approximation
at convergence. A Gaussian equation with identity link is integrated exactly this way
(one Newton step reaches the mode of a quadratic), which the tests check against
fundgap.marginal.

That graph (`laplace_terms`) is the reference, and what a JAX backend traces (with a fixed
number of Newton steps). On the numba and PyMC backends, families with compiled derivatives
(fundgap.laplace_jets.FAMILY_CODES) use the same approximation as one compiled operation
instead (`LaplaceMarginal`: the mode search, the value and its exact gradient in one call,
cached by numba with the package), which numba compiles once rather than node by node for
every new data set; tests/test_laplace_kernel.py holds the two to the same values and
gradients.

The mode, the diagonal of H and the Schur complements are kept per draw (Deterministics
named `laplace_*`), and `draw_intercepts` draws the intercepts from the Gaussian
conditional N(z*, H^-1) afterwards, so a Laplace fit saves the same variables and dims as
the explicit form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import disconnected_grad
from pytensor.scan.utils import until

from fundgap import names
from fundgap.design import Design, group_dim
from fundgap.families import family
from fundgap.laplace_jets import FAMILY_CODES
from fundgap.laplace_kernel import (
    MAX_ITERATIONS,
    MAX_STEP,
    TOLERANCE,
    LaplaceMarginal,
)

# the prefix of the per-draw quantities the conditional draws need (dropped afterwards)
PREFIX = "laplace_"


@dataclass
class Levels:
    """The nesting an equation's intercepts follow: the inner level (county) of every
    campaign and, with two groups, the outer level (prefecture) of every inner one."""

    inner: np.ndarray | pt.TensorVariable
    n_inner: int
    parent: np.ndarray | pt.TensorVariable | None = None
    n_outer: int = 0


def _predictor_change(taus, step) -> pt.TensorVariable:
    """The largest change a Newton step makes to any linear predictor (tau times z's)."""
    return pt.max(pt.stack([pt.max(pt.abs(t * s)) for t, s in zip(taus, step, strict=True)]))


def _level_sums(values: pt.TensorVariable, index, size: int) -> pt.TensorVariable:
    return pt.inc_subtensor(pt.zeros(size)[index], values)


@dataclass
class _Point:
    """The integrand at one z: its log value, Newton step, log det H and H's pieces."""

    log_joint: pt.TensorVariable
    eta: pt.TensorVariable
    step: tuple[pt.TensorVariable, ...]
    logdet: pt.TensorVariable
    inner_precision: pt.TensorVariable
    coupling: pt.TensorVariable | None
    schur: pt.TensorVariable | None


def _at(record, y, eta_fixed, aux, levels: Levels, taus, z, concave: bool) -> _Point:
    """The Laplace integrand and its Newton step at z = (z_inner[, z_outer])."""
    tau_inner, z_inner = taus[0], z[0]
    nested = len(z) == 2
    eta = eta_fixed + tau_inner * z_inner[levels.inner]
    if nested:
        outer_of_row = levels.parent[levels.inner]
        eta = eta + taus[1] * z[1][outer_of_row]
    total = pt.sum(record.log_density(y, eta, aux))
    first, weight = record.curvature(y, eta, aux)
    log_joint = total - 0.5 * sum(pt.sum(zi**2) for zi in z)
    inner_first = _level_sums(first, levels.inner, levels.n_inner)
    inner_weight = _level_sums(weight, levels.inner, levels.n_inner)
    if concave:
        # the search's H must be positive definite, so that every step goes uphill: each
        # county's summed weight is kept non-negative (a campaign's own may be negative,
        # beta's; clipping those instead slows Newton to a linear crawl)
        inner_weight = pt.maximum(inner_weight, 0.0)
    gradient_inner = tau_inner * inner_first - z_inner
    precision = 1.0 + tau_inner**2 * inner_weight
    if not nested:
        return _Point(log_joint, eta, (gradient_inner / precision,),
                      pt.sum(pt.log(precision)), precision, None, None)
    tau_outer, z_outer = taus[1], z[1]
    outer_first = _level_sums(inner_first, levels.parent, levels.n_outer)
    outer_weight = _level_sums(inner_weight, levels.parent, levels.n_outer)
    gradient_outer = tau_outer * outer_first - z_outer
    coupling = tau_inner * tau_outer * inner_weight
    schur = (1.0 + tau_outer**2 * outer_weight
             - _level_sums(coupling**2 / precision, levels.parent, levels.n_outer))
    outer_step = (gradient_outer
                  - _level_sums(coupling * gradient_inner / precision, levels.parent,
                                levels.n_outer)) / schur
    inner_step = (gradient_inner - coupling * outer_step[levels.parent]) / precision
    logdet = pt.sum(pt.log(precision)) + pt.sum(pt.log(schur))
    return _Point(log_joint, eta, (inner_step, outer_step), logdet, precision, coupling,
                  schur)


class LaplaceTerms(NamedTuple):
    """One equation's Laplace approximation of log p(y | theta) and what it was made of."""

    value: pt.TensorVariable
    at_mode: _Point                           # the integrand's pieces at the mode
    mode: tuple[pt.TensorVariable, ...]       # z* (inner[, outer])
    step: tuple[pt.TensorVariable, ...]       # the last Newton step: zero where converged
    iterations: pt.TensorVariable             # Newton steps the search took


def laplace_terms(family_name: str, y, eta_fixed: pt.TensorVariable, aux: dict,
                  levels: Levels, taus: tuple[pt.TensorVariable, ...],
                  iterations: int | None = None, correct: bool = True) -> LaplaceTerms:
    """The Laplace approximation of log p(y | theta) for one equation (LaplaceTerms).

    `taus` holds the inner sd and, nested, the outer one. The mode search is a while loop
    (`iterations` None) or, for a backend without one (JAX), that many Newton steps. With
    `correct`, a family with third and fourth derivatives (Family.higher) gets the
    expansion's next term (`_second_order`).
    """
    record = family(family_name)
    if record.curvature is None:
        raise ValueError(f"the Laplace form does not support the {family_name} family")
    sizes = (levels.n_inner, levels.n_outer)[:len(taus)]
    # the loop sees constants only: its gradient is never taken
    frozen = [disconnected_grad(v) for v in (eta_fixed, *taus, *aux.values())]

    nested = levels.parent is not None and len(taus) == 2
    indices = [pt.as_tensor(levels.inner)] + ([pt.as_tensor(levels.parent)] if nested else [])
    # everything the loop reads from outside goes in as a non-sequence, so the loop's graph
    # holds these variables, not copies of the model's random variables behind them
    outside = [pt.as_tensor(y), *frozen, *indices]

    def newton(*args):
        z, (inner_y, inner_eta, *rest) = args[:len(sizes)], args[len(sizes):]
        inner_taus, rest = tuple(rest[:len(taus)]), rest[len(taus):]
        inner_aux = dict(zip(aux, rest[:len(aux)], strict=True))
        inner_index = rest[len(aux):]
        inner_levels = Levels(inner_index[0], levels.n_inner,
                              inner_index[1] if nested else None, levels.n_outer)
        point = _at(record, inner_y, inner_eta, inner_aux, inner_levels, inner_taus, z,
                    concave=True)
        change = _predictor_change(inner_taus, point.step)
        damping = pt.minimum(1.0, MAX_STEP / pt.maximum(change, 1e-300))
        moved = [zi + damping * s for zi, s in zip(z, point.step, strict=True)]
        if iterations is None:
            return moved, until(damping * change < TOLERANCE)
        return moved

    start = [pt.zeros(size) for size in sizes]
    steps = pytensor.scan(newton, outputs_info=start, non_sequences=outside,
                          n_steps=iterations or MAX_ITERATIONS, strict=True,
                          return_updates=False)
    steps = steps if isinstance(steps, list | tuple) else [steps]
    stopped = [disconnected_grad(s[-1]) for s in steps]
    # one differentiated Newton step from the stopped point: its value is the mode (to
    # the square of the tolerance), its derivative the implicit-function one
    step = _at(record, y, eta_fixed, aux, levels, taus, stopped, concave=False).step
    mode = tuple(s + d for s, d in zip(stopped, step, strict=True))
    at_mode = _at(record, y, eta_fixed, aux, levels, taus, mode, concave=False)
    value = at_mode.log_joint - 0.5 * at_mode.logdet
    if record.higher is not None and correct:
        value = value + _second_order(record, y, at_mode, aux, levels, taus)
    return LaplaceTerms(value, at_mode, mode, step, steps[0].shape[0])


def _second_order(record, y, at_mode: _Point, aux, levels: Levels,
                  taus: tuple[pt.TensorVariable, ...]) -> pt.TensorVariable:
    """The next term of the Laplace expansion (the log of its 1 + ... factor),

        (1/8) g_abcd S^ab S^cd + (1/8) g_abc g_def S^ab S^cd S^ef
        + (1/12) g_abc g_def S^ad S^be S^cf,

    with g's derivatives in z at the mode and S = H^-1. Each campaign's derivatives are
    l3_i, l4_i (Family.higher) times its row of dEta/dz, so every sum collapses to counties:
    with L3_c, L4_c a county's sums, C the covariance of the counties' intercepts under
    N(z*, H^-1) (diagonal tau_c^2 / A_c plus, within a prefecture, m m' / S_p, m_c =
    tau_p - tau_c B_c / A_c), q_c its diagonal and w_c = L3_c q_c, the term is

        (1/8) sum L4 q^2 + (1/8) w'Cw + (1/12) sum_cc' L3_c L3_c' C_cc'^3,

    O(counties) through the rank-one blocks. Where a county holds one or two campaigns of a
    binary or low count response the plain approximation's error is largest, and it differs
    from one sd to another: left alone it biases the sds (benchmarks/laplace_calibration.py).
    The term is taken per independent block (a prefecture with its counties; a county with
    one grouping) and bounded there (laplace_kernel.bounded).
    """
    third, fourth = record.higher(y, at_mode.eta, aux)
    county_third = _level_sums(third, levels.inner, levels.n_inner)
    county_fourth = _level_sums(fourth, levels.inner, levels.n_inner)
    own = taus[0]**2 / at_mode.inner_precision          # the diagonal part of C
    if at_mode.schur is None:
        # counties are independent blocks
        variance = own
        return pt.sum(_bounded(county_fourth * variance**2 / 8
                               + (county_third * variance)**2 * own / 8
                               + county_third**2 * variance**3 / 12))

    def by_prefecture(values):
        return _level_sums(values, levels.parent, levels.n_outer)
    loading = taus[1] - taus[0] * at_mode.coupling / at_mode.inner_precision
    schur = at_mode.schur[levels.parent]
    variance = own + loading**2 / schur
    # prefectures (with their counties) are independent blocks
    county_terms = (county_fourth * variance**2 / 8 + (county_third * variance)**2 * own / 8
                    + county_third**2 * variance**3 / 12
                    - county_third**2 * loading**6 / schur**3 / 12)
    block = (by_prefecture(county_terms)
             + by_prefecture(county_third * variance * loading)**2 / at_mode.schur / 8
             + by_prefecture(county_third * loading**3)**2 / at_mode.schur**3 / 12)
    return pt.sum(_bounded(block))


def _bounded(term: pt.TensorVariable) -> pt.TensorVariable:
    # the same bound as the compiled kernel's (fundgap.laplace_kernel.bounded)
    return term / pt.sqrt(1 + term**2)


def model_levels(design: Design, name: str) -> Levels:
    """The equation's levels as pm.Data in the model in context (so data can be swapped)."""
    groups = design.equations[name].groups
    inner = groups[-1]
    levels = Levels(pm.Data(f"{PREFIX}index_{name}", design.index[inner]),
                    len(design.levels[inner]))
    if len(groups) == 2:
        levels.parent = pm.Data(f"{PREFIX}parent_{name}", design.parent(inner, groups[0]))
        levels.n_outer = len(design.levels[groups[0]])
    return levels


def add_laplace_likelihood(design: Design, name: str, eta_fixed: pt.TensorVariable,
                           sds: dict[str, pt.TensorVariable], aux: dict,
                           iterations: int | None = None) -> None:
    """Add one equation's Laplace marginal log likelihood (a pm.Potential) to the model in
    context, and the per-draw pieces its intercepts are drawn from afterwards. `sds` maps
    the group dims to their (signed) sds, outer level first as the equation lists them."""
    equation = design.equations[name]
    if not 1 <= len(equation.groups) <= 2:
        raise ValueError(f"the Laplace form needs one or two nested groups; {name} has "
                         f"{len(equation.groups)}")
    dims = [group_dim(c) for c in equation.groups][::-1]   # inner first
    taus = tuple(sds[d] for d in dims)
    y = pm.Data(f"{PREFIX}y_{name}", equation.y)
    levels = model_levels(design, name)
    if iterations is None and equation.family in FAMILY_CODES:
        pieces = _compiled_terms(equation.family, y, eta_fixed, aux, levels, taus)
    else:
        terms = laplace_terms(equation.family, y, eta_fixed, aux, levels, taus, iterations)
        at_mode = terms.at_mode
        pieces = _Pieces(terms.value, _predictor_change(taus, terms.step), terms.iterations,
                         terms.mode, at_mode.inner_precision, at_mode.coupling, at_mode.schur)
    pm.Potential(f"laplace_loglik_{name}", pieces.value)
    # the last step on the linear predictor's scale: zero where the search converged
    pm.Deterministic(f"{PREFIX}residual_{name}", pieces.residual)
    pm.Deterministic(f"{PREFIX}iterations_{name}", pieces.iterations)
    pm.Deterministic(f"{PREFIX}mode_{dims[0]}_{name}", pieces.mode[0], dims=dims[0])
    pm.Deterministic(f"{PREFIX}precision_{dims[0]}_{name}", pieces.precision, dims=dims[0])
    if len(dims) == 2:
        pm.Deterministic(f"{PREFIX}mode_{dims[1]}_{name}", pieces.mode[1], dims=dims[1])
        pm.Deterministic(f"{PREFIX}coupling_{dims[0]}_{name}", pieces.coupling, dims=dims[0])
        pm.Deterministic(f"{PREFIX}schur_{dims[1]}_{name}", pieces.schur, dims=dims[1])


class _Pieces(NamedTuple):
    """What a fit keeps of one equation's Laplace form: the value, the search's residual
    and steps, the mode and H's pieces (for the intercepts' conditional draws)."""

    value: pt.TensorVariable
    residual: pt.TensorVariable
    iterations: pt.TensorVariable
    mode: tuple[pt.TensorVariable, ...]
    precision: pt.TensorVariable
    coupling: pt.TensorVariable | None
    schur: pt.TensorVariable | None


def _compiled_terms(family_name: str, y, eta_fixed: pt.TensorVariable, aux: dict,
                    levels: Levels, taus: tuple[pt.TensorVariable, ...]) -> _Pieces:
    """The equation's Laplace terms from the compiled kernel (fundgap.laplace_kernel): with
    one grouping, each county is a prefecture of its own whose sd is zero."""
    nested = levels.parent is not None and len(taus) == 2
    parent = levels.parent if nested else np.arange(levels.n_inner, dtype="int64")
    n_outer = levels.n_outer if nested else levels.n_inner
    op = LaplaceMarginal(FAMILY_CODES[family_name], family(family_name).higher is not None)
    auxiliary = pt.stack(list(aux.values())) if aux else np.zeros(0)
    (value, _, _, _, inner_mode, outer_mode, precision, coupling, schur, iterations,
     residual) = op(y, eta_fixed, taus[0], taus[1] if nested else 0.0, auxiliary,
                    levels.inner, parent, n_outer)
    return _Pieces(value, residual, iterations, (inner_mode, outer_mode)[:len(taus)],
                   precision, coupling if nested else None, schur if nested else None)


def draw_intercepts(posterior, design: Design, name: str,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw one equation's intercepts from the Laplace conditional N(z*, H^-1) at every
    draw: the outer z from its marginal N(z*_p, 1 / S_p), then each inner z given it,
    N(z*_c - B_c (z_p - z*_p) / A_c, 1 / A_c); the intercepts are the signed sds times z.
    `posterior` holds the `laplace_*` pieces. Returns {dim: (chain, draw, levels)}."""
    equation = design.equations[name]
    dims = [group_dim(c) for c in equation.groups][::-1]
    inner_mode = posterior[f"{PREFIX}mode_{dims[0]}_{name}"].values
    precision = posterior[f"{PREFIX}precision_{dims[0]}_{name}"].values
    out = {}
    shift = 0.0
    if len(dims) == 2:
        outer_mode = posterior[f"{PREFIX}mode_{dims[1]}_{name}"].values
        schur = posterior[f"{PREFIX}schur_{dims[1]}_{name}"].values
        z_outer = outer_mode + rng.standard_normal(outer_mode.shape) / np.sqrt(schur)
        parent = design.parent(equation.groups[-1], equation.groups[0])
        coupling = posterior[f"{PREFIX}coupling_{dims[0]}_{name}"].values
        shift = coupling * (z_outer - outer_mode)[..., parent] / precision
        out[dims[1]] = _signed_sd(posterior, dims[1], name)[..., None] * z_outer
    z_inner = inner_mode - shift + rng.standard_normal(inner_mode.shape) / np.sqrt(precision)
    out[dims[0]] = _signed_sd(posterior, dims[0], name)[..., None] * z_inner
    return out


def _signed_sd(posterior, dim: str, name: str) -> np.ndarray:
    # the Laplace form folds every group's sd (fundgap.build), and z* is for the signed one
    return posterior[names.folded_sd(dim, name)].values
