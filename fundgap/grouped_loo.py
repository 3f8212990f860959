"""Leave-one-county-out and leave-one-prefecture-out PSIS-LOO for a Gaussian equation, from
the closed-form marginal likelihood of a whole group's campaigns.

Campaign-level LOO on a multilevel model is conditional on the drawn intercepts: holding out
a campaign leaves its county's intercept in, and a county seen once gives high Pareto k.
Holding out a whole county asks what a model of this pooling structure predicts for a county
it has not seen. For a Gaussian equation the held-out density is exact: given the
coefficients, sigma and the group sds, a county's campaigns are jointly normal with
covariance sigma^2 I + county_sd^2 11' (and, holding out a prefecture, + prefecture_sd^2 11'
over the prefecture with its counties' blocks inside), while the intercepts of levels above
the held-out one (the prefecture's, holding out a county) are conditioned on, per draw.

The nested covariance is never formed: going up from campaigns to the held-out group, each
level's groups carry (log det, 1'A^-1 1, 1'A^-1 r, r'A^-1 r) of their block, and adding a
level's variance tau^2 11' to a block updates them by the Sherman-Morrison formula.
"""

from __future__ import annotations

import itertools
import warnings

import arviz as az
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr

from fundgap import names
from fundgap.design import Design, group_dim
from fundgap.errors import FundgapError
from fundgap.groupings import GROUPS
from fundgap.predictive import linear_predictor, thinned

# What a whole group's campaigns can be held out by (inner to outer, as GROUPS).
HELD_OUT = ("county", "prefecture")
# Families whose group marginal is closed form: Gaussian in the response, or in its log
# (then with the Jacobian of log y).
CLOSED_FORM = {"gaussian": False, "lognormal": True}
# Draws handled at once (each holds draws x campaigns residuals).
DRAW_CHUNK = 64
PARETO_K_BAD = 0.7


def _indicator(codes: np.ndarray, groups: int) -> sp.csr_matrix:
    """rows -> groups, one 1 per row."""
    return sp.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)),
                         shape=(len(codes), groups))


def _levels_up_to(held_out: str) -> list[str]:
    """The group columns from the finest to the held-out one (GROUPS runs inner to outer)."""
    columns = list(GROUPS.values())
    return columns[:columns.index(GROUPS[held_out]) + 1]


def _campaign_parts(residual: np.ndarray, variance: np.ndarray) -> tuple:
    """Each campaign's block of sigma^2 I: (log det, 1'A^-1 1, 1'A^-1 r, r'A^-1 r)."""
    ones_r = residual / variance
    return (np.log(variance) * np.ones_like(residual),
            np.broadcast_to(1.0 / variance, residual.shape), ones_r, residual * ones_r)


def _nested_log_density(parts: tuple, maps: list, tau2: list[np.ndarray | None],
                        sizes: np.ndarray) -> np.ndarray:
    """Per draw (rows) and held-out group: the normal log density of the group's residuals
    with covariance sigma^2 I plus tau2[k] * 11' over each group of level k (maps[k]
    takes level k-1's groups, the units of `parts` first, to level k's; None: no
    intercept there). Each block carries log det A, 1'A^-1 1, 1'A^-1 r and r'A^-1 r
    (`parts`, of the units' blocks: campaigns', or counties' of sigma^2 I from their sums);
    adding tau^2 11' to a block updates them by Sherman-Morrison."""
    log_det, ones, ones_r, r_r = parts
    for step, level_tau2 in zip(maps, tau2, strict=True):
        log_det, ones, ones_r, r_r = (np.asarray(part @ step)
                                      for part in (log_det, ones, ones_r, r_r))
        if level_tau2 is not None:
            scale = 1.0 + level_tau2 * ones
            log_det = log_det + np.log(scale)
            r_r = r_r - level_tau2 * ones_r**2 / scale
            ones_r, ones = ones_r / scale, ones / scale
    return -0.5 * (sizes * np.log(2 * np.pi) + log_det + r_r)


