"""Table 4 without dropping counties: every variant fits, the subsets are the study's, and
LOO prefers partial pooling to none on data simulated with county and prefecture effects."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from fundgap.robustness import (
    DROPPED_CONTROLS,
    POOLING,
    SUBSETS,
    applies,
    robustness,
    variant,
    variant_names,
)
from fundgap.spec import load_spec

from conftest import QUICK, RECOMMENDATION, REGIONAL


def test_variants_change_only_filter_or_groups() -> None:
    spec = load_spec(REGIONAL)
    subset = variant(spec, "counties_seen_2plus")
    assert subset.filter == "county_campaigns >= 2" and subset.equations == spec.equations
    pooled = variant(spec, "complete_pooling")
    assert all(e.groups == () for e in pooled.equations.values())
    assert all(a.fixed_formula == b.fixed_formula for a, b in
               zip(pooled.equations.values(), spec.equations.values(), strict=True))
    assert variant(spec, "county_only").equations[spec.outcome].groups == ("county_code",)


@pytest.mark.slow
def test_robustness_side_by_side_and_loo(default_table: pd.DataFrame) -> None:
    settings = dataclasses.replace(QUICK, draws=1000, tune=1000, predictive_draws=400)
    side_by_side, loo = robustness(load_spec(REGIONAL), default_table, settings)
    rows = side_by_side.set_index("variant")
    assert set(rows.index) == {*POOLING, *SUBSETS, *DROPPED_CONTROLS}
    counts = default_table["county_campaigns"]
    assert rows.loc["counties_seen_2plus", "campaigns"] == (counts >= 2).sum()
    assert rows.loc["counties_seen_3plus", "campaigns"] == (counts >= 3).sum()
    assert rows.loc["complete_pooling", "county_sd_mean"] is None or pd.isna(
        rows.loc["complete_pooling", "county_sd_mean"])
    assert (rows["divergences"] == 0).all()
    # the direct effect on all campaigns is estimated at least as tightly as on the subsets
    width = rows["direct_ci_upper"] - rows["direct_ci_lower"]
    assert width["county_in_prefecture"] < width["counties_seen_3plus"]
    assert set(loo["held_out"]) == {"campaign", "county", "prefecture"}
    for held_out, ranked in loo.groupby("held_out"):
        ranked = ranked.set_index("variant")
        assert set(ranked.index) == set(POOLING)
        assert (ranked.loc["county_in_prefecture", "elpd_loo"]
                > ranked.loc["complete_pooling", "elpd_loo"]), held_out
    # a whole county held out, its intercept integrated out: the campaign-level comparison's
    # high Pareto k (counties seen once) mostly go
    county = loo[loo["held_out"] == "county"].set_index("variant")
    campaign = loo[loo["held_out"] == "campaign"].set_index("variant")
    assert (county.loc["county_in_prefecture", "pareto_k_above_0_7"]
            < campaign.loc["county_in_prefecture", "pareto_k_above_0_7"])


def test_an_exposure_variant_puts_its_column_in_the_exposures_place() -> None:
    """Table 7's models 2-5: the recommendation spec with each indicator instead of the
    development factor, in every equation, nothing else changed."""
    spec = load_spec(RECOMMENDATION)
    assert variant_names(spec) == ["county_in_prefecture", "m2", "m3", "m4", "m5"]
    indicator = variant(spec, "m3")
    assert (indicator.name, indicator.exposure) == ("recommendation.m3", "urbanisation_rate")
    for name, equation in indicator.equations.items():
        original = spec.equations[name]
        assert set(equation.variables) == (set(original.variables) - {"development"}
                                           | {"urbanisation_rate"})
        assert equation.formula == original.formula.replace("development",
                                                            "urbanisation_rate")
        assert "development" not in equation.fixed_formula
        assert (equation.groups, equation.family) == (original.groups, original.family)
    # each Table 7 model's frequentist counterpart names its variant
    assert {m.model: m.variant for m in spec.tables} == {
        "m1": None, "m2": "m2", "m3": "m3", "m4": "m4", "m5": "m5"}


def test_the_variant_without_recommended_drops_it_from_every_equation() -> None:
    spec = load_spec(REGIONAL)
    assert applies(spec, "without_recommended")
    without = variant(spec, "without_recommended")
    for name, equation in without.equations.items():
        original = spec.equations[name]
        assert "recommended" not in equation.variables
        assert "recommended" not in equation.fixed_formula
        assert set(equation.variables) == set(original.variables) - {"recommended"}
        assert equation.groups == original.groups
        assert "(1|county)" in equation.formula
    # a spec whose exposure it is keeps it: the variant does not apply
    assert not applies(dataclasses.replace(spec, exposure="recommended"),
                       "without_recommended")


def test_variants_fitted_from_sufficient_statistics(tmp_path) -> None:
    """`statistics="always"`: every variant is fitted from the table's sums (no rows kept),
    its counts are the rows', and the pooling variants are compared by whole counties and
    prefectures held out (no campaign block: no per-campaign draws)."""
    import json

    import numpy as np

    from fundgap.pipeline import fit_robustness
    from fundgap.spec import parse_spec

    rng = np.random.default_rng(7)
    county = rng.integers(0, 40, 400)
    table = pd.DataFrame({
        "campaign_id": [f"c{i}" for i in range(400)],
        "county_code": [f"{110000 + c}" for c in county],
        "prefecture_code": [f"{120000 + c // 5}" for c in county],
        "development": rng.standard_normal(400),
    })
    table["county_campaigns"] = table.groupby("county_code")["county_code"].transform("size")
    table["log_amount_raised"] = (0.3 * table["development"]
                                  + rng.normal(0, 0.6, 8)[county // 5]
                                  + rng.standard_normal(400))
    spec = parse_spec(
        'name = "t"\nexposure = "development"\noutcome = "log_amount_raised"\n'
        "[equations.log_amount_raised]\n"
        'formula = "log_amount_raised ~ development + (1|prefecture) + (1|county)"\n'
        '[robustness]\nvariants = ["counties_seen_2plus", "prefecture_only", '
        '"complete_pooling"]\n', columns=set(table.columns))
    settings = dataclasses.replace(QUICK, chains=2, draws=300, tune=300)
    side_by_side, loo = fit_robustness(spec, table, tmp_path, settings, statistics="always")
    rows = side_by_side.set_index("variant")
    assert rows.loc["complete_pooling", "campaigns"] == 400
    assert rows.loc["counties_seen_2plus", "campaigns"] == (table["county_campaigns"] >= 2).sum()
    assert rows.loc["prefecture_only", "counties"] == table["county_code"].nunique()
    assert (rows["divergences"] == 0).all()
    assert set(loo["held_out"]) == {"county", "prefecture"}
    assert set(loo["variant"]) == {"prefecture_only", "complete_pooling"}
    # with prefecture effects in the data, pooling by prefecture predicts a new county
    # better than no pooling
    county_block = loo[loo["held_out"] == "county"].set_index("variant")
    assert county_block.loc["prefecture_only", "elpd_loo"] > \
        county_block.loc["complete_pooling", "elpd_loo"]
    record = json.loads((tmp_path / "robustness.json").read_text())
    assert record["data_form"] == "sufficient statistics"
