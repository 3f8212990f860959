"""The frequentist side against statsmodels formula fits computed here independently, the
KHB identity and its errors, bootstrap reproducibility, MixedLM, and the written tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from fundgap import frequentist_tables, khb
from fundgap.cli import main
from fundgap.compare import comparison_frame, read_posterior, write_frequentist
from fundgap.design import build_design
from fundgap.frequentist_tables import fit_table_model, mixed_model, run_frequentist, stars
from fundgap.khb import bootstrap_khb, khb_decomposition, khb_inputs
from fundgap.spec import load_spec
from fundgap.store import frame_fingerprint

from conftest import REGIONAL, REPO


def _patsy_to_formulae(name: str) -> str:
    """statsmodels (patsy) writes C(x)[T.a] where formulae writes C(x)[a]."""
    return re.sub(r"\[T\.", "[", name)


def _by_term(model: pd.DataFrame, column: str) -> pd.Series:
    return model.set_index("term")[column]


@pytest.fixture(scope="module")
def regional():
    return load_spec(REGIONAL)


def test_ols_and_clustered_errors_match_statsmodels_formula(regional, small_table) -> None:
    model = next(m for m in regional.tables if m.model == "m2")
    ours = fit_table_model(model, small_table)
    codes = pd.factorize(small_table["county_code"])[0]
    formula = model.formula.replace("\n", " ")
    reference = smf.ols(formula, small_table).fit()
    clustered = smf.ols(formula, small_table).fit(cov_type="cluster",
                                                  cov_kwds={"groups": codes})
    names = [_patsy_to_formulae(n) for n in reference.params.index]
    for column, expected in (("estimate", reference.params), ("std_error", reference.bse),
                             ("cluster_std_error", clustered.bse),
                             ("p_value", reference.pvalues)):
        mine = _by_term(ours, column).reindex(names).to_numpy()
        np.testing.assert_allclose(mine, expected.to_numpy(), rtol=1e-8, atol=1e-12)
    assert ours["adj_r2"].iloc[0] == pytest.approx(reference.rsquared_adj, rel=1e-10)
    assert ours["n"].iloc[0] == 400 and ours["published_term"].iloc[1] == "development"
    # clustering by county changes the errors, not the estimates
    assert not np.allclose(ours["std_error"], ours["cluster_std_error"])


def test_logit_matches_statsmodels_formula(small_table) -> None:
    spec = load_spec(REPO / "models" / "recommendation.toml")
    model = spec.tables[1]        # non-agricultural share, renamed as the study names it
    ours = fit_table_model(model, small_table)
    reference = smf.logit(model.formula.replace("\n", " "), small_table).fit(disp=0)
    names = [_patsy_to_formulae(n) for n in reference.params.index]
    np.testing.assert_allclose(_by_term(ours, "estimate").reindex(names),
                               reference.params, rtol=1e-6)
    np.testing.assert_allclose(_by_term(ours, "std_error").reindex(names),
                               reference.bse, rtol=1e-5)
    assert ours["pseudo_r2"].iloc[0] == pytest.approx(reference.prsquared, rel=1e-8)
    assert "non_agricultural_labour_share" in set(ours["published_term"])


def test_filters_and_interaction_terms(small_table) -> None:
    spec = load_spec(REPO / "models" / "channel_moderation.toml")
    acquaintance, _, interaction = spec.tables[:3]
    subset = fit_table_model(acquaintance, small_table)
    assert subset["n"].iloc[0] == (small_table["channel"] == "acquaintance").sum()
    both = fit_table_model(interaction, small_table)
    assert "development_x_recommended" in set(both["published_term"])


def test_stars_follow_the_study() -> None:
    assert [stars(p) for p in (0.0005, 0.005, 0.03, 0.07, 0.2, np.nan)] == [
        "***", "**", "*", "!", "", ""]


def test_khb_identity_paths_and_delta_errors(regional, default_table) -> None:
    design = build_design(regional, default_table)
    khb = khb_decomposition(design, replicates=200, seed=3)
    assert abs(khb.attrs["identity_gap"]) < 1e-10
    rows = khb.set_index(["component", "mediator"])["estimate"]
    indirect = khb[khb["component"] == "indirect"]["estimate"].sum()
    assert rows[("total", "")] == pytest.approx(rows[("direct", "")] + indirect, abs=1e-10)
    assert rows[("indirect_total", "")] == pytest.approx(indirect, abs=1e-12)

    # each piece against single-equation fits: a from the mediator's own OLS, b and the
    # direct effect from the outcome's, the total from the outcome without mediators
    table = design.table
    outcome = regional.equations["log_amount_raised"].fixed_formula.replace("\n", " ")
    full = smf.ols(outcome, table).fit()
    codes = pd.factorize(table["county_code"].astype(str))[0]
    full_clustered = smf.ols(outcome, table).fit(cov_type="cluster",
                                                 cov_kwds={"groups": codes})
    reduced = smf.ols(re.sub(r"\+ core_capacity \+ derived_capacity \+ verifier_count "
                             r"\+ log_reposts ", "", outcome.replace("\n", " ")), table).fit()
    assert rows[("total", "")] == pytest.approx(reduced.params["development"], rel=1e-8)
    assert rows[("direct", "")] == pytest.approx(full.params["development"], rel=1e-8)
    for mediator in regional.mediators:
        a = smf.ols(regional.equations[mediator].fixed_formula.replace("\n", " "),
                    table).fit().params["development"]
        assert rows[("indirect", mediator)] == pytest.approx(a * full.params[mediator],
                                                             rel=1e-8)
    direct = khb[khb["component"] == "direct"].iloc[0]
    assert direct["std_error"] == pytest.approx(full.bse["development"], rel=1e-8)
    assert direct["cluster_std_error"] == pytest.approx(full_clustered.bse["development"],
                                                        rel=1e-8)
    # the delta method and the county bootstrap agree on every component
    ratio = khb["bootstrap_std_error"] / khb["cluster_std_error"]
    assert ratio.between(0.75, 1.33).all(), ratio
    # KHB's reduced-model error treats the residuals as fixed and understates the total's
    total = khb[khb["component"] == "total"].iloc[0]
    assert total["reduced_model_std_error"] < 0.7 * total["std_error"]
    assert total["std_error"] == pytest.approx(reduced.bse["development"], rel=0.05)


def test_khb_decomposes_the_primary_outcome_of_a_spec_with_two(small_table) -> None:
    """Every equation Gaussian and two outcomes: KHB decomposes the first outcome through
    the mediators, as the same spec with that outcome alone does (it once took the last
    equation as the outcome and every other as a mediator, and raised an IndexError)."""
    from fundgap.spec import parse_spec

    def spec(outcomes: str) -> str:
        text = ('name = "two"\nexposure = "development"\n'
                'mediators = ["core_capacity", "verifier_count"]\n'
                f"outcome = {outcomes}\n")
        for name in ("core_capacity", "verifier_count"):
            text += f'[equations.{name}]\nformula = "{name} ~ development + (1|county)"\n'
        for name in ("log_amount_raised", "log_reposts"):
            text += (f'[equations.{name}]\nformula = "{name} ~ development + core_capacity'
                     ' + verifier_count + (1|county)"\n')
        return text

    columns = set(small_table.columns)
    both = parse_spec(spec('["log_amount_raised", "log_reposts"]'), columns=columns)
    alone = parse_spec(spec('"log_amount_raised"').replace(
        '[equations.log_reposts]\nformula = "log_reposts ~ development + core_capacity + '
        'verifier_count + (1|county)"\n', ""), columns=columns)
    assert alone.outcomes == ("log_amount_raised",)
    tables = [run_frequentist(s, small_table, replicates=20, mixed_equations="none").khb
              for s in (both, alone)]
    assert list(tables[0]["mediator"]) == ["", "", "core_capacity", "verifier_count", ""]
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_bootstrap_is_reproducible_from_its_seed(regional, small_table) -> None:
    inputs = khb_inputs(build_design(regional, small_table))
    first = bootstrap_khb(inputs, 30, seed=5)
    np.testing.assert_array_equal(first, bootstrap_khb(inputs, 30, seed=5))
    assert not np.array_equal(first, bootstrap_khb(inputs, 30, seed=6))
    assert not np.array_equal(first, bootstrap_khb(inputs, 30, seed=5, by="campaign"))


def test_bootstraps_equal_resampling_the_rows_themselves(regional, small_table,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Each resample's estimates from weighted cross-products (campaign resamples a block at
    a time, blocks of rows smaller than the table; counties from per-county sums) equal
    KHB on the resampled rows, drawn with the same generator."""
    monkeypatch.setattr(khb, "RESAMPLE_BLOCK", 7)
    monkeypatch.setattr(khb, "ROW_BLOCK", 100)
    inputs = khb_inputs(build_design(regional, small_table))
    parts = khb.cross_products(inputs)
    n, replicates = len(inputs.y), 16
    clusters = inputs.clusters
    n_clusters = int(clusters.max()) + 1
    members = [np.flatnonzero(clusters == c) for c in range(n_clusters)]
    for by in ("campaign", "county"):
        rng = np.random.default_rng(11)
        expected = []
        for _ in range(replicates):
            if by == "campaign":
                rows = rng.integers(0, n, size=n)
            else:
                rows = np.concatenate([members[c] for c in
                                       rng.integers(0, n_clusters, size=n_clusters)])
            drawn = parts.columns[rows]
            expected.append(khb.khb_from_cross_products(inputs, parts, drawn.T @ drawn)[:-1])
        np.testing.assert_allclose(bootstrap_khb(inputs, replicates, 11, by), expected,
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pilot_rows", [None, 600])
def test_mixedlm_matches_statsmodels_formula(regional, default_table, pilot_rows,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Also from a pilot fit's start (as on a large table: _pilot_start), the same optimum."""
    if pilot_rows is not None:
        monkeypatch.setattr(frequentist_tables, "PILOT_ROWS", pilot_rows)
        started = []
        pilot = frequentist_tables._pilot_start
        monkeypatch.setattr(frequentist_tables, "_pilot_start",
                            lambda *args: started.append(1) or pilot(*args))
    design = build_design(regional, default_table)
    ours = mixed_model(design, "log_amount_raised").set_index("term")
    assert pilot_rows is None or started
    table = design.table.assign(prefecture=design.table["prefecture_code"].astype(str),
                                county=design.table["county_code"].astype(str))
    formula = regional.equations["log_amount_raised"].fixed_formula.replace("\n", " ")
    reference = smf.mixedlm(formula, table, groups="prefecture", re_formula="1",
                            vc_formula={"county": "0 + C(county)"}).fit(
        reml=True, method=["powell", "lbfgs"])
    assert ours.loc["development", "estimate"] == pytest.approx(
        reference.fe_params["development"], rel=1e-3)
    assert ours.loc["development", "std_error"] == pytest.approx(
        reference.bse_fe["development"], rel=1e-3)
    assert ours.loc["sd(prefecture)", "estimate"] == pytest.approx(
        np.sqrt(reference.cov_re.iloc[0, 0]), rel=1e-2)
    assert ours.loc["sd(county)", "estimate"] == pytest.approx(
        np.sqrt(reference.vcomp[0]), rel=1e-2)
    assert ours.loc["sd(residual)", "estimate"] == pytest.approx(np.sqrt(reference.scale),
                                                                 rel=1e-3)
    assert bool(ours["converged"].iloc[0])


def _fake_fit(folder: Path, table: pd.DataFrame, passed: bool) -> Path:
    """A fit folder as `fundgap fit` writes it, reduced to what the comparison reads."""
    folder.mkdir(parents=True)
    pd.DataFrame({"parameter": ["coefficients_log_amount_raised[development]"],
                  "mean": [0.5], "hdi_2.5%": [0.4], "hdi_97.5%": [0.6], "r_hat": [1.0],
                  "ess_bulk": [2000.0]}).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame({"effect": ["total", "direct"], "mediator": ["", ""], "mean": [0.2, 0.1],
                  "ci_lower": [0.0, 0.05], "ci_upper": [0.4, 0.15], "r_hat": [1.0, 1.0],
                  "ess_bulk": [3000.0, 3000.0]}).to_csv(folder / "effects.csv", index=False)
    (folder / "diagnostics.json").write_text(json.dumps(
        {"passed": passed, "reasons": [] if passed else ["3 divergences"]}))
    (folder / "spec.toml").write_text(REGIONAL.read_text("utf-8"), encoding="utf-8")
    (folder / "fit.json").write_text(json.dumps({"data_fingerprint":
                                                 frame_fingerprint(table)}))
    return folder


def test_written_tables_and_comparison(regional, small_table, tmp_path: Path) -> None:
    result = run_frequentist(regional, small_table, replicates=20, seed=1)
    fits = tmp_path / "fits"
    _fake_fit(fits / "regional_mediation", small_table, passed=True)
    comparison = write_frequentist(result, small_table, tmp_path / "out", fits, 20, 1)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"ols.csv", "khb.csv", "mixedlm.csv", "comparison.csv", "comparison.md",
                     "comparison.html", "frequentist.json"}
    ols = pd.read_csv(tmp_path / "out" / "ols.csv")
    assert {"table", "model", "term", "estimate", "std_error", "cluster_std_error",
            "p_value", "n", "adj_r2"} <= set(ols.columns)
    assert {("table2_outcome_ols", "m6"), ("table4_robustness",
            "prefecture_level.with_capacity")} <= set(zip(ols["table"], ols["model"],
                                                          strict=True))
    khb = pd.read_csv(tmp_path / "out" / "khb.csv")
    assert {"component", "mediator", "estimate", "std_error", "bootstrap_ci_lower",
            "bootstrap_ci_upper", "share"} <= set(khb.columns)

    m6 = comparison[(comparison["model"] == "m6") & (comparison["term"] == "development")]
    assert m6["published_estimate"].iloc[0] == 0.036
    assert m6["posterior_mean"].iloc[0] == 0.5          # from the fit folder
    assert bool(m6["published_outside_posterior"].iloc[0])  # 0.036 is outside [0.4, 0.6]
    total = comparison[comparison["term"] == "total"].iloc[0]
    assert total["posterior_mean"] == 0.2 and total["published_share"] == 1.0
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "0.036*** (0.009)‡" in markdown and "0.500 [0.400, 0.600]" in markdown
    html = (tmp_path / "out" / "comparison.html").read_text()
    assert html.startswith("<!doctype html>") and "table3_khb_decomposition" in html


def test_failed_or_foreign_fit_is_never_shown_as_a_result(regional, small_table,
                                                          tmp_path: Path) -> None:
    result = run_frequentist(regional, small_table, replicates=10, seed=1,
                             mixed_equations="none")
    fits = tmp_path / "fits"
    _fake_fit(fits / "regional_mediation", small_table, passed=False)
    write_frequentist(result, small_table, tmp_path / "out", fits, 10, 1)
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "FAILED diagnostics" in markdown and "0.500 [" not in markdown
    assert "FAILED its diagnostics (3 divergences)" in markdown

    other = small_table.assign(log_amount_raised=small_table["log_amount_raised"] + 1)
    posterior, reason = read_posterior(fits / "regional_mediation", frame_fingerprint(other))
    assert posterior is None and "other data" in reason
    frame = comparison_frame(run_frequentist(regional, other, replicates=10, seed=1,
                                             mixed_equations="none"), None)
    assert frame["posterior_mean"].isna().all()


def test_cli_writes_every_spec_or_nothing(small_simulation: Path, tmp_path: Path,
                                          capsys) -> None:
    prepared = tmp_path / "prepared.parquet"
    assert main(["prepare", str(small_simulation), "--out", str(prepared)]) == 0
    specs = [str(REPO / "models" / name) for name in ("channel_moderation.toml",
                                                      "recommendation.toml")]
    assert main(["frequentist", *specs, "--data", str(prepared), "--out",
                 str(tmp_path / "freq")]) == 0
    assert {p.name for p in (tmp_path / "freq").iterdir()} == {"channel_moderation",
                                                                "recommendation"}
    table = pd.read_parquet(prepared).drop(columns="prefecture_development")
    broken = tmp_path / "old.parquet"
    table.to_parquet(broken)
    capsys.readouterr()
    assert main(["frequentist", str(REGIONAL), *specs, "--data", str(broken), "--out",
                 str(tmp_path / "none")]) == 1
    error = capsys.readouterr().err
    assert "regional_mediation.toml" in error and "prefecture_development" in error
    assert "Traceback" not in error and not (tmp_path / "none").exists()


def test_a_small_standard_error_is_not_printed_as_zero() -> None:
    """Three decimals as the study prints, more where a nonzero value would read 0.000 (the
    verifier count's coefficient printed as 0.003*** (0.000))."""
    from fundgap.render import _cell

    assert _cell(0.048, 0.009, "***") == "0.048*** (0.009)"
    assert _cell(0.0031, 0.00042, "***") == "0.00310*** (0.00042)"
    assert _cell(0.00004) == "0.000040"
    assert _cell(0.0, 0.0) == "0.000 (0.000)"


def test_the_khb_total_beside_the_published_one_has_statas_standard_error(
        regional, small_table) -> None:
    """The comparison shows the KHB total with the reduced model's own standard error (what
    Stata's khb prints, comparable with the published one); khb.csv keeps the delta-method
    one, and a note says which is which and why the total equals the model without
    mediators here."""
    result = run_frequentist(regional, small_table, replicates=9, seed=1,
                             mixed_equations="none")
    frame = comparison_frame(result, None)
    row = frame[(frame["model"] == "khb") & (frame["term"] == "total")].iloc[0]
    total = result.khb[result.khb["component"] == "total"].iloc[0]
    assert row["frequentist_std_error"] == pytest.approx(total["reduced_model_std_error"])
    assert row["frequentist_std_error"] < total["std_error"]
    direct = frame[(frame["model"] == "khb") & (frame["term"] == "direct")].iloc[0]
    assert direct["frequentist_std_error"] == pytest.approx(
        result.khb.loc[result.khb["component"] == "direct", "std_error"].item())
    note = next(n for n in result.notes if n.startswith("KHB total"))
    assert "Stata's khb" in note and "Table 2 model 1: 0.057" in note


def test_table_models_take_their_posterior_from_their_exposure_variant(small_table) -> None:
    """Table 7's models 2-5: the comparison's posterior cells are each indicator's
    coefficient from its robustness variant (published term names, renamed), a failed
    variant shows as failed, and a variant not fitted leaves its row empty."""
    from fundgap.compare import with_variant_posteriors
    from fundgap.render import to_markdown

    spec = load_spec(REPO / "models" / "recommendation.toml")
    frame = comparison_frame(run_frequentist(spec, small_table, replicates=5, seed=1), None)
    variants = pd.DataFrame([
        {"variant": "m2", "exposure": "non_agricultural_share", "passed": True,
         "max_r_hat": 1.002, "min_ess_bulk": 2100.0, "exposure_coefficient_mean": 0.07,
         "exposure_coefficient_ci_lower": -0.43, "exposure_coefficient_ci_upper": 0.54},
        {"variant": "m3", "exposure": "urbanisation_rate", "passed": False,
         "max_r_hat": 1.05, "min_ess_bulk": 90.0, "exposure_coefficient_mean": -0.14,
         "exposure_coefficient_ci_lower": -0.61, "exposure_coefficient_ci_upper": 0.30}])
    merged = with_variant_posteriors(frame, spec, variants).set_index(["model", "term"])
    m2 = merged.loc[("m2", "non_agricultural_labour_share")]
    assert (m2["posterior_mean"], m2["posterior_ci_lower"], m2["posterior_passed"]) == (
        0.07, -0.43, True)
    assert m2["published_outside_posterior"] == (not -0.43 <= m2["published_estimate"] <= 0.54)
    assert merged.loc[("m3", "urbanisation_rate"), "posterior_passed"] is False
    assert merged.loc[("m4", "mean_years_schooling"), ["posterior_mean"]].isna().all()
    assert merged.loc[("m1", "development"), ["posterior_mean"]].isna().all()
    page = to_markdown(merged.reset_index(), "t", [])
    assert page.count("FAILED diagnostics") == 1 and "0.070 [-0.430, 0.540]" in page


def test_the_written_comparison_joins_the_exposure_variants_of_these_data(
        small_table, tmp_path: Path) -> None:
    """write_frequentist reads the spec's robustness folder (fundgap run writes it first) for
    the table models that name a variant, and only if it comes from the same data."""
    from fundgap import fitfolder
    from fundgap.store import frame_fingerprint, package_versions

    spec = load_spec(REPO / "models" / "recommendation.toml")
    result = run_frequentist(spec, small_table, replicates=5, seed=1)
    fits = tmp_path / "fits"
    variants = pd.DataFrame([{"variant": "m4", "exposure": "mean_years_schooling",
                              "passed": True, "max_r_hat": 1.003, "min_ess_bulk": 1900.0,
                              "exposure_coefficient_mean": -0.08,
                              "exposure_coefficient_ci_lower": -0.16,
                              "exposure_coefficient_ci_upper": 0.003}])
    for fingerprint, expected in ((frame_fingerprint(small_table), -0.08), ("other", None)):
        fitfolder.write_robustness(fitfolder.robustness_folder(fits, spec.name), variants,
                                   pd.DataFrame(), {"spec_name": spec.name,
                                                    "data_fingerprint": fingerprint,
                                                    "versions": package_versions()})
        out = tmp_path / f"frequentist_{expected}"
        comparison = write_frequentist(result, small_table, out, fits=fits)
        m4 = comparison[(comparison["model"] == "m4")
                        & (comparison["term"] == "mean_years_schooling")]
        record = json.loads((out / "frequentist.json").read_text())
        if expected is None:
            assert m4["posterior_mean"].isna().all()
            assert any("fitted to other data" in note for note in record["notes"])
        else:
            assert m4["posterior_mean"].iloc[0] == expected
            written = pd.read_csv(out / "comparison.csv")
            assert (written["posterior_mean"] == expected).sum() == 1