def group_log_likelihood(posterior: xr.Dataset, design: Design, equation: str,
                         held_out: str) -> xr.DataArray:
    """The log density of each held-out group's campaigns, dims (chain, draw, <group dim>),
    with the equation's intercepts at and below that level integrated out and those above it
    taken from each draw. `posterior` must hold the group intercepts of the levels above."""
    record = design.equations[equation]
    if record.family not in CLOSED_FORM:
        raise FundgapError(f"leave-one-{held_out}-out needs a Gaussian equation; "
                           f"{equation} is {record.family}")
    if design.reduced:
        return _from_moments(posterior, design, equation, held_out)
    inner = _levels_up_to(held_out)
    conditioned = tuple(g for g in record.groups if g not in inner)
    table = design.table
    # each level's groups; campaigns -> finest level, then each level -> the next one up
    # (a group's parent read from its first campaign: codes are nested, as prepared data are)
    codes = [pd.factorize(table[c].astype(str), sort=True) for c in inner]
    maps = [_indicator(codes[0][0], len(codes[0][1]))]
    for (child, _), (parent, parent_uniques) in itertools.pairwise(codes):
        first = pd.Series(parent).groupby(child).first().to_numpy()
        maps.append(_indicator(first, len(parent_uniques)))
    to_held_out = maps[0]
    for step in maps[1:]:
        to_held_out = to_held_out @ step
    sizes = np.asarray(to_held_out.sum(axis=0)).ravel()
    y = np.log(record.y) if CLOSED_FORM[record.family] else record.y
    jacobian = to_held_out.T @ -y if CLOSED_FORM[record.family] else 0.0

    eta = linear_predictor(posterior, design, equation, groups=conditioned)
    flat_eta = eta.values.reshape(-1, eta.shape[-1])

    def parts(draws: slice, variance: np.ndarray) -> tuple:
        return _campaign_parts(y[None, :] - flat_eta[draws], variance)

    return _over_draws(posterior, equation, held_out, parts, maps, record.groups, sizes,
                       np.asarray(codes[-1][1], dtype=str), jacobian)


def _over_draws(posterior: xr.Dataset, equation: str, held_out: str, parts, maps: list,
                groups: tuple[str, ...], sizes: np.ndarray, held: np.ndarray,
                jacobian: np.ndarray | float = 0.0) -> xr.DataArray:
    """_nested_log_density a chunk of draws at a time, `parts(draws, sigma^2)` giving the
    first level's blocks and the equation's `groups` their sds at each level up to the
    held-out one, as an array with dims (chain, draw, <held-out dim>) over `held`."""
    variances = [names.group_sd(group_dim(c), equation) if c in groups else None
                 for c in _levels_up_to(held_out)]
    flat_sigma = posterior[names.sigma(equation)].values.reshape(-1)
    sds = [posterior[v].values.reshape(-1) if v else None for v in variances]
    out = np.empty((len(flat_sigma), len(held)))
    for start in range(0, len(flat_sigma), DRAW_CHUNK):
        draws = slice(start, start + DRAW_CHUNK)
        out[draws] = _nested_log_density(
            parts(draws, flat_sigma[draws, None] ** 2), maps,
            [None if sd is None else sd[draws, None] ** 2 for sd in sds], sizes) + jacobian
    dim = group_dim(GROUPS[held_out])
    return xr.DataArray(out.reshape((posterior.sizes["chain"], posterior.sizes["draw"], -1)),
                        dims=("chain", "draw", dim),
                        coords={"chain": posterior["chain"].values,
                                "draw": posterior["draw"].values, dim: held})


