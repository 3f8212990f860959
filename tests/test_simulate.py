"""The simulator: determinism, agreement of truth with the written data, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import yaml

from fundgap.cli import main
from fundgap.contract import load_dataset, validate
from fundgap.describe import occupancy
from fundgap.prepare import prepare
from fundgap.published import published_tables
from fundgap.simulation.development import MEDIATORS, OUTCOME, simulate, write_simulation

from conftest import PUBLISHED, REAL_COUNTIES

CONTROLS = ("target_amount_10k + male + ses_index + recommended + emotional_rating"
            " + C(age_group) + C(disease_type) + population_millions + aged60_share"
            " + minority_share + sex_ratio_at_birth")
DATA_FILES = ("campaigns.csv", "counties.csv", "donations.csv", "ratings.csv", "truth.json",
              "truth_intercepts.csv", "README.md")


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_simulation(simulate(n_campaigns=150, seed=11), tmp_path / name)
    for file in DATA_FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    write_simulation(simulate(n_campaigns=150, seed=12), tmp_path / "c")
    assert (tmp_path / "a" / "campaigns.csv").read_bytes() != \
        (tmp_path / "c" / "campaigns.csv").read_bytes()


def test_simulated_data_pass_the_contract(small_simulation: Path) -> None:
    assert validate(small_simulation) == []
    counties = pd.read_csv(small_simulation / "counties.csv")
    assert counties["gdp_per_capita_simulated"].all()


def test_truth_describes_the_written_data(small_simulation: Path) -> None:
    """Rebuild each equation from truth.json and the drawn intercepts: what is left is the
    residual, with the recorded sd and mean zero."""
    truth = json.loads((small_simulation / "truth.json").read_text())
    prepared = prepare(load_dataset(small_simulation))
    table = prepared.table
    assert prepared.diagnostics["development_factor"]["variance_explained"] == pytest.approx(
        truth["development_factor"]["variance_explained"], abs=1e-9)
    assert prepared.diagnostics["rating_icc"] == pytest.approx(truth["rating_icc"])
    intercepts = pd.read_csv(small_simulation / "truth_intercepts.csv", dtype={"code": str})
    mixed = table["channel"] == "mixed"
    for name in (*MEDIATORS, OUTCOME):
        equation = truth["equations"][name]
        slope = np.where(mixed, equation["development"]["mixed"],
                         equation["development"]["acquaintance"])
        systematic = equation["intercept"] + slope * table["development"]
        for term, coefficient in equation["coefficients"].items():
            if "[" in term:
                variable, level = term[:-1].split("[")
                systematic = systematic + coefficient * (table[variable].astype(str) == level)
            else:
                systematic = systematic + coefficient * table[term]
        for level, column in (("county", "county_code"), ("prefecture", "prefecture_code")):
            drawn = intercepts[(intercepts["level"] == level) & (intercepts["equation"] == name)]
            systematic = systematic + table[column].map(drawn.set_index("code")["value"])
        residual = table[name] - systematic
        assert residual.notna().all()
        assert abs(residual.mean()) < 0.15 * equation["residual_sd"], name
        # verifier counts are rounded and floored; capacities measured from streams
        assert residual.std() == pytest.approx(equation["residual_sd"], rel=0.12), name
    assert truth["settings"]["n_campaigns"] == 400


def test_truth_effects_decompose() -> None:
    truth = simulate(n_campaigns=120, seed=3).truth["effects_per_sd_development"]
    for channel in ("acquaintance", "mixed", "pooled"):
        effect = truth[channel]
        assert effect["total"] == pytest.approx(effect["direct"] + sum(effect["indirect"].values()))
        for mediator in MEDIATORS:
            assert effect["indirect"][mediator] == pytest.approx(
                effect["a"][mediator] * effect["b"][mediator])
    # the channel moderates the gradient as in Table 5
    assert truth["acquaintance"]["total"] > 0.1 > 0.03 > truth["mixed"]["total"]


def test_generated_hierarchy_is_nested(small_simulation: Path) -> None:
    counties = pd.read_csv(small_simulation / "counties.csv", dtype=str)
    assert counties["county_code"].is_unique and len(counties) > 2000
    assert (counties["county_code"].str[:4] == counties["prefecture_code"].str[:4]).all()
    assert (counties["county_code"].str[:2] == counties["province_code"].str[:2]).all()


def test_reuse_skips_identical_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data"
    args = ["simulate", "--out", str(out), "--n-campaigns", "100", "--seed", "5"]
    assert main(args) == 0
    stamp = (out / "campaigns.csv").stat().st_mtime_ns
    assert main([*args, "--reuse"]) == 0
    assert "reused" in capsys.readouterr().out
    assert (out / "campaigns.csv").stat().st_mtime_ns == stamp
    assert main(["simulate", "--out", str(out), "--n-campaigns", "100", "--seed", "6",
                 "--reuse"]) == 0
    assert (out / "campaigns.csv").stat().st_mtime_ns != stamp


# ---------------------------------------------------------------- calibration to the study


@pytest.fixture(scope="module")
def default_table(default_simulation: Path) -> pd.DataFrame:
    return prepare(load_dataset(default_simulation)).table


@pytest.fixture(scope="module")
def published() -> dict:
    return published_tables()


@pytest.mark.skipif(not PUBLISHED.exists(), reason="shared spec not available")
def test_packaged_published_tables_match_the_spec() -> None:
    assert published_tables() == yaml.safe_load(PUBLISHED.read_text())


def test_county_occupancy_is_like_the_study(default_table: pd.DataFrame) -> None:
    occ = occupancy(default_table)
    assert 1250 <= occ["n_counties"] <= 1550               # study: 1395
    assert 0.40 <= occ["share_campaigns_in_counties_seen_once"] <= 0.54   # 0.471
    assert 0.22 <= occ["share_campaigns_in_counties_seen_twice"] <= 0.36  # 0.276
    assert occ["counties_seen_more_than_5"] < 15               # "fewer than 10"
    assert 0.74 <= default_table["recommended"].mean() <= 0.82  # 0.779


@pytest.mark.parametrize("variable", [
    "log_amount_raised", "core_capacity", "derived_capacity", "verifier_count",
    "log_reposts", "target_amount_10k", "recommended", "male", "age"])
def test_table1_means_and_sds_within_15_percent(default_table: pd.DataFrame, published: dict,
                                               variable: str) -> None:
    key = {"target_amount_10k": "target_amount_10k_yuan"}.get(variable, variable)
    mean, sd, _low, _high = published["table1_descriptives"][key]
    assert default_table[variable].mean() == pytest.approx(mean, rel=0.15)
    assert default_table[variable].std() == pytest.approx(sd, rel=0.15)


@pytest.mark.parametrize("variable", ["ses_index", "emotional_rating"])
def test_table1_sds_of_centred_variables(default_table: pd.DataFrame, published: dict,
                                         variable: str) -> None:
    _mean, sd, _low, _high = published["table1_descriptives"][variable]
    assert abs(default_table[variable].mean()) < 0.1 * sd
    assert default_table[variable].std() == pytest.approx(sd, rel=0.15)


def _ols(formula: str, data: pd.DataFrame):
    return smf.ols(formula, data).fit()


def test_ols_lands_near_table2(default_table: pd.DataFrame, published: dict) -> None:
    table2 = published["table2_outcome_ols"]
    m1 = _ols(f"log_amount_raised ~ development + {CONTROLS}", default_table)
    estimate, se = table2["m1"]["development"]
    assert abs(m1.params["development"] - estimate) < 3 * max(se, m1.bse["development"])
    mediators = " + ".join(MEDIATORS)
    m6 = _ols(f"log_amount_raised ~ development + {mediators} + {CONTROLS}", default_table)
    estimate, se = table2["m6"]["development"]
    assert abs(m6.params["development"] - estimate) < 3 * max(se, m6.bse["development"])
    for mediator in ("core_capacity", "derived_capacity", "log_reposts"):
        assert m6.params[mediator] == pytest.approx(table2["m6"][mediator][0], rel=0.15)
    assert m6.params["verifier_count"] == pytest.approx(0.003, abs=0.001)
    assert m6.rsquared_adj == pytest.approx(table2["m6"]["adj_r2"], abs=0.06)


def test_ols_lands_near_table5(default_table: pd.DataFrame, published: dict) -> None:
    table5 = published["table5_channels"]
    for channel, key in (("acquaintance", "acquaintance_only"), ("mixed", "mixed")):
        subset = default_table[default_table["channel"] == channel]
        fit = _ols(f"log_amount_raised ~ development + {CONTROLS.replace('recommended + ', '')}",
                   subset)
        estimate, se = table5[key]["development"]
        assert abs(fit.params["development"] - estimate) < 3 * max(se, fit.bse["development"])


# the factor's figures come from the real counties' census indicators, not generated ones
@pytest.mark.skipif(not REAL_COUNTIES.exists(), reason="shared county table not available")
def test_development_factor_is_like_the_study(default_simulation: Path) -> None:
    factor = json.loads((default_simulation / "truth.json").read_text())["development_factor"]
    assert len(factor["indicators"]) == 4
    assert 0.70 <= factor["variance_explained"] <= 0.85       # study 0.737
    assert min(factor["loadings"].values()) >= 0.70             # study 0.75-0.94
    assert 0.70 <= factor["kmo"] <= 0.85                        # study 0.76
    assert factor["bartlett_p"] < 0.001


@pytest.mark.skipif(not REAL_COUNTIES.exists(), reason="shared county table not available")
def test_real_counties_are_used(default_simulation: Path) -> None:
    campaigns = pd.read_csv(default_simulation / "campaigns.csv", dtype={"county_code": str})
    real = pd.read_csv(REAL_COUNTIES, dtype={"county_code": str})
    assert campaigns["county_code"].isin(real["county_code"]).all()
