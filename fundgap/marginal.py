"""The marginalised form: county and prefecture intercepts integrated out exactly.

For a Gaussian equation y = Z theta + u_prefecture + u_county + e, the covariance within a
prefecture is sigma^2 I + tau_c^2 (county blocks) + tau_p^2 (the whole block). Two
Sherman-Morrison steps reduce its log-determinant and quadratic form to sums over counties
and prefectures of a few sufficient statistics: per-county counts and sums of y and of the
design, and the global cross-products. With r = y - Z theta, s_c the county sums of r and
Q the total sum of squares of r:

    w_c = 1 / (sigma^2 + n_c tau_c^2)
    N_p = sum_{c in p} n_c w_c,   S_p = sum_{c in p} s_c w_c
    -2 log L = n log(2 pi sigma^2) + sum_c log(1 + n_c tau_c^2 / sigma^2)
               + sum_p log(1 + tau_p^2 N_p)
               + (Q - sum_c tau_c^2 w_c s_c^2) / sigma^2 - sum_p tau_p^2 S_p^2 / (1 + tau_p^2 N_p)

so one gradient costs O(counties x terms), whatever the number of campaigns. The sampler sees
only coefficients and variances; `draw_intercepts` then draws the intercepts from their exact
Gaussian conditional posterior for every draw, so the saved posterior has them as the
explicit form does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from scipy import sparse

from fundgap.design import Design, EquationDesign, group_dim
from fundgap.families import EXACT_FAMILIES
from fundgap.marginal_kernel import GaussianMarginal


@dataclass
class SufficientStatistics:
    """What the marginal likelihood of one equation needs, on the standardised design Z.

    The inner level is the innermost group (county), the outer one the group it nests in
    (prefecture); an equation with one group has no outer level, one with none no inner.
    """

    n: int
    ZtZ: np.ndarray            # (k, k) including the intercept column
    Zty: np.ndarray            # (k,)
    yty: float
    inner_n: np.ndarray        # campaigns per inner level
    inner_Z: np.ndarray        # (levels, k) sums of Z per inner level
    inner_y: np.ndarray        # (levels,) sums of y per inner level
    inner_parent: np.ndarray   # outer level of each inner level (empty without one)
    n_outer: int
    # the distinct inner level sizes and how many levels have each: the log-determinant
    # needs one log1p per distinct size (about 20), not one per county (thousands)
    size_values: np.ndarray
    size_counts: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


def size_table(inner_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct inner level sizes and how many levels have each."""
    values, counts = np.unique(inner_n, return_counts=True)
    return values, counts.astype(float)


def standardised_design(equation: EquationDesign) -> np.ndarray:
    """[1, (X - mean) / sd]: the design the model's alpha and beta_std multiply."""
    scaled = (equation.X - equation.x_mean) / equation.x_sd
    return np.column_stack([np.ones(len(scaled)), scaled])


def sufficient_statistics(design: Design, name: str) -> SufficientStatistics:
    """Per-level sums and global cross-products of one equation (one pass over the rows;
    a design reduced in chunks by fundgap.reduce already holds them)."""
    if design.reduced:
        return design.statistics[name]
    equation = design.equations[name]
    Z, y = standardised_design(equation), equation.y
    groups = equation.groups
    if groups:
        index = design.index[groups[-1]]
        levels = len(design.levels[groups[-1]])
    else:
        index, levels = np.zeros(0, dtype=int), 0
    inner_Z = np.zeros((levels, Z.shape[1]))
    if groups:
        np.add.at(inner_Z, index, Z)
    nested = len(groups) == 2
    inner_n = np.bincount(index, minlength=levels).astype(float)
    size_values, size_counts = size_table(inner_n)
    return SufficientStatistics(
        n=len(y), ZtZ=Z.T @ Z, Zty=Z.T @ y, yty=float(y @ y),
        inner_n=inner_n,
        inner_Z=inner_Z,
        inner_y=np.bincount(index, weights=y, minlength=levels) if groups else np.zeros(0),
        inner_parent=design.parent(groups[-1], groups[0]) if nested else np.zeros(0, int),
        n_outer=len(design.levels[groups[0]]) if nested else 0,
        size_values=size_values, size_counts=size_counts)


def marginal_loglik(stats: SufficientStatistics, theta, sigma, tau_inner=None,
                    tau_outer=None):
    """Exact marginal log likelihood (works on numpy arrays and on pytensor tensors).

    Without `tau_inner` it is the ordinary Gaussian likelihood from the sufficient
    statistics; without `tau_outer` there is one level of intercepts.
    """
    lib = np if isinstance(theta, np.ndarray) else pt
    sigma2 = sigma**2
    quadratic = stats.yty - 2 * lib.dot(theta, stats.Zty) + lib.dot(theta, lib.dot(stats.ZtZ,
                                                                                    theta))
    logdet = stats.n * lib.log(sigma2)
    quad = quadratic / sigma2
    if tau_inner is not None:
        inner2 = tau_inner**2
        sums = stats.inner_y - lib.dot(stats.inner_Z, theta)
        weight = 1.0 / (sigma2 + stats.inner_n * inner2)
        logdet = logdet + lib.sum(stats.size_counts
                                  * lib.log1p(stats.size_values * inner2 / sigma2))
        quad = quad - inner2 * lib.sum(weight * sums**2) / sigma2
        if tau_outer is not None:
            outer2 = tau_outer**2
            if lib is pt:
                # scatter-add over the counties of each prefecture, O(counties)
                zeros = pt.zeros(stats.n_outer)
                outer_n = pt.inc_subtensor(zeros[stats.inner_parent], stats.inner_n * weight)
                outer_s = pt.inc_subtensor(zeros[stats.inner_parent], sums * weight)
            else:
                outer_n = np.bincount(stats.inner_parent, weights=stats.inner_n * weight,
                                      minlength=stats.n_outer)
                outer_s = np.bincount(stats.inner_parent, weights=sums * weight,
                                      minlength=stats.n_outer)
            logdet = logdet + lib.sum(lib.log1p(outer2 * outer_n))
            quad = quad - lib.sum(outer2 * outer_s**2 / (1 + outer2 * outer_n))
    return -0.5 * (stats.n * np.log(2 * np.pi) + logdet + quad)