def _from_moments(posterior: xr.Dataset, design: Design, equation: str,
                  held_out: str) -> xr.DataArray:
    """group_log_likelihood for a design reduced to sufficient statistics, from its
    per-county sums (fundgap.reduce.GroupMoments): each county's residual sum and sum of
    squares at a draw follow from the draw's coefficients, and from there the nesting is
    the rows' (_nested_log_density from the counties up)."""
    record = design.equations[equation]
    moments = (design.group_moments or {}).get(equation)
    if moments is None:
        raise FundgapError(f"leave-one-{held_out}-out of a fit made from sufficient "
                           f"statistics needs {equation}'s per-county sums (reduce_prepared "
                           "with group_sums_of, on data with county and prefecture codes)")
    inner = _levels_up_to(held_out)
    conditioned = [g for g in record.groups if g not in inner]
    county, prefecture = moments.columns
    if any(c not in moments.columns for c in conditioned):
        raise FundgapError(f"leave-one-{held_out}-out from sufficient statistics conditions "
                           "on county or prefecture intercepts only; "
                           f"{equation} has {', '.join(conditioned)}")
    to_parent = _indicator(moments.parent, len(moments.levels[prefecture]))
    maps = [sp.identity(len(moments.n), format="csr")] + (
        [to_parent] if held_out == "prefecture" else [])
    sizes = moments.n if held_out == "county" else np.asarray(
        to_parent.T @ moments.n).ravel()
    # each draw's coefficients on the standardised design Z = [1, X] A, less y's centre
    raw = np.concatenate([posterior[names.intercept(equation)].values[..., None],
                          posterior[names.coefficients(equation)].values], axis=-1)
    flat = raw.reshape(-1, raw.shape[-1])
    theta = np.linalg.solve(moments.affine, flat.T).T
    theta[:, 0] -= moments.y_centre
    shift = np.zeros((flat.shape[0], len(moments.n)))
    for column in conditioned:   # the intercepts above the held-out level, per draw
        dim = group_dim(column)
        drawn = posterior[names.group_intercept(dim, equation)]
        at = pd.Index(drawn[dim].values.astype(str)).get_indexer(moments.levels[column])
        if (at < 0).any():
            raise FundgapError(f"the posterior has no {dim} intercept for some of the "
                               f"data's {column} levels")
        values = drawn.values.reshape(-1, drawn.shape[-1])[:, at]
        shift += values[:, moments.parent] if column == prefecture else values

    def parts(draws: slice, variance: np.ndarray) -> tuple:
        b, a = theta[draws], shift[draws]
        residual_sum = moments.sum_y[None, :] - b @ moments.sum_z.T
        squares = (moments.yy[None, :] - 2 * b @ moments.zy.T
                   + np.einsum("dp,kpq,dq->dk", b, moments.zz, b, optimize=True))
        squares = squares - 2 * a * residual_sum + moments.n * a**2
        residual_sum = residual_sum - moments.n * a
        return (moments.n * np.log(variance), moments.n / variance,
                residual_sum / variance, squares / variance)

    return _over_draws(posterior, equation, held_out, parts, maps, record.groups, sizes,
                       moments.levels[county if held_out == "county" else prefecture])


def held_out_data(posterior: xr.Dataset, design: Design, equation: str, held_out: str,
                  keep: int) -> az.InferenceData:
    """For about `keep` draws: the equation's log likelihood per held-out group (what ArviZ's
    loo treats as one observation each), beside the parameters' draws that PSIS's relative
    efficiency is computed from."""
    subset = thinned(posterior, keep)
    loglik = group_log_likelihood(subset, design, equation, held_out)
    parameters = [v for v in subset.data_vars
                  if not names.is_group_intercept(v, design.grouping_dims)
                  and not names.is_sampler_internal(v, design.grouping_dims)]
    return az.InferenceData(posterior=subset[parameters],
                            log_likelihood=xr.Dataset({equation: loglik}))


def elpd(data: az.InferenceData, equation: str) -> az.ELPDData:
    """PSIS-LOO of `equation` in `data` (which holds its log likelihood), pointwise: what
    compare needs of a variant, so the variant's draws need not be kept until then."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # high-k warnings: counted in compare
        return az.loo(data, var_name=equation, pointwise=True)


def _stacking_weights(elpds: dict[str, az.ELPDData]) -> dict[str, float]:
    """ArviZ's stacking weights of the variants, from their pointwise elpds each less the
    unit's largest across the variants. Stacking is unchanged by a shift per unit, but
    ArviZ takes exp of each unit's elpd as it is: a unit below about -745 (a prefecture's
    campaigns held out on a large data set) is zero in every variant, and its optimiser
    then stops at its uniform start."""
    pointwise = np.stack([np.ravel(loo["loo_i"]) for loo in elpds.values()])
    relative = pointwise - pointwise.max(axis=0)
    shifted = {}
    for (name, loo), values in zip(elpds.items(), relative, strict=True):
        shifted[name] = loo.copy()
        shifted[name]["loo_i"] = loo["loo_i"].copy(data=values.reshape(loo["loo_i"].shape))
        shifted[name]["elpd_loo"] = float(values.sum())
    return az.compare(shifted, ic="loo")["weight"].to_dict()


def compare(elpds: dict[str, az.ELPDData]) -> pd.DataFrame:
    """ArviZ's LOO comparison of the variants' `elpd`s, with the count of held-out units
    whose Pareto k exceeds 0.7."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)   # its weights are replaced
        table = az.compare(elpds, ic="loo")
        table["weight"] = table.index.map(_stacking_weights(elpds))
    high_k = {name: int((loo.pareto_k > PARETO_K_BAD).sum()) for name, loo in elpds.items()}
    table = table.rename_axis("variant").reset_index()
    table["pareto_k_above_0_7"] = table["variant"].map(high_k)
    return table
