"""Sensitivity to mediator-outcome confounding: on data with a confounder of known rho the
naive indirect effect misses the truth and the curve at that rho covers it; at rho = 0 the
curve is effects.csv; the per-draw formula agrees with a refit whose error correlation is
fixed at rho."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fundgap.bayesian import FitSettings, fit_model
from fundgap.cli import main
from fundgap.fitfolder import write_fit
from fundgap.sensitivity import curve_draws, paths
from fundgap.spec import parse_spec

TRUTH = {"a": 0.5, "b": 0.6, "direct": 0.3, "rho": 0.4}
SPEC = """name = "confounded"
exposure = "development"
mediators = ["core_capacity"]
outcome = "log_amount_raised"
[equations.core_capacity]
formula = "core_capacity ~ development"
[equations.log_amount_raised]
formula = "log_amount_raised ~ development + core_capacity"
"""
SETTINGS = FitSettings(draws=1000, tune=600, chains=2, seed=5, progress=False)


def confounded_table(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    """Mediator and outcome errors correlated with TRUTH["rho"] (an unmeasured common
    cause), unit error sds."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    rho = TRUTH["rho"]
    errors = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    mediator = TRUTH["a"] * x + errors[:, 0]
    outcome = TRUTH["direct"] * x + TRUTH["b"] * mediator + errors[:, 1]
    county = rng.integers(0, 50, n)
    return pd.DataFrame({"campaign_id": [f"c{i}" for i in range(n)],
                         "county_code": [f"{110000 + c}" for c in county],
                         "prefecture_code": [f"{120000 + c // 5}" for c in county],
                         "development": x, "core_capacity": mediator,
                         "log_amount_raised": outcome})


@pytest.fixture(scope="module")
def confounded_fit():
    table = confounded_table()
    return fit_model(parse_spec(SPEC, columns=set(table.columns)), table, SETTINGS)


def test_the_curve_at_the_true_rho_covers_what_the_naive_fit_misses(confounded_fit,
                                                                    tmp_path) -> None:
    truth = TRUTH["a"] * TRUTH["b"]
    effects = confounded_fit.effects.set_index("effect")
    naive = effects.loc["indirect"]
    assert not naive["ci_lower"] <= truth <= naive["ci_upper"], naive   # biased upwards
    curve = confounded_fit.sensitivity.set_index(["effect", "rho"])
    at_truth = curve.loc[("indirect", TRUTH["rho"])]
    assert at_truth["ci_lower"] <= truth <= at_truth["ci_upper"], at_truth
    assert at_truth["mean"] == pytest.approx(truth, abs=0.03)
    # at rho = 0 the curve is the fit's own indirect effect and share
    for effect in ("indirect", "share"):
        at_zero = curve.loc[(effect, 0.0)]
        assert at_zero["mean"] == pytest.approx(effects.loc[effect, "mean"], abs=1e-12)
        assert at_zero["ci_lower"] == pytest.approx(effects.loc[effect, "ci_lower"], abs=1e-12)
    # the mean crosses zero where the thresholds say (the curve is exact in rho)
    limits = confounded_fit.sensitivity_thresholds.iloc[0]
    draws = curve_draws(paths(confounded_fit.idata.posterior, confounded_fit.spec, []),
                        np.array([limits["rho_mean_zero"]]))
    assert float(draws["indirect"].mean()) == pytest.approx(0, abs=1e-10)
    assert 0 < limits["rho_interval_zero"] < limits["rho_mean_zero"]
    assert limits["r2_residual_product_mean_zero"] == pytest.approx(
        limits["rho_mean_zero"] ** 2)
    assert 0 < limits["r2_total_product_mean_zero"] < limits["r2_residual_product_mean_zero"]

    # the command recomputes the same from the folder on another grid
    write_fit(confounded_fit, tmp_path / "fit")
    assert main(["sensitivity", str(tmp_path / "fit"), "--rho", "0", str(TRUTH["rho"]),
                 "--out", str(tmp_path / "again")]) == 0
    again = pd.read_csv(tmp_path / "again" / "sensitivity.csv").set_index(["effect", "rho"])
    assert again.loc[("indirect", TRUTH["rho"]), "mean"] == pytest.approx(at_truth["mean"])
    assert (tmp_path / "again" / "sensitivity.png").stat().st_size > 10_000


def test_a_count_outcome_gets_no_curve_and_says_why(tmp_path, capsys) -> None:
    from fundgap.sensitivity import not_supported

    spec = parse_spec(SPEC, columns=set(confounded_table(10).columns))
    reason = not_supported(spec, {"core_capacity": "gaussian",
                                  "log_amount_raised": "negative_binomial"})
    assert "log_amount_raised (negative_binomial) is not" in reason
    assert not_supported(spec, {"core_capacity": "gaussian",
                                "log_amount_raised": "gaussian"}) is None


@pytest.mark.slow
def test_the_formula_agrees_with_a_refit_with_the_correlation_fixed(confounded_fit) -> None:
    """The joint model of mediator and outcome with their errors' correlation fixed at the
    true rho (a bivariate normal, written here in PyMC) gives the indirect effect that the
    per-draw formula gives from the fit that assumed 0."""
    import pymc as pm

    table = confounded_table()
    x, m, y = (table[c].to_numpy() for c in ("development", "core_capacity",
                                             "log_amount_raised"))
    rho = TRUTH["rho"]
    with pm.Model():
        alpha = pm.Normal("alpha", 0, 5, shape=2)
        a = pm.Normal("a", 0, 5)
        b = pm.Normal("b", 0, 5)
        direct = pm.Normal("direct", 0, 5)
        sigma = pm.HalfNormal("sigma", 5, shape=2)
        mediator_mean = alpha[0] + a * x
        pm.Normal("m", mediator_mean, sigma[0], observed=m)
        outcome_mean = alpha[1] + direct * x + b * m
        # y | m under errors correlated with rho
        pm.Normal("y", outcome_mean + rho * sigma[1] / sigma[0] * (m - mediator_mean),
                  sigma[1] * np.sqrt(1 - rho**2), observed=y)
        pm.Deterministic("indirect", a * b)
        refit = pm.sample(1000, tune=600, chains=2, random_seed=3, nuts_sampler="nutpie",
                          progressbar=False)
    refitted = refit.posterior["indirect"]
    curve = confounded_fit.sensitivity.set_index(["effect", "rho"]).loc[("indirect", rho)]
    assert curve["mean"] == pytest.approx(float(refitted.mean()), abs=0.01)
    assert curve["sd"] == pytest.approx(float(refitted.std()), rel=0.2)
