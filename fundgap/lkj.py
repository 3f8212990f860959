"""The LKJ prior on the correlation of several equations' errors, as the sampler sees it.

`correlation_cholesky` builds a correlation's Cholesky factor from unconstrained values by
Stan's construction (Lewandowski, Kurowicka and Joe's canonical partial correlations) with
the LKJ log density in those values; `unconstrained_values` inverts it; and
`add_error_covariance` puts the prior, each equation's sigma and the saved correlations into
the model in context (fundgap.correlated's block of correlated mediator errors).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from fundgap import names

# The LKJ prior's shape: 2 puts less weight on correlations near +-1 than the uniform 1
LKJ_ETA = 2.0


def error_pairs(equations: tuple[str, ...]) -> list[str]:
    """The coordinate of the error correlations: one label per pair of equations."""
    rows, columns = np.triu_indices(len(equations), 1)
    return [f"{equations[i]}, {equations[j]}" for i, j in zip(rows, columns, strict=True)]


def correlation_cholesky(unconstrained: pt.TensorVariable, size: int,
                         eta: float = LKJ_ETA) -> tuple[pt.TensorVariable, pt.TensorVariable]:
    """The Cholesky factor of a correlation matrix from K(K-1)/2 unconstrained values, and
    the log density of an LKJ(eta) prior on the correlation in those values (Jacobian
    included, normalising constant left out).

    Stan's construction (Lewandowski, Kurowicka and Joe's canonical partial correlations):
    z = tanh(x) in (-1, 1); row i of L is z_i0, z_i1 sqrt(1 - L_i0^2), ..., with L_ii the
    rest of the row's unit length, so every x gives a valid correlation matrix. PyMC's
    LKJCorr maps each correlation to (-1, 1) on its own (most points are not positive
    definite), and its LKJCholeskyCov starts from a random draw that nutpie's compiled
    initial point cannot evaluate."""
    z = pt.tanh(unconstrained)
    log_density = pt.sum(pt.log1p(-(z**2)))
    factor = pt.set_subtensor(pt.zeros((size, size))[0, 0], 1.0)
    position = 0
    for i in range(1, size):
        squares = pt.constant(0.0)
        for j in range(i):
            value = z[position]
            if j:
                # x -> z_ij sqrt(1 - sum of squares so far) stretches by that square root
                log_density += 0.5 * pt.log1p(-squares)
                value = value * pt.sqrt(1.0 - squares)
            factor = pt.set_subtensor(factor[i, j], value)
            squares = squares + value**2
            position += 1
        factor = pt.set_subtensor(factor[i, i], pt.sqrt(1.0 - squares))
        # LKJ on the Cholesky factor: L_ii^(K - 1 - i + 2 (eta - 1))
        log_density += (size - 1 - i + 2 * (eta - 1)) * 0.5 * pt.log1p(-squares)
    return factor, log_density


def unconstrained_values(correlation: np.ndarray) -> np.ndarray:
    """The values `correlation_cholesky` maps to this correlation matrix (its inverse):
    z_ij = L_ij / sqrt(1 - sum_{k<j} L_ik^2), x = atanh z, row by row below the diagonal."""
    factor = np.linalg.cholesky(correlation)
    values = []
    for i in range(1, len(correlation)):
        for j in range(i):
            rest = 1.0 - np.sum(factor[i, :j] ** 2)
            values.append(np.arctanh(factor[i, j] / np.sqrt(rest)))
    return np.array(values)


def lkj_unconstrained_draws(size: int, rng: np.random.Generator | None = None,
                            size_draws: tuple | int | None = None, eta: float = LKJ_ETA
                            ) -> np.ndarray:
    """Draws from the LKJ(eta) prior on a size x size correlation as the sampler's
    unconstrained values: PyMC's LKJ sampler, then `unconstrained_values`. For the prior
    predictive and for shape inference (pm.model_to_graphviz evaluates shapes by drawing)."""
    rows, columns = np.triu_indices(size, 1)
    count = int(np.prod(size_draws)) if size_draws not in (None, ()) else 1
    packed = np.atleast_2d(pm.draw(pm.LKJCorr.dist(n=size, eta=eta), draws=count,
                                   random_seed=rng))
    values = np.empty((count, len(rows)))
    for draw, upper in enumerate(packed):
        correlation = np.eye(size)
        correlation[rows, columns] = correlation[columns, rows] = upper
        values[draw] = unconstrained_values(correlation)
    shape = () if size_draws in (None, ()) else tuple(np.atleast_1d(size_draws))
    return values.reshape((*shape, len(rows)))


def add_error_covariance(equations: tuple[str, ...],
                         sigmas: list[pt.TensorVariable]) -> pt.TensorVariable:
    """The errors' covariance for the model in context: an LKJ prior on their correlation
    (sampled as unconstrained values, `error_cholesky`), each equation's own sigma, the
    correlations saved per pair (dim `error_pair`). Returns the Cholesky factor of Sigma."""
    K = len(equations)
    # the zeros only carry the support's length (m) to PyTensor's shape inference
    unconstrained = pm.CustomDist(
        names.ERROR_CHOLESKY, np.zeros(K * (K - 1) // 2),
        logp=lambda value, _: correlation_cholesky(value, K)[1],
        random=lambda _, rng=None, size=None: lkj_unconstrained_draws(K, rng, size),
        signature="(m)->(m)")
    factor, _ = correlation_cholesky(unconstrained, K)
    rows, columns = np.triu_indices(K, 1)
    correlation = factor @ factor.T
    # a static shape: shape inference (pm.model_to_graphviz) must not evaluate the Flat
    pm.Deterministic(names.ERROR_CORRELATION,
                     pt.specify_shape(correlation[rows, columns], (len(rows),)),
                     dims=names.ERROR_PAIR_DIM)
    return pt.stack(sigmas)[:, None] * factor
