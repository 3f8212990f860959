"""The hierarchical logit of Table 7 fitted for real (its intercepts integrated out by the
Laplace approximation)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from fundgap.bayesian import fit_model, settings_for
from fundgap.defaults import LAPLACE_AUTO
from fundgap.spec import load_spec, parse_spec

from conftest import QUICK, RECOMMENDATION


@pytest.mark.slow
def test_logit_recovers_the_development_slope(default_table: pd.DataFrame,
                                              default_simulation: Path) -> None:
    # recommended is simulated from development alone, so the model without the study's
    # controls (some of which the channel itself moves) has a known truth
    text = RECOMMENDATION.read_text().replace("development + {controls} + {levels}",
                                              "development + {levels}")
    spec = parse_spec(text, "development_only.toml")
    settings = dataclasses.replace(QUICK, **{**load_spec(RECOMMENDATION).sampler,
                                             "chains": 2})
    fit = fit_model(spec, default_table, settings)
    assert fit.diagnostics["form"] == "laplace"
    assert fit.diagnostics["passed"], fit.diagnostics["reasons"]
    truth = json.loads((default_simulation / "truth.json").read_text())["recommendation"]
    row = fit.summary.loc["coefficients_recommended[development]"]
    assert row["hdi_2.5%"] <= truth["logit_development"] <= row["hdi_97.5%"]
    # the average marginal effect on the probability has the coefficient's sign and a
    # size near p(1 - p) times it
    effect = fit.effects.set_index("effect").loc["total"]
    p = default_table["recommended"].mean()
    assert effect["mean"] == pytest.approx(p * (1 - p) * row["mean"], rel=0.25, abs=0.003)


def test_recommendation_spec_runs_the_laplace_form_at_default_settings() -> None:
    spec = load_spec(RECOMMENDATION)
    assert spec.sampler == {}
    assert "bernoulli" in LAPLACE_AUTO
    settings = settings_for(spec, draws=None, seed=3)
    assert (settings.draws, settings.tune, settings.seed) == (1000, 1000, 3)
    assert settings_for(spec, draws=500).draws == 500
