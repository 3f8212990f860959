"""Preparation formulas against values computed by hand on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fundgap.cli import main
from fundgap.contract import load_dataset
from fundgap.factor import development_factor, kaiser_meyer_olkin
from fundgap.prepare import (
    PrepareOptions,
    age_group,
    average_census,
    donation_capacities,
    emotional_ratings,
    intraclass_correlation,
    log_reposts,
    prefecture_measures,
    prepare,
    read_prepared,
    standardise_within_rater,
)
from fundgap.rules import EXTRA_COLUMNS, PREPARED_COLUMNS

from conftest import COUNTY_VALUES, tiny_campaigns, tiny_donations, tiny_ratings


def test_core_and_derived_windows() -> None:
    capacities = donation_capacities(tiny_donations())
    c1, c2, c3 = (capacities.loc[c] for c in ("C1", "C2", "C3"))
    assert c1["core_capacity"] == pytest.approx(np.mean(np.arange(1, 101)) / 100)  # 0.505
    assert c1["derived_capacity"] == pytest.approx(np.mean(np.arange(301, 351)) / 100)
    assert c1["derived_capacity_rule"] == "after_300"
    # 150 donations: no donation after the 300th, so the donations after the 100th are used
    assert (c2["core_capacity"], c2["derived_capacity"]) == pytest.approx((0.10, 0.20))
    assert c2["derived_capacity_rule"] == "after_100"
    # 5 donations: the whole stream
    assert (c3["core_capacity"], c3["derived_capacity"]) == pytest.approx((0.03, 0.03))
    assert c3["derived_capacity_rule"] == "all"


def test_short_streams_can_be_left_missing() -> None:
    capacities = donation_capacities(tiny_donations(), short_streams="missing")
    assert capacities["derived_capacity"].notna().tolist() == [True] + [False] * 7
    assert set(capacities["derived_capacity_rule"].iloc[1:]) == {"missing"}
    assert capacities.loc["C2", "core_capacity"] == pytest.approx(0.10)


def test_stream_order_does_not_matter() -> None:
    shuffled = tiny_donations().sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(donation_capacities(shuffled).sort_index(),
                                  donation_capacities(tiny_donations()).sort_index())


def test_within_rater_standardisation() -> None:
    ratings = pd.DataFrame({"campaign_id": ["a", "b", "c", "a", "b", "c"],
                            "rater_id": ["r1"] * 3 + ["r2"] * 3, "dimension": "text",
                            "score": [2.0, 4.0, 6.0, 7.0, 7.0, 7.0]})
    z = standardise_within_rater(ratings)
    assert z.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # sd 2; r2 no spread


def test_emotional_rating_averages_raters_then_dimensions() -> None:
    rated, icc = emotional_ratings(tiny_ratings())
    ratings = tiny_ratings()
    z = ratings.groupby(["rater_id", "dimension"])["score"].transform(
        lambda s: (s - s.mean()) / s.std(ddof=1))
    by_hand = ratings.assign(z=z).groupby(["campaign_id", "dimension"])["z"].mean().unstack()
    assert rated.loc["C3", "image_rating"] == pytest.approx(by_hand.loc["C3", "image"])
    expected = (by_hand["image"] + by_hand["text"]) / 2
    assert rated["emotional_rating"].to_numpy() == pytest.approx(expected.to_numpy())
    assert set(icc) == {"image", "text"} and all(0 < v <= 1 for v in icc.values())


def test_icc_matches_the_balanced_formula() -> None:
    # 3 targets x 2 ratings: MSB and MSW by hand
    groups = pd.Series(["a", "a", "b", "b", "c", "c"])
    values = pd.Series([1.0, 2.0, 4.0, 5.0, 8.0, 6.0])
    means = np.array([1.5, 4.5, 7.0])
    msb = 2 * np.sum((means - values.mean()) ** 2) / 2
    msw = (0.25 + 0.25 + 0.25 + 0.25 + 1.0 + 1.0) / 3
    assert intraclass_correlation(groups, values) == pytest.approx((msb - msw) / (msb + msw))


def test_log_reposts_and_age_groups() -> None:
    assert log_reposts(pd.Series([0, 9])).tolist() == pytest.approx([0.0, np.log(10)])
    groups = age_group(pd.Series([0, 17, 18, 39, 40, 59, 60, 120])).astype(str).tolist()
    assert groups == ["0-17", "0-17", "18-39", "18-39", "40-59", "40-59", "60+", "60+"]


def test_census_average_uses_the_other_year_when_one_is_missing() -> None:
    counties = pd.DataFrame({"county_code": ["1", "2"],
                             "aged60_share_2010": [0.10, np.nan],
                             "aged60_share_2020": [0.20, 0.30]})
    averaged, single = average_census(counties)
    assert averaged["aged60_share"].tolist() == pytest.approx([0.15, 0.30])
    assert single == {"aged60_share": 1}
    assert average_census(counties, used={"1"})[1] == {"aged60_share": 0}


def test_factor_orientation_scale_and_diagnostics() -> None:
    rng = np.random.default_rng(5)
    latent = rng.standard_normal(400)
    # the first column is reversed: "more developed" must still mean higher schooling
    frame = pd.DataFrame({"schooling": 9 + latent + 0.4 * rng.standard_normal(400),
                          "urban": 0.5 + 0.2 * latent + 0.1 * rng.standard_normal(400),
                          "rural": -latent + 0.6 * rng.standard_normal(400)})
    scores, diagnostics = development_factor(frame, orient_by="schooling")
    assert np.corrcoef(scores, frame["schooling"])[0, 1] > 0.8
    assert scores.mean() == pytest.approx(0, abs=1e-12)
    assert scores.std(ddof=1) == pytest.approx(1)
    assert diagnostics.loadings["schooling"] > 0 > diagnostics.loadings["rural"]
    correlation = np.corrcoef(frame.to_numpy(), rowvar=False)
    largest = np.linalg.eigvalsh(correlation).max()
    assert diagnostics.variance_explained == pytest.approx(largest / 3)
    assert diagnostics.eigenvalues[0] == pytest.approx(largest)
    # Bartlett: -(n - 1 - (2p + 5) / 6) log|R| with p(p - 1) / 2 degrees of freedom
    chi2 = -(400 - 1 - (2 * 3 + 5) / 6) * np.log(np.linalg.det(correlation))
    assert diagnostics.bartlett_chi2 == pytest.approx(chi2)
    assert diagnostics.bartlett_df == 3


def test_kmo_by_hand() -> None:
    correlation = np.array([[1.0, 0.5, 0.4], [0.5, 1.0, 0.3], [0.4, 0.3, 1.0]])
    inverse = np.linalg.inv(correlation)
    partial_12 = -inverse[0, 1] / np.sqrt(inverse[0, 0] * inverse[1, 1])
    partial_13 = -inverse[0, 2] / np.sqrt(inverse[0, 0] * inverse[2, 2])
    partial_23 = -inverse[1, 2] / np.sqrt(inverse[1, 1] * inverse[2, 2])
    r2 = 0.5**2 + 0.4**2 + 0.3**2
    q2 = partial_12**2 + partial_13**2 + partial_23**2
    overall, per_variable = kaiser_meyer_olkin(correlation)
    assert overall == pytest.approx(r2 / (r2 + q2))
    assert per_variable[0] == pytest.approx((0.25 + 0.16) / (0.25 + 0.16 + partial_12**2
                                                            + partial_13**2))


def test_prepared_table_contract(tiny: Path) -> None:
    prepared = prepare(load_dataset(tiny))
    table = prepared.table
    assert list(table.columns) == [*PREPARED_COLUMNS, *EXTRA_COLUMNS]
    campaigns = tiny_campaigns()
    assert table["log_amount_raised"].to_numpy() == pytest.approx(
        np.log(campaigns["amount_raised"] / 1e4))
    assert table["recommended"].tolist() == (campaigns["channel"] == "mixed").astype(int).tolist()
    assert table["target_amount_10k"].tolist() == pytest.approx(campaigns["target_amount"] / 1e4)
    assert table["log_reposts"].iloc[2] == 0.0  # zero reposts
    assert table["prefecture_code"].iloc[4] == "120100"
    assert table["province_code"].iloc[4] == "120000"
    # county controls are the 2010/2020 mean
    expected_population = [COUNTY_VALUES[c][3] for c in campaigns["county_code"]]
    assert table["population_millions"].to_numpy() == pytest.approx(expected_population)
    assert table["core_capacity"].iloc[0] == pytest.approx(0.505)
    assert table["county_campaigns"].tolist() == [2, 2, 1, 1, 1, 1, 2, 2]
    assert table["development"].std(ddof=1) == pytest.approx(1)
    # higher schooling, urbanisation: 110101 is the most developed county
    assert table["development"].iloc[0] == table["development"].max()
    assert table["gdp_per_capita"].isna().all()
    diagnostics = prepared.diagnostics
    assert diagnostics["gdp_per_capita_in_factor"] is False
    assert diagnostics["development_factor"]["indicators"] == [
        "mean_years_schooling", "non_agricultural_share", "urbanisation_rate"]
    assert any("3 indicators" in note for note in diagnostics["notes"])
    assert diagnostics["derived_capacity_rules"] == {"all": 6, "after_300": 1, "after_100": 1}


def test_ses_index_from_items(tiny: Path) -> None:
    campaigns = tiny_campaigns().drop(columns="ses_index")
    campaigns["ses_item_income"] = [1, 2, 3, 4, 5, 6, 7, 8]
    campaigns["ses_item_car"] = [0, 0, 1, 1, 0, 1, 1, 1]
    campaigns.to_csv(tiny / "campaigns.csv", index=False)
    table = prepare(load_dataset(tiny)).table
    z = lambda s: (s - s.mean()) / s.std(ddof=1)  # noqa: E731
    expected = z(campaigns["ses_item_income"]) + z(campaigns["ses_item_car"])
    assert table["ses_index"].to_numpy() == pytest.approx(expected.to_numpy())


def test_given_mediators_are_used_without_streams(tiny: Path) -> None:
    (tiny / "donations.csv").unlink()
    (tiny / "ratings.csv").unlink()
    campaigns = tiny_campaigns().assign(core_capacity=0.4, derived_capacity=0.2,
                                        emotional_rating=0.1, text_rating=0.3)
    campaigns.loc[2, "text_rating"] = None      # a campaign without text may lack it
    campaigns.to_csv(tiny / "campaigns.csv", index=False)
    table = prepare(load_dataset(tiny)).table
    assert set(table["derived_capacity_rule"]) == {"given"}
    assert table["core_capacity"].tolist() == pytest.approx([0.4] * 8)
    assert table["emotional_rating"].tolist() == pytest.approx([0.1] * 8)
    assert table["text_rating"].isna().tolist() == [False, False, True, *[False] * 5]
    assert table["image_rating"].isna().all()


def test_prepare_cli_csv_and_parquet_agree(tiny: Path, tmp_path: Path) -> None:
    assert main(["prepare", str(tiny), "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["prepare", str(tiny), "--out", str(tmp_path / "p.parquet")]) == 0
    from_csv = read_prepared(tmp_path / "p.csv")
    from_parquet = read_prepared(tmp_path / "p.parquet")
    assert from_csv.table["county_code"].tolist() == from_parquet.table["county_code"].tolist()
    numeric = from_csv.table.select_dtypes("number").columns
    np.testing.assert_allclose(from_csv.table[numeric].to_numpy(dtype=float),
                               from_parquet.table[numeric].to_numpy(dtype=float))
    diagnostics = json.loads((tmp_path / "p.diagnostics.json").read_text())
    assert diagnostics["n_campaigns"] == 8
    assert from_csv.diagnostics == diagnostics


def test_prepare_writes_stata_for_stata_and_r_users(tiny: Path, tmp_path: Path) -> None:
    """--out FILE.dta: the same table as Parquet, Unicode names (county_name) intact."""
    assert main(["prepare", str(tiny), "--out", str(tmp_path / "p.dta")]) == 0
    assert main(["prepare", str(tiny), "--out", str(tmp_path / "p.parquet")]) == 0
    stata = pd.read_stata(tmp_path / "p.dta")
    parquet = read_prepared(tmp_path / "p.parquet").table
    assert list(stata.columns) == list(parquet.columns)
    numeric = parquet.select_dtypes("number").columns
    np.testing.assert_allclose(stata[numeric].to_numpy(dtype=float),
                               parquet[numeric].to_numpy(dtype=float))
    for column in ("county_code", "county_name", "channel"):
        assert stata[column].fillna("").astype(str).tolist() == \
            parquet[column].fillna("").astype(str).tolist()
    assert main(["prepare", str(tiny), "--out", str(tmp_path / "p.xlsx")]) == 1


def test_prepare_options_are_recorded(tiny: Path) -> None:
    options = PrepareOptions(short_streams="missing", factor_method="pa")
    prepared = prepare(load_dataset(tiny), options)
    assert prepared.diagnostics["options"]["short_streams"] == "missing"
    assert prepared.table["derived_capacity"].isna().sum() == 7


def test_describe_cli_reads_folders_and_prepared_tables(tiny: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["describe", str(tiny)]) == 0
    from_folder = capsys.readouterr().out
    assert main(["prepare", str(tiny), "--out", str(tmp_path / "p.parquet")]) == 0
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "p.parquet")]) == 0
    assert capsys.readouterr().out == from_folder
    assert "8 campaigns in 6 counties" in from_folder
    assert main(["describe", str(tmp_path / "absent")]) == 1


def test_prefecture_measures_weight_by_population() -> None:
    averaged = pd.DataFrame({"county_code": ["a", "b", "c"],
                             "population_millions": [1.0, 3.0, 2.0],
                             "urbanisation_rate": [0.2, 0.6, np.nan],
                             "aged60_share": [0.1, 0.2, 0.3]})
    hierarchy = pd.DataFrame({"county_code": ["a", "b", "c"], "prefecture_code": ["p", "p", "p"]})
    measures = prefecture_measures(averaged, hierarchy).loc["p"]
    assert measures["population_millions"] == pytest.approx(6.0)
    assert measures["urbanisation_rate"] == pytest.approx((0.2 * 1 + 0.6 * 3) / 4)  # c lacks it
    assert measures["aged60_share"] == pytest.approx((0.1 + 0.6 + 0.6) / 6)


def test_prefecture_development_is_a_factor_over_campaigns(small_table) -> None:
    scores = small_table["prefecture_development"]
    assert scores.notna().all()
    assert scores.mean() == pytest.approx(0.0, abs=1e-9) and scores.std() == pytest.approx(1.0)
    # one value per prefecture, related to but not the same as county development
    assert small_table.groupby("prefecture_code")["prefecture_development"].nunique().max() == 1
    assert 0.3 < np.corrcoef(scores, small_table["development"])[0, 1] < 0.99


def test_a_prepared_table_and_its_parquet_copy_have_one_fingerprint(small_simulation,
                                                                   tmp_path) -> None:
    """What `fundgap.load(folder, data=...)` and the batch compare: a table prepared now
    and the same table read back from prepared.parquet are the same data."""
    from fundgap.store import frame_fingerprint, write_table

    table = prepare(load_dataset(small_simulation)).table
    write_table(table, tmp_path / "prepared.parquet")
    write_table(table, tmp_path / "prepared.csv")
    for copy in ("prepared.parquet", "prepared.csv"):
        back = read_prepared(tmp_path / copy).table
        assert frame_fingerprint(back) == frame_fingerprint(table), copy
