"""Fitting for real on small simulated data: recovery of the truth, agreement with bambi,
with statsmodels OLS and between the two model forms, seeds, outputs and the gate; and the
report (`fundgap report`) made from the fit, in a headless browser too (here, so that the
regional fit is made once per worker)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from fundgap.bayesian import (
    FitSettings,
    fit_model,
    prior_predictive,
)
from fundgap.cli import main
from fundgap.compare import write_frequentist
from fundgap.fitfolder import posterior_groups, write_fit
from fundgap.frequentist_tables import run_frequentist
from fundgap.gate import _latent_statistics
from fundgap.report import build_report, write_report
from fundgap.spec import load_spec, parse_spec
from fundgap.store import write_table

from conftest import QUICK, REGIONAL, REPO


def test_fit_passes_its_gate_and_recovers_the_truth(regional_fit, default_simulation: Path):
    diagnostics = regional_fit.diagnostics
    assert diagnostics["form"] == "marginal"
    assert diagnostics["passed"], diagnostics["reasons"]
    truth = json.loads((default_simulation / "truth.json").read_text())
    pooled = truth["effects_per_sd_development"]["pooled"]
    effects = regional_fit.effects.set_index(["effect", "mediator"])
    expected = {("total", ""): pooled["total"], ("direct", ""): pooled["direct"]}
    for mediator, value in pooled["indirect"].items():
        expected[("indirect", mediator)] = value
        expected[("b", mediator)] = pooled["b"][mediator]
    # each truth within 3 posterior sds, and at least 8 of the 10 in their 95% intervals (all
    # 10 at once would hold for only about 60% of data sets even if perfectly calibrated)
    covered = 0
    for key, value in expected.items():
        row = effects.loc[key]
        assert abs(row["mean"] - value) < 3 * row["sd"], (key, value, row.to_dict())
        covered += bool(row["ci_lower"] <= value <= row["ci_upper"])
    assert len(expected) == 10 and covered >= 8, covered


def test_random_intercept_sds_cover_the_truth(regional_fit, default_simulation: Path):
    """Each group sd lies within 3 posterior sds of its truth, and at least 8 of the 10 lie in
    their 95% intervals (all 10 would hold for only about 60% of seeds even if calibrated)."""
    truth = json.loads((default_simulation / "truth.json").read_text())["equations"]
    summary = regional_fit.summary
    inside = 0
    for name, equation in truth.items():
        for level in ("county", "prefecture"):
            row, value = summary.loc[f"{level}_sd_{name}"], equation[f"{level}_sd"]
            assert abs(row["mean"] - value) <= 3 * row["sd"], (name, level, value)
            inside += row["hdi_2.5%"] <= value <= row["hdi_97.5%"]
        sigma = summary.loc[f"sigma_{name}"]
        assert abs(sigma["mean"] - equation["residual_sd"]) < 0.15 * equation["residual_sd"]
    assert inside >= 8, f"{inside} of 10 group sds inside their 95% intervals"


def test_posterior_has_named_dims_and_intercepts(regional_fit):
    posterior = regional_fit.idata.posterior
    counties = regional_fit.design.levels["county_code"]
    county = posterior["county_intercept_log_amount_raised"]
    assert county.dims == ("chain", "draw", "county")
    assert list(county["county"].values) == list(counties)
    assert "development" in posterior["coefficients_core_capacity"]["term_core_capacity"]
    assert set(regional_fit.idata.log_likelihood.data_vars) == set(regional_fit.spec.equations)
    assert regional_fit.idata.log_likelihood.sizes["campaign"] == len(regional_fit.design.table)
    # ArviZ's LOO works on the stored pointwise log likelihood
    loo = az.loo(regional_fit.idata, var_name="log_amount_raised")
    assert np.isfinite(loo.elpd_loo)


def test_effects_identities(regional_fit):
    effects = regional_fit.effects.set_index(["effect", "mediator"])["mean"]
    indirect = effects.loc["indirect"]
    assert effects.loc[("total", "")] == pytest.approx(effects.loc[("direct", "")]
                                                       + indirect.sum(), rel=1e-9)
    assert list(regional_fit.effects.columns) == ["effect", "mediator", "mean", "sd", "ci_lower",
                                                  "ci_upper", "r_hat", "ess_bulk", "ess_tail",
                                                  "p_positive", "defined"]


def test_write_fit_folder(regional_fit, tmp_path: Path):
    folder = write_fit(regional_fit, tmp_path / "fit")
    assert sorted(p.name for p in folder.iterdir()) == [
        "diagnostics.json", "effects.csv", "fit.json", "posterior.nc", "sensitivity.csv",
        "sensitivity_thresholds.csv", "shrinkage.csv", "spec.toml", "summary.csv"]
    record = json.loads((folder / "fit.json").read_text())
    assert record["sensitivity"] == "computed (sensitivity.csv)"
    assert len(record["data_fingerprint"]) == 64 and record["versions"]["pymc"]
    assert record["settings"]["seed"] == 11
    idata = az.from_netcdf(folder / "posterior.nc")
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data",
            "sample_stats"} <= set(idata.groups())
    assert (folder / "spec.toml").read_text() == REGIONAL.read_text()
    diagnostics = json.loads((folder / "diagnostics.json").read_text())
    assert {"passed", "divergences", "max_r_hat", "min_ess_bulk", "tree_depth_hits",
            "wall_seconds"} <= set(diagnostics)


def test_latent_statistics_equal_arviz_summary(regional_fit):
    posterior = regional_fit.idata.posterior
    latent = ["county_intercept_core_capacity", "prefecture_intercept_log_amount_raised"]
    ours = _latent_statistics(posterior[latent])
    arviz = az.summary(regional_fit.idata, var_names=latent, kind="stats", round_to="none",
                       hdi_prob=0.95)
    assert list(ours.index) == list(arviz.index)
    np.testing.assert_allclose(ours.to_numpy(), arviz[ours.columns].to_numpy(), rtol=1e-12)


def test_saved_groups_leave_the_fit_alone(regional_fit):
    small = posterior_groups(regional_fit.idata, latent_draws=0)
    name = "county_intercept_log_amount_raised"
    assert small["posterior"][name].dtype == np.float32
    assert regional_fit.idata.posterior[name].dtype == np.float64
    assert small["posterior"]["sigma_log_amount_raised"].dtype == np.float64
    assert small["log_likelihood"]["log_amount_raised"].dtype == np.float32
    assert set(small) == set(regional_fit.idata.groups())


def test_same_seed_same_draws(default_table: pd.DataFrame, regional_fit, monkeypatch):
    """Two fits with one seed give identical draws: one compiled afresh, one through the
    compile cache (the in-process reuse of a compiled model is tested with the coverage
    study in test_crosschecks.py)."""
    settings = FitSettings(draws=150, tune=150, chains=2, seed=3, progress=False,
                           predictive_draws=20)
    second = fit_model(load_spec(REGIONAL), default_table, settings)
    assert second.diagnostics["compile_cache"] in ("stored", "hit")
    monkeypatch.setenv("FUNDGAP_COMPILE_CACHE", "")
    first = fit_model(load_spec(REGIONAL), default_table, settings)
    assert first.diagnostics["compile_cache"] == "off"
    for name in ("coefficients_log_amount_raised", "county_intercept_core_capacity"):
        np.testing.assert_array_equal(first.idata.posterior[name].values,
                                      second.idata.posterior[name].values)


def test_without_random_intercepts_matches_ols(small_table: pd.DataFrame):
    text = REGIONAL.read_text().replace('levels = "(1|prefecture) + (1|county)"', 'levels = ""')
    text = text.replace(" + {levels}", "")
    spec = parse_spec(text, "no_levels.toml")
    result = fit_model(spec, small_table, QUICK)
    posterior = result.idata.posterior
    for name, equation in spec.equations.items():
        ols = smf.ols(equation.fixed_formula, small_table).fit()
        coefficients = posterior[f"coefficients_{name}"]
        for term in ("development", *spec.mediators):
            if term not in coefficients[f"term_{name}"]:
                continue
            draws = coefficients.sel({f"term_{name}": term}).values
            assert abs(draws.mean() - ols.params[term]) < 0.2 * ols.bse[term], (name, term)
            assert draws.std() == pytest.approx(ols.bse[term], rel=0.15)


def test_failing_gate_is_written_and_exits_nonzero(small_simulation: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture):
    out = tmp_path / "failed"
    code = main(["fit", str(REGIONAL), "--data", str(small_simulation), "--out", str(out),
                 "--draws", "30", "--tune", "30", "--chains", "2", "--quiet"])
    assert code == 1
    assert "FAILED diagnostics" in capsys.readouterr().err
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert diagnostics["passed"] is False and diagnostics["reasons"]


def test_fit_cli_rejects_bad_spec(small_simulation: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture):
    spec = tmp_path / "bad.toml"
    spec.write_text(REGIONAL.read_text().replace('family = "gaussian"', "")
                    .replace("[equations.log_reposts]", '[equations.log_reposts]\nfamily = "x"'))
    assert main(["fit", str(spec), "--data", str(small_simulation), "--out",
                 str(tmp_path / "o")]) == 1
    assert "equations.log_reposts.family: unknown family 'x'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["1.0", "0.3", "high"])
def test_fit_cli_rejects_a_target_accept_outside_its_range(value: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as raised:
        main(["fit", str(REGIONAL), "--data", "x", "--out", str(tmp_path / "o"),
              "--target-accept", value])
    assert raised.value.code == 2
    assert f"--target-accept: '{value}' is not a number in [0.5, 1)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_prior_predictive_covers_the_data(small_table: pd.DataFrame):
    prior = prior_predictive(load_spec(REGIONAL), small_table, draws=200, seed=1)
    for name in ("log_amount_raised", "verifier_count"):
        draws = prior.prior_predictive[name].values
        assert np.isfinite(draws).all()
        observed = small_table[name]
        # weakly informative: the prior predictive spreads wider than the data, around them
        assert np.quantile(draws, 0.05) < observed.quantile(0.05)
        assert np.quantile(draws, 0.95) > observed.quantile(0.95)
        # ...but not by orders of magnitude: the coefficients' scale is spread over the
        # terms (with one scale per coefficient the outcome's spanned about -24 to 26)
        spread = np.quantile(draws, 0.99) - np.quantile(draws, 0.01)
        assert spread < 4 * (observed.max() - observed.min()), name


def test_count_equations_prior_predictive_stays_finite(small_table: pd.DataFrame):
    """The SES spec's negative-binomial equations: with one scale per coefficient, exp of
    the prior's linear predictor overflowed and PyMC could not draw the counts."""
    from conftest import REPO

    prior = prior_predictive(load_spec(REPO / "models" / "ses_gradient.toml"), small_table,
                             draws=100, seed=2)
    for name in ("donation_count", "repost_count"):
        draws = prior.prior_predictive[name].values
        assert np.isfinite(draws).all() and np.median(draws) < 100 * small_table[name].max()


