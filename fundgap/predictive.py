"""Per-campaign quantities from the posterior: linear predictors, posterior predictive draws
and pointwise log likelihood (conditional on the intercepts), for a thinned set of draws.

Computed in numpy from the saved coefficients and intercepts, so the explicit and the
marginalised form give them the same way and in the same layout.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from fundgap import names
from fundgap.design import Design, group_dim
from fundgap.families import auxiliary_draws, family


def thinned(posterior: xr.Dataset, keep: int) -> xr.Dataset:
    """Every k-th draw of each chain so that about `keep` draws remain in all."""
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    step = max(1, int(np.ceil(total / max(keep, 1))))
    return posterior.isel(draw=slice(None, None, step))


def linear_predictor(posterior: xr.Dataset, design: Design, name: str,
                     rows: np.ndarray | slice = slice(None),
                     groups: tuple[str, ...] | None = None) -> xr.DataArray:
    """eta = intercept + X coefficients + group intercepts, dims (chain, draw, campaign),
    for the campaigns `rows` (default all), with the intercepts of `groups` (default all
    the equation's)."""
    equation = design.equations[name]
    X = xr.DataArray(equation.X[rows], dims=("campaign", f"term_{name}"))
    eta = posterior[names.intercept(name)] + xr.dot(X, posterior[names.coefficients(name)],
                                                   dim=f"term_{name}")
    for column in equation.groups if groups is None else groups:
        dim = group_dim(column)
        effect = posterior[names.group_intercept(dim, name)]
        eta = eta + effect.isel({dim: xr.DataArray(design.index[column][rows],
                                                   dims="campaign")})
    return eta.transpose("chain", "draw", "campaign")


def predictive_groups(posterior: xr.Dataset, design: Design, keep: int,
                      rng: np.random.Generator) -> tuple[xr.Dataset, xr.Dataset]:
    """(posterior_predictive, log_likelihood) for about `keep` draws."""
    subset = thinned(posterior, keep)
    predictive, loglik = {}, {}
    for name, equation in design.equations.items():
        eta = linear_predictor(subset, design, name)
        record = family(equation.family)
        dist = record.predictive(eta.values, auxiliary_draws(subset, equation.family, name,
                                                             per_campaign=True))
        coords = {"chain": subset["chain"].values, "draw": subset["draw"].values,
                  "campaign": design.campaigns}
        dims = ("chain", "draw", "campaign")
        predictive[name] = xr.DataArray(dist.rvs(random_state=rng), dims=dims, coords=coords)
        loglik[name] = xr.DataArray(
            record.pointwise_log_likelihood(dist, equation.y[None, None, :]), dims=dims,
            coords=coords)
    return xr.Dataset(predictive), xr.Dataset(loglik)
