"""Cross-checks that cost minutes: the explicit form against the marginalised one, the
outcome equation against bambi, PyMC's own sampler, and interval coverage over repeated
simulations. Marked slow; `make test` runs them (in parallel with the rest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from fundgap.bayesian import FitSettings, fit_model
from fundgap.contract import load_dataset
from fundgap.prepare import prepare
from fundgap.spec import load_spec, parse_spec

from conftest import REGIONAL


@pytest.mark.slow
def test_explicit_and_marginal_forms_agree(default_table: pd.DataFrame, regional_fit):
    settings = FitSettings(draws=800, tune=800, chains=2, seed=5, progress=False,
                           form="explicit", predictive_draws=20)
    explicit = fit_model(load_spec(REGIONAL), default_table, settings)
    assert explicit.diagnostics["divergences"] == 0
    for name in regional_fit.spec.equations:
        for variable in (f"coefficients_{name}", f"sigma_{name}"):
            a = explicit.idata.posterior[variable]
            b = regional_fit.idata.posterior[variable]
            difference = np.abs(a.mean(("chain", "draw")) - b.mean(("chain", "draw")))
            assert np.all(difference < 0.3 * b.std(("chain", "draw"))), variable


@pytest.mark.slow
def test_outcome_equation_agrees_with_bambi(default_table: pd.DataFrame, regional_fit):
    import bambi as bmb

    spec = regional_fit.spec
    equation = spec.equations[spec.outcome]
    formula = equation.formula.replace("(1|prefecture)", "(1|prefecture_code)").replace(
        "(1|county)", "(1|county_code)")
    data = default_table.assign(age_group=default_table["age_group"].astype(str))
    model = bmb.Model(" ".join(formula.split()), data)
    idata = model.fit(draws=600, tune=600, chains=2, random_seed=3,
                      inference_method="nutpie", progressbar=False)
    ours = regional_fit.idata.posterior[f"coefficients_{spec.outcome}"]
    for term in ("development", *spec.mediators):
        theirs = idata.posterior[term]
        mine = ours.sel({f"term_{spec.outcome}": term})
        assert abs(float(theirs.mean()) - float(mine.mean())) < 0.3 * float(mine.std()), term


@pytest.mark.slow
def test_pymc_backend_runs_and_is_seeded(small_table: pd.DataFrame):
    text = ('name = "t"\nexposure = "development"\noutcome = "log_amount_raised"\n'
            "[equations.log_amount_raised]\n"
            'formula = "log_amount_raised ~ development + male"')
    spec = parse_spec(text, "tiny.toml")
    settings = FitSettings(draws=300, tune=300, chains=2, seed=4, backend="pymc",
                           progress=False)
    first = fit_model(spec, small_table, settings)
    second = fit_model(spec, small_table, settings)
    np.testing.assert_array_equal(
        first.idata.posterior["coefficients_log_amount_raised"].values,
        second.idata.posterior["coefficients_log_amount_raised"].values)
    ols = smf.ols("log_amount_raised ~ development + male", small_table).fit()
    draws = first.idata.posterior["coefficients_log_amount_raised"].sel(
        term_log_amount_raised="development")
    assert abs(float(draws.mean()) - ols.params["development"]) < 0.3 * ols.bse["development"]


COVERAGE_DATA_SETS = 20
# 120 intervals (6 effects in each of 20 data sets, correlated within a data set): the
# bounds sit some 2.5 binomial sds from the nominal rates; benchmarks/calibration.py
# measures the rates themselves over 100 data sets
COVER_95_AT_LEAST = 0.87
COVER_50_WITHIN = (0.33, 0.67)


@pytest.mark.slow
def test_interval_coverage_over_repeated_simulations(tmp_path: Path):
    """Twenty data sets from different seeds, fitted with one compiled model (its data
    swapped in): the central 50% and 95% intervals of the total, direct and indirect effects
    cover the truth at close to the nominal rates (benchmarks/calibration.py measures it
    over 100 data sets and every kind of quantity)."""
    from fundgap.contract import read_table
    from fundgap.effects import effect_draws
    from fundgap.simulation.development import simulate, write_simulation

    from conftest import REAL_COUNTIES

    counties = read_table(REAL_COUNTIES, "counties") if REAL_COUNTIES.exists() else None
    shares, compile_seconds = [], []
    settings = FitSettings(draws=1000, tune=1000, chains=2, seed=9, progress=False,
                           per_campaign="skip", reuse_compiled=True)
    for seed in range(101, 101 + COVERAGE_DATA_SETS):
        folder = write_simulation(simulate(seed=seed, counties=counties), tmp_path / str(seed))
        truth = json.loads((folder / "truth.json").read_text())
        pooled = truth["effects_per_sd_development"]["pooled"]
        result = fit_model(load_spec(REGIONAL), prepare(load_dataset(folder)).table, settings)
        compile_seconds.append(result.diagnostics["compile_seconds"])
        draws = effect_draws(result.idata.posterior, result.design)
        targets = [(draws["total"], pooled["total"]), (draws["direct"], pooled["direct"]),
                   *[(draws["indirect"].sel(mediator=m), value)
                     for m, value in pooled["indirect"].items()]]
        # where the truth falls among the draws: inside the central q interval where this
        # share is within q / 2 of one half
        shares += [float((values.values < value).mean()) for values, value in targets]
    # compiled once, by the first replicate, and reused with each new data set
    assert max(compile_seconds[1:]) < 1.0
    distance = np.abs(np.asarray(shares) - 0.5)
    cover_95, cover_50 = (distance <= 0.475).mean(), (distance <= 0.25).mean()
    assert cover_95 >= COVER_95_AT_LEAST, f"95% intervals cover {cover_95:.1%} of {len(shares)}"
    assert COVER_50_WITHIN[0] <= cover_50 <= COVER_50_WITHIN[1], \
        f"50% intervals cover {cover_50:.1%} of {len(shares)}"