def structure_key(design: Design) -> tuple:
    """What a compiled all-marginal model depends on: equations, families, terms, groups.

    Data (sufficient statistics, prior scales, predictor means and sds) enter as pm.Data,
    so one compiled model serves every data set with the same structure.
    """
    return tuple((name, e.family, tuple(e.terms), e.groups)
                 for name, e in design.equations.items())


def add_marginal_likelihood(design: Design, name: str, alpha: pt.TensorVariable,
                            beta_std: pt.TensorVariable, sds: dict[str, pt.TensorVariable],
                            sigma: pt.TensorVariable, compiled: bool = True) -> None:
    """Add one Gaussian equation's exact marginal log likelihood (a pm.Potential) to the
    model in context, its sufficient statistics as pm.Data. `sds` maps the group dims to
    their sd parameters (outer level first, as the equation lists its groups); only their
    squares enter, so they may be signed (fundgap.build folds them). `compiled` takes the
    one-operation form (fundgap.marginal_kernel: numba and PyMC backends); otherwise the
    graph, which JAX can trace."""
    equation = design.equations[name]
    if equation.family not in EXACT_FAMILIES:
        raise ValueError(f"the marginalised form needs a Gaussian equation; {name} is "
                         f"{equation.family} (use the explicit form)")
    theta = pt.concatenate([pt.atleast_1d(alpha), beta_std])
    stats = SufficientStatistics(**{
        key: pm.Data(f"stats_{key}_{name}", value)
        for key, value in sufficient_statistics(design, name).as_dict().items()})
    groups = [group_dim(c) for c in equation.groups]
    tau_inner = sds[groups[-1]] if groups else None
    tau_outer = sds[groups[0]] if len(groups) == 2 else None
    if compiled:
        zero = pt.constant(0.0)
        value = GaussianMarginal(len(groups))(
            theta, sigma, zero if tau_inner is None else tau_inner,
            zero if tau_outer is None else tau_outer,
            *(getattr(stats, key) for key in GaussianMarginal.STATISTICS))[0]
    else:
        value = marginal_loglik(stats, theta, sigma, tau_inner, tau_outer)
    pm.Potential(f"marginal_loglik_{name}", value)


def draw_intercepts(design: Design, name: str, theta: np.ndarray, sigma: np.ndarray,
                    tau_inner: np.ndarray, tau_outer: np.ndarray | None,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the intercepts of one equation from their exact conditional posterior.

    Arrays are per draw (leading axis). The outer intercept is drawn first from its
    conditional with the inner ones integrated out, then the inner ones given it:
      u_p | y ~ N(S_p / (1 / tau_p^2 + N_p), 1 / (1 / tau_p^2 + N_p))
      u_c | u_p, y ~ N(((s_c - n_c u_p) / sigma^2) / prec_c, 1 / prec_c),
      prec_c = 1 / tau_c^2 + n_c / sigma^2
    Returns {dim: (draws, levels)} for the inner and, if present, the outer level.
    """
    stats = sufficient_statistics(design, name)
    # Held as (levels, draws) and written in place: the sums over the counties of each
    # prefecture are then a sparse product with a contiguous array (scipy copies a
    # transposed one first), and no operation allocates a fresh thousands x thousands array
    # (that cost as much as the arithmetic).
    sums = stats.inner_Z @ theta.T                                   # (inner, draws)
    np.subtract(stats.inner_y[:, None], sums, out=sums)
    sigma2, inner2 = sigma[None, :] ** 2, tau_inner[None, :] ** 2
    n = stats.inner_n[:, None]
    groups = design.equations[name].groups
    out = {}
    scaled = np.empty_like(sums)
    if len(groups) == 2:
        weight = np.multiply(n, inner2, out=scaled)
        weight += sigma2
        np.reciprocal(weight, out=weight)
        parent = stats.inner_parent
        membership = sparse.csr_matrix((np.ones(len(parent)), (parent, np.arange(len(parent)))),
                                       shape=(stats.n_outer, len(parent)))
        outer_s = membership @ (sums * weight)                       # (outer, draws)
        outer_n = membership @ np.multiply(weight, n, out=weight)
        precision = 1.0 / tau_outer[None, :] ** 2 + outer_n
        # normal draws in (draws, levels) order, as fits before this layout drew them
        outer = (outer_s / precision
                 + rng.standard_normal(outer_n.shape[::-1]).T / np.sqrt(precision))
        out[group_dim(groups[0])] = outer.T
        # s_c - n_c u_p: the county sums around their prefecture's draw
        shift = np.take(outer, parent, axis=0, out=scaled)
        shift *= n
        sums -= shift
    precision = np.divide(n, sigma2, out=scaled)
    precision += 1.0 / inner2
    sums /= sigma2
    sums /= precision
    noise = rng.standard_normal(sums.shape[::-1]).T
    noise /= np.sqrt(precision, out=precision)
    sums += noise
    out[group_dim(groups[-1])] = sums.T
    return out
