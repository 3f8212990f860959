"""Leave-one-group-out log densities equal a dense multivariate normal per held-out group,
with the intercepts above the held-out level conditioned on."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import multivariate_normal
from test_marginal import dense_covariance, tiny_design

from fundgap import names
from fundgap.design import build_design
from fundgap.errors import FundgapError
from fundgap.grouped_loo import compare, group_log_likelihood
from fundgap.reduce import reduce_prepared

EQUATION = "log_amount_raised"


def _posterior(design, draws: int, seed: int) -> xr.Dataset:
    """Random parameter draws (2 chains) in the saved posterior's names and dims."""
    rng = np.random.default_rng(seed)
    equation = design.equations[EQUATION]
    shape = (2, draws)
    data = {names.intercept(EQUATION): (("chain", "draw"), rng.normal(0, 1, shape)),
            names.coefficients(EQUATION): (("chain", "draw", "term"),
                                           rng.normal(0, 1, (*shape, len(equation.terms)))),
            names.sigma(EQUATION): (("chain", "draw"), rng.uniform(0.4, 1.5, shape))}
    for column in equation.groups:
        dim = {"county_code": "county", "prefecture_code": "prefecture"}[column]
        data[names.group_sd(dim, EQUATION)] = (("chain", "draw"), rng.uniform(0.1, 1.2, shape))
        data[names.group_intercept(dim, EQUATION)] = (
            ("chain", "draw", dim), rng.normal(0, 0.7, (*shape, len(design.levels[column]))))
    coords = {"county" if c == "county_code" else "prefecture": design.levels[c]
              for c in equation.groups}
    posterior = xr.Dataset(data, coords=coords)
    return posterior.rename({"term": f"term_{EQUATION}"})


def _dense(design, posterior, chain: int, draw: int, held_out: str) -> dict[str, float]:
    """Per held-out group: the log density of its campaigns under the dense covariance of the
    integrated levels, the levels above added to the mean."""
    point = posterior.isel(chain=chain, draw=draw)
    equation = design.equations[EQUATION]
    table = design.table
    mean = (float(point[names.intercept(EQUATION)])
            + equation.X @ point[names.coefficients(EQUATION)].values)
    sds = {dim: float(point[names.group_sd(dim, EQUATION)])
           for dim in ("county", "prefecture") if names.group_sd(dim, EQUATION) in point}
    if held_out == "county" and "prefecture_code" in equation.groups:
        mean = mean + point[names.group_intercept("prefecture", EQUATION)].values[
            design.index["prefecture_code"]]
    # holding out a county, its prefecture's intercept is in the mean, not the covariance
    tau_prefecture = sds.get("prefecture", 0.0) if held_out == "prefecture" else 0.0
    covariance = dense_covariance(design, float(point[names.sigma(EQUATION)]),
                                  sds.get("county", 0.0), tau_prefecture)
    units = table[f"{held_out}_code"].astype(str).to_numpy()
    return {unit: float(multivariate_normal(mean[units == unit],
                                            covariance[np.ix_(units == unit, units == unit)])
                        .logpdf(equation.y[units == unit]))
            for unit in np.unique(units)}


@pytest.mark.parametrize("levels", ["(1|prefecture) + (1|county)", "(1|county)",
                                    "(1|prefecture)", ""])
@pytest.mark.parametrize("held_out", ["county", "prefecture"])
def test_held_out_groups_match_a_dense_normal(levels: str, held_out: str) -> None:
    design, _ = tiny_design(levels)
    posterior = _posterior(design, draws=3, seed=len(levels))
    got = group_log_likelihood(posterior, design, EQUATION, held_out)
    assert got.dims == ("chain", "draw", held_out)
    for chain, draw in [(0, 0), (1, 2)]:
        expected = _dense(design, posterior, chain, draw, held_out)
        values = got.isel(chain=chain, draw=draw).to_series()
        assert set(values.index) == set(expected)
        np.testing.assert_allclose(values.loc[list(expected)].to_numpy(),
                                   list(expected.values()), rtol=1e-10, atol=1e-9)