def test_shrinkage_pulls_sparse_counties_hardest(regional_fit):
    table = regional_fit.shrinkage
    counties = table[(table["equation"] == "log_amount_raised") & (table["level"] == "county")]
    assert len(counties) == regional_fit.design.levels["county_code"].size
    assert counties["campaigns"].sum() == len(regional_fit.design.table)
    ratio = counties["intercept_mean"] / counties["no_pooling"]
    # partial pooling: each intercept is a fraction of its raw deviation ...
    assert ratio.between(0, 1).mean() > 0.95
    # ... and that fraction grows with the county's campaigns
    assert ratio[counties["campaigns"] == 1].median() < ratio[counties["campaigns"] >= 3].median()


# ---------------------------------------------------------------- the report of a fit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report_files(regional_fit, default_table: pd.DataFrame,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fits/<data>/ as `fundgap run` leaves it: the regional fit (passed), a copy marked
    failed, their frequentist folders, the prepared table; then the report."""
    fits = tmp_path_factory.mktemp("fits") / "default"
    write_table(default_table, fits / "prepared.parquet")
    (fits / "prepared.diagnostics.json").write_text("{}")
    write_fit(regional_fit, fits / "regional_mediation")
    # the same fit written as one that failed its gate (editing diagnostics.json in place
    # would make a damaged folder, which the report shows as such)
    write_fit(dataclasses.replace(regional_fit, diagnostics={
        **regional_fit.diagnostics, "passed": False,
        "reasons": ["max R-hat 1.050 > 1.01 (test)"]}), fits / "regional_failed")
    result = run_frequentist(regional_fit.spec, default_table, replicates=19, seed=1)
    write_frequentist(result, default_table, fits / "frequentist" / "regional_mediation",
                      fits, 19, 1)
    write_report(build_report(fits), fits / "report.html")
    return fits


def test_report_shows_a_passing_fit_with_its_figures(report_files: Path) -> None:
    html = (report_files / "report.html").read_text()
    assert "Diagnostics passed" in html
    figures = sorted(p.name for p in (report_files / "report_figures").iterdir())
    assert figures == ["regional_mediation_forest.png",
                       "regional_mediation_ppc_log_amount_raised.png",
                       "regional_mediation_sensitivity.png",
                       "regional_mediation_shrinkage_log_amount_raised.png"]
    # every figure is embedded in the page itself
    assert html.count("data:image/png;base64,") == 4
    # the side-by-side table with the published Table 2 and the KHB rows
    assert "table2_outcome_ols" in html and "table3_khb_decomposition" in html
    markdown = (report_files / "report.md").read_text()
    assert "](report_figures/regional_mediation_forest.png)" in markdown


def test_report_shows_each_model(report_files: Path) -> None:
    """The fitted model as Graphviz draws it (inline SVG) where dot is installed (make test
    installs it where it can), else its variables as PyMC lists them."""
    html = (report_files / "report.html").read_text()
    section = html.split('<h2 id="regional_mediation">')[1].split("<h2 id=")[0]
    model = section.split('<details class="graph">')[1].split("</details>")[0]
    if shutil.which("dot"):
        assert "<svg" in model and "sigma_log_amount_raised" in model
    else:
        assert "sigma_log_amount_raised ~ HalfNormal" in model
    markdown = (report_files / "report.md").read_text()
    assert "sigma_log_amount_raised ~ HalfNormal" in markdown


def test_report_contents_link_every_section_with_its_status(report_files: Path) -> None:
    import re

    html = (report_files / "report.html").read_text()
    nav = html.split('<nav id="contents">')[1].split("</nav>")[0]
    targets = re.findall(r'href="#([^"]+)"', nav)
    assert targets == ["data", "fits", "regional_failed", "regional_mediation"]
    for target in targets:
        assert f'id="{target}"' in html
    assert '<span class="status failed">FAILED</span>' in nav
    assert '<span class="status passed">passed</span>' in nav
    # the marks' legend sits below the comparison that uses them
    comparison = html.split("side by side</h3>")[1]
    assert "† the published figure lies outside" in comparison.split("</ul>")[0]


def test_report_shows_a_failed_fit_as_failed_without_its_numbers(report_files: Path) -> None:
    html = (report_files / "report.html").read_text()
    section = html.split('<h2 id="regional_failed">')[1].split("<h2 id=")[0]
    assert "FAILED diagnostics: max R-hat 1.050 &gt; 1.01 (test)" in section
    assert "class=\"status failed\"" in section
    assert "<h3>Effects</h3>" not in section and "data:image/png" not in section
    markdown = (report_files / "report.md").read_text()
    assert "**FAILED diagnostics**: max R-hat 1.050 > 1.01 (test)" in markdown


CHROMEDRIVER = shutil.which("chromedriver")
# where the browser test leaves its screenshot of the page (fits/ is not committed)
ARTEFACTS = REPO / "fits" / "test-artefacts"
SECTION = """const parts = []; let node = document.getElementById(arguments[0]).nextElementSibling;
while (node && node.tagName !== "H2") { parts.push(node); node = node.nextElementSibling; }
return parts;"""


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian's chromium and chromium-driver are not installed (make test "
                           "installs them where apt-get can)")
def test_report_reads_in_a_browser(report_files: Path, regional_fit, tmp_path: Path) -> None:
    """The report as a person reads it, in headless Chromium driven by Selenium: every
    contents link brings its section into view, every figure loads, a failed fit is red and
    shows no numbers, no effects table prints a number in exponent notation, and a share
    whose total's interval includes 0 reads as not defined. The screenshot is kept in
    fits/test-artefacts/."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from fundgap.effects import mark_undefined_shares

    fits = tmp_path / "default"
    shutil.copytree(report_files, fits, ignore=shutil.ignore_patterns("report*"))
    wide = regional_fit.effects.drop(columns="defined")
    wide.loc[wide["effect"] == "total", "ci_lower"] = -0.01   # a total not clear of 0
    write_fit(dataclasses.replace(regional_fit, effects=mark_undefined_shares(wide)),
              fits / "regional_wide")
    write_report(build_report(fits), fits / "report.html")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((fits / "report.html").resolve().as_uri())
        targets = [link.get_attribute("href").split("#", 1)[1]
                   for link in driver.find_elements(By.CSS_SELECTOR, "nav#contents a")]
        assert targets == ["data", "fits", "regional_failed", "regional_mediation",
                           "regional_wide"]
        for target in targets:
            driver.execute_script("window.scrollTo(0, 0)")
            driver.find_element(By.CSS_SELECTOR, f'nav#contents a[href="#{target}"]').click()
            top, height = driver.execute_script(
                "return [document.getElementById(arguments[0]).getBoundingClientRect().top,"
                " window.innerHeight]", target)
            assert -2 <= top < height / 2, (target, top)   # at the top, to the pixel

        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 8       # forest, PPC, sensitivity, shrinkage: two passed fits
        assert all(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image)
            for image in images)

        failed = driver.execute_script(SECTION, "regional_failed")
        status = [e for e in failed if "failed" in (e.get_attribute("class") or "")]
        assert status and "FAILED diagnostics" in status[0].text
        red, green, blue = (int(v) for v in status[0].value_of_css_property("color")
                            .split("(")[1].split(",")[:3])
        assert red > 150 and green < 60 and blue < 80
        assert not [e for e in failed if e.tag_name in ("img", "table")
                    and "side by side" not in e.text]

        cells = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "table td")]
        assert cells and not [c for c in cells if re.search(r"\d[eE][+-]?\d", c)]
        wide_text = " ".join(e.text for e in driver.execute_script(SECTION, "regional_wide"))
        assert "not defined: the total's 95% interval includes 0" in wide_text
        passed_text = " ".join(e.text for e in driver.execute_script(SECTION,
                                                                     "regional_mediation"))
        # the fit's own shares: not defined exactly where its total's interval includes 0
        total = regional_fit.effects[(regional_fit.effects["effect"] == "total")
                                     & (regional_fit.effects["mediator"] == "")].iloc[0]
        clear_of_zero = total["ci_lower"] > 0 or total["ci_upper"] < 0
        assert ("not defined" in passed_text) == (not clear_of_zero)

        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        driver.set_window_size(1200, 4000)
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(ARTEFACTS / "report.png"))
    finally:
        driver.quit()
