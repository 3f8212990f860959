"""Families as data (fundgap.families): each record's PyMC and scipy sides agree, a spec may
name any of them, and a family added as one record (Poisson) fits end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
import statsmodels.api as sm

from fundgap.bayesian import fit_model
from fundgap.design import build_design
from fundgap.errors import SpecError
from fundgap.families import FAMILIES, FREQUENTIST_FAMILIES, family
from fundgap.frequentist_tables import ols_table
from fundgap.gate import reported_prefixes
from fundgap.spec import parse_spec

from conftest import GROUPED_COLUMNS, QUICK, grouped_spec_text, grouped_table

# a response each family accepts, and values of its own parameters
RESPONSES = {"gaussian": [-1.3, 0.2, 2.5], "student_t": [-1.3, 0.2, 2.5],
             "lognormal": [0.3, 1.2, 7.0], "poisson": [0, 3, 11],
             "negative_binomial": [0, 3, 11], "bernoulli": [0, 1, 1],
             "beta": [0.05, 0.5, 0.93], "censored_lognormal": [0.2, 0.7, 1.0]}
AUXILIARY = {"sigma": 0.7, "nu": 4.5, "dispersion": 2.5, "precision": 12.0}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pymc_and_scipy_sides_of_a_family_are_one_distribution(name: str) -> None:
    record = family(name)
    y = np.array(RESPONSES[name], dtype=float)
    eta = np.array([-0.4, 0.3, 1.1])
    auxiliary = {a.name: AUXILIARY[a.name] for a in record.auxiliary}
    symbolic = record.log_density(y, pt.as_tensor(eta), {k: pt.as_tensor(v)
                                                        for k, v in auxiliary.items()})
    pymc_side = pytensor.function([], symbolic)()
    scipy_side = record.pointwise_log_likelihood(record.predictive(eta, auxiliary), y)
    np.testing.assert_allclose(pymc_side, scipy_side, rtol=1e-7)
    # the mean the effects use is the predictive distribution's mean
    np.testing.assert_allclose(record.mean(eta, auxiliary),
                               record.predictive(eta, auxiliary).mean(), rtol=1e-10)


def test_every_family_is_named_and_reported_from_its_record() -> None:
    assert {"poisson", "negative_binomial", "bernoulli", "beta"} <= set(FAMILIES)
    for record in FAMILIES.values():
        for auxiliary in record.auxiliary:
            assert f"{auxiliary.name}_" in reported_prefixes(())
    assert "poisson" in FREQUENTIST_FAMILIES and "lognormal" not in FREQUENTIST_FAMILIES
    with pytest.raises(SpecError, match=r"unknown family 'zip'.*poisson"):
        parse_spec(grouped_spec_text("zip"), "zip.toml", GROUPED_COLUMNS)


def test_a_family_draws_its_own_parameters_from_its_priors() -> None:
    with pm.Model():
        drawn = family("negative_binomial").auxiliary_priors("y", pt.as_tensor(1.0))
    assert list(drawn) == ["dispersion"] and drawn["dispersion"].name == "dispersion_y"


def test_poisson_equation_recovers_its_truth_and_matches_statsmodels() -> None:
    table = grouped_table("poisson", campaigns=800, counties=80, prefectures=10, seed=3,
                          intercept=1.0, slope=0.4, county_sd=0.3, prefecture_sd=0.25)
    spec = parse_spec(grouped_spec_text("poisson"), "poisson.toml", GROUPED_COLUMNS)
    fit = fit_model(spec, table, dataclasses.replace(QUICK, draws=600, tune=600,
                                                     form="explicit"))
    assert fit.diagnostics["divergences"] == 0
    summary = fit.summary
    slope = summary.loc["coefficients_y[x]"]
    assert abs(slope["mean"] - 0.4) < 3 * slope["sd"]
    assert summary.loc["county_sd_y", "hdi_2.5%"] < 0.3 < summary.loc["county_sd_y",
                                                                      "hdi_97.5%"]
    # the total effect is the g-computation contrast of the expected count, near
    # mean(y) * (exp(slope) - 1)
    total = fit.effects.set_index("effect").loc["total", "mean"]
    assert total == pytest.approx(table["y"].mean() * np.expm1(slope["mean"]), rel=0.1)
    # the frequentist counterpart is statsmodels' Poisson maximum likelihood
    ols, _ = ols_table(spec, table)
    row = ols.set_index("term").loc["x"]
    assert row["method"] == "poisson"
    assert abs(row["estimate"] - slope["mean"]) < 2 * row["std_error"]
    # and the posterior predictive is integer counts from the Poisson record
    predicted = fit.idata.posterior_predictive["y"].values
    assert np.array_equal(predicted, np.round(predicted)) and predicted.min() >= 0


def test_censored_share_regression_is_ols_below_the_cap_and_recovers_truth_above_it() -> None:
    spec = parse_spec(grouped_spec_text("censored_lognormal"), "share.toml", GROUPED_COLUMNS)
    # no share reaches the cap: the Tobit is OLS of the log share (statsmodels)
    low = grouped_table("censored_lognormal", 600, 40, 5, seed=4, intercept=-3.0,
                        county_sd=0.0, prefecture_sd=0.0, sigma=0.5)
    assert low["y"].max() < 1
    ours = ols_table(spec, low)[0].set_index("term")
    theirs = sm.OLS(np.log(low["y"]), sm.add_constant(low[["x"]])).fit()
    np.testing.assert_allclose(ours.loc["x", "estimate"], theirs.params["x"], rtol=1e-5)
    # the maximum-likelihood sd divides by n, OLS's by n - k
    np.testing.assert_allclose(ours.loc["x", "std_error"], theirs.bse["x"], rtol=2e-2)
    # 40% capped at 1: the Tobit finds the slope, OLS of the log share is pulled towards 0
    high = grouped_table("censored_lognormal", 3000, 40, 5, seed=4, intercept=-0.2,
                         slope=0.4, county_sd=0.0, prefecture_sd=0.0, sigma=0.8)
    assert 0.3 < (high["y"] >= 1).mean() < 0.5
    row = ols_table(spec, high)[0].set_index("term").loc["x"]
    assert row["method"].startswith("Tobit")
    assert abs(row["estimate"] - 0.4) < 3 * row["std_error"]
    naive = sm.OLS(np.log(high["y"]), sm.add_constant(high[["x"]])).fit().params["x"]
    assert naive < 0.4 - 5 * row["std_error"]
    with pytest.raises(SpecError, match=r"share.toml: equations.y .*\(0, 1\]"):
        build_design(spec, high.assign(y=high["y"] * 1.5))