def test_a_non_gaussian_equation_is_refused_plainly() -> None:
    design, _ = tiny_design("(1|county)")
    design.equations[EQUATION].family = "poisson"
    with pytest.raises(FundgapError, match="needs a Gaussian equation"):
        group_log_likelihood(_posterior(design, 2, 0), design, EQUATION, "county")


def test_a_lognormal_equation_is_the_gaussian_of_log_y_with_its_jacobian() -> None:
    design, equation = tiny_design("(1|prefecture) + (1|county)")
    posterior = _posterior(design, draws=2, seed=5)
    gaussian = group_log_likelihood(posterior, design, EQUATION, "prefecture")
    log_y = equation.y.copy()
    equation.family, equation.y = "lognormal", np.exp(log_y)
    lognormal = group_log_likelihood(posterior, design, EQUATION, "prefecture")
    units = design.table["prefecture_code"].astype(str).to_numpy()
    jacobian = np.array([-log_y[units == unit].sum() for unit in gaussian["prefecture"].values])
    np.testing.assert_allclose(lognormal.values, gaussian.values + jacobian, rtol=1e-12)


@pytest.mark.parametrize("levels", ["(1|prefecture) + (1|county)", "(1|county)",
                                    "(1|prefecture)", ""])
@pytest.mark.parametrize("held_out", ["county", "prefecture"])
def test_held_out_groups_from_sufficient_statistics_equal_the_rows(levels: str,
                                                                  held_out: str) -> None:
    """A fit made from sufficient statistics holds out whole groups from each county's
    cross-products: the same log densities as from the rows, in chunks that split counties,
    with a response far from zero and a predictor on a large scale (the sums are centred)."""
    design, _ = tiny_design(levels, n=90, seed=3)
    table = design.table.assign(log_amount_raised=design.table["log_amount_raised"] + 40,
                                development=design.table["development"] * 1e4 + 3e4)
    rows = build_design(design.spec, table)
    reduced = reduce_prepared(design.spec, table, chunk_rows=17, group_sums_of=EQUATION)
    assert reduced.reduced and reduced.rows == len(table)
    posterior = _posterior(rows, draws=4, seed=len(levels) + 1)
    posterior[names.coefficients(EQUATION)] = posterior[names.coefficients(EQUATION)] * [1e-4, 1]
    expected = group_log_likelihood(posterior, rows, EQUATION, held_out)
    got = group_log_likelihood(posterior, reduced, EQUATION, held_out)
    assert got.dims == expected.dims
    got = got.sel({held_out: expected[held_out].values.astype(str)})
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-9, atol=1e-8)


def test_statistics_without_the_groups_sums_are_refused_plainly() -> None:
    design, _ = tiny_design("(1|county)")
    reduced = reduce_prepared(design.spec, design.table)
    with pytest.raises(FundgapError, match="per-county sums"):
        group_log_likelihood(_posterior(design, 2, 0), reduced, EQUATION, "county")


def test_stacking_weights_hold_where_every_unit_is_far_below_zero() -> None:
    """Stacking is unchanged by a shift of each unit's elpd; ArviZ's exp of the elpds
    underflows below about -745 (a prefecture held out on large data) and its weights stay
    at their uniform start, where compare's must not."""
    rng = np.random.default_rng(3)
    units = 200
    better_first = np.where(np.arange(units) < units // 2, 0.0, -1.0)

    def elpds(offset: float) -> dict[str, az.ELPDData]:
        out = {}
        for name, mean in (("first", better_first), ("second", -1.0 - better_first),
                           ("worse", np.full(units, -1.5))):
            draws = offset + mean + 0.05 * rng.standard_normal((2, 200, units))
            out[name] = az.loo(az.from_dict(log_likelihood={"y": draws},
                                            posterior={"mu": np.zeros((2, 200))}))
        return out

    near = compare(elpds(0.0)).set_index("variant")["weight"]
    far = compare(elpds(-1000.0)).set_index("variant")["weight"]
    assert near["first"] == pytest.approx(0.5, abs=0.05)
    assert near["worse"] < 0.01
    pd.testing.assert_series_equal(far.sort_index(), near.sort_index(), atol=0.02)

