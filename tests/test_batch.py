"""Batch refits (`fundgap run`): resuming, atomic folders under a kill, a Dask cluster,
bad data among good, and the index."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fundgap import names
from fundgap.batch import run_batch
from fundgap.cli import main
from fundgap.fit_index import build_index
from fundgap.robustness import POOLING
from fundgap.simulation.development import simulate, write_simulation

from conftest import edit_cell

TINY = """name = "{name}"
exposure = "development"
outcome = "log_amount_raised"
[equations.log_amount_raised]
formula = "log_amount_raised ~ development + male + {extra}(1|prefecture) + (1|county)"
"""
FAST = {"draws": 150, "tune": 150, "chains": 2, "replicates": 9}
FIT_FILES = ("posterior.nc", "summary.csv", "effects.csv", "diagnostics.json", "fit.json",
             "spec.toml")


@pytest.fixture(scope="module")
def batch_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    for name, seed in (("first", 3), ("second", 4)):
        write_simulation(simulate(n_campaigns=250, seed=seed), root / "data" / name)
    models = root / "models"
    models.mkdir()
    (models / "tiny.toml").write_text(TINY.format(name="tiny", extra=""))
    (models / "tiny_age.toml").write_text(TINY.format(name="tiny_age", extra="age + "))
    return root


def _complete_or_absent(fits: Path) -> list[str]:
    """Visible fit folders that are not complete (an empty list is what atomic writes give)."""
    broken = []
    for folder in fits.glob("*/*"):
        if folder.name.startswith(".") or folder.name in ("logs", "frequentist", "robustness") \
                or not folder.is_dir():
            continue
        missing = [f for f in FIT_FILES if not (folder / f).is_file()]
        if missing:
            broken.append(f"{folder}: {missing}")
    return broken


def test_batch_fits_everything_then_resumes_and_forces(batch_inputs: Path,
                                                       tmp_path: Path) -> None:
    data = [batch_inputs / "data" / "first"]
    models = sorted((batch_inputs / "models").glob("*.toml"))
    out = tmp_path / "fits"
    first = run_batch(data, models, out, FAST, progress=False)
    assert set(first.rows["action"]) == {"fitted"} and len(first.rows) == 4
    assert not _complete_or_absent(out)
    assert (out / "first" / "frequentist" / "tiny" / "comparison.csv").is_file()
    assert (out / "first" / "logs" / "tiny.bayesian.log").stat().st_size > 0
    index = pd.read_parquet(first.index)
    assert list(index[["spec", "kind"]].itertuples(index=False, name=None)) == [
        ("tiny", "bayesian"), ("tiny", "frequentist"), ("tiny_age", "bayesian"),
        ("tiny_age", "frequentist")]
    assert index.loc[index["kind"] == "bayesian", "max_r_hat"].notna().all()
    # nothing changed: every task is skipped and the folders are untouched
    stamp = (out / "first" / "tiny" / "fit.json").stat().st_mtime_ns
    again = run_batch(data, models, out, FAST, progress=False)
    assert set(again.rows["action"]) == {"skipped"}
    assert (out / "first" / "tiny" / "fit.json").stat().st_mtime_ns == stamp
    # a changed spec refits that spec (and its comparison) only
    changed = tmp_path / "models"
    shutil.copytree(batch_inputs / "models", changed)
    (changed / "tiny.toml").write_text(TINY.format(name="tiny", extra="") + "# edited\n")
    third = run_batch(data, sorted(changed.glob("*.toml")), out, FAST, progress=False)
    fitted = third.rows[third.rows["action"] == "fitted"]
    assert set(fitted["spec"]) == {"tiny"} and len(fitted) == 2
    forced = run_batch(data, models[:1], out, FAST, force=True, progress=False)
    assert set(forced.rows["action"]) == {"fitted"}


def test_killed_run_leaves_complete_folders_and_resumes(batch_inputs: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "fits"
    command = [sys.executable, "-m", "fundgap.cli", "run", "--data",
               str(batch_inputs / "data" / "first"), "--models", str(batch_inputs / "models"),
               "--out", str(out), "--quiet", "--draws", "150", "--tune", "150", "--chains",
               "2", "--replicates", "9"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    # killed as soon as the second spec's Bayesian fit has started (its log is opened first
    # thing), not after a fixed wait: with a warm compile cache a tiny fit takes a second
    started = out / "first" / "logs" / "tiny_age.bayesian.log"
    deadline = time.time() + 300
    while time.time() < deadline and not started.exists():
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "first" / "tiny" / "fit.json").exists(), "the first fit never finished"
    assert not _complete_or_absent(out)
    resumed = run_batch([batch_inputs / "data" / "first"],
                        sorted((batch_inputs / "models").glob("*.toml")), out, FAST,
                        progress=False)
    done = resumed.rows.set_index(["spec", "kind"])["action"]
    assert done[("tiny", "bayesian")] == "skipped"
    assert done[("tiny_age", "bayesian")] == "fitted"
    assert not list((out / "first").glob(".*.tmp")), "leftovers of the killed run remain"


def test_two_worker_dask_cluster_gives_the_same_layout(batch_inputs: Path,
                                                       tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    out = tmp_path / "fits"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        result = run_batch([batch_inputs / "data"], [batch_inputs / "models" / "tiny.toml"],
                           out, FAST, client=client, progress=False)
    assert len(result.rows) == 4 and set(result.rows["action"]) == {"fitted"}
    assert not result.rows["status"].eq("error").any(), result.rows["message"].tolist()
    index = build_index(out)
    assert sorted(index["data"].unique()) == ["first", "second"]
    assert not _complete_or_absent(out)
    for data in ("first", "second"):
        assert (out / data / "frequentist" / "tiny" / "comparison.html").is_file()


def test_bad_data_is_reported_and_the_rest_still_runs(batch_inputs: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(batch_inputs / "data" / "first", data / "good")
    shutil.copytree(batch_inputs / "data" / "first", data / "bad")
    edit_cell(data / "bad", "campaigns.csv", 4, "amount_raised", "-5")
    models = tmp_path / "models"
    models.mkdir()
    # a frequentist-only spec keeps this test quick
    (models / "ols.toml").write_text(
        'name = "ols"\n[[frequentist.ols]]\ntable = "t"\nmodel = "m"\n'
        'formula = "log_amount_raised ~ development + male"\n')
    code = main(["run", "--data", str(data), "--models", str(models), "--out",
                 str(tmp_path / "fits"), "--quiet", "--replicates", "9"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "bad" in printed and "campaigns.csv" in printed and "amount_raised" in printed
    assert (tmp_path / "fits" / "good" / "frequentist" / "ols" / "ols.csv").is_file()
    assert not (tmp_path / "fits" / "bad" / "frequentist").exists()


def test_run_key_follows_fundgaps_source(monkeypatch) -> None:
    """A fit made by other fundgap code is not current: the run key holds a digest of the
    source, which a development install changes without changing the version number."""
    from fundgap import batch, store

    key = batch.run_key("spec", "data", "bayesian", {"draws": 10})
    assert batch.run_key("spec", "data", "bayesian", {"draws": 10}) == key
    assert store.package_versions()["fundgap source"] == store.source_digest()[:16]
    monkeypatch.setattr(store, "source_digest", lambda: "0" * 64)
    assert batch.run_key("spec", "data", "bayesian", {"draws": 10}) != key


def test_a_spec_the_data_cannot_serve_is_not_applicable_and_fails_nothing(
        batch_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A data folder without ratings (so no text_rating): a spec that needs it is reported
    as not applicable, naming the column and where it comes from; the other spec is fitted
    and the run exits 0. Fitting it alone names the column that emptied the table."""
    data = tmp_path / "data" / "unrated"
    shutil.copytree(batch_inputs / "data" / "first", data)
    (data / "ratings.csv").unlink()
    campaigns = pd.read_csv(data / "campaigns.csv", dtype=str)
    campaigns["emotional_rating"] = "0.5"
    campaigns.to_csv(data / "campaigns.csv", index=False)
    models = tmp_path / "models"
    models.mkdir()
    plain = ('name = "{name}"\nexposure = "development"\noutcome = "log_amount_raised"\n'
             '[equations.log_amount_raised]\n'
             'formula = "log_amount_raised ~ development + male{extra}"\n')
    (models / "tiny.toml").write_text(plain.format(name="tiny", extra=""))
    (models / "rated.toml").write_text(plain.format(name="rated", extra=" + text_rating"))
    out = tmp_path / "fits"
    code = main(["run", "--data", str(data), "--models", str(models), "--out", str(out),
                 "--draws", "600", "--tune", "300", "--chains", "2", "--replicates", "9",
                 "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "2 not applicable" in printed
    assert ("unrated rated bayesian: not applicable to these data: it needs text_rating, "
            "which no row has (it comes from ratings.csv with text scores, or a "
            "text_rating column in campaigns.csv)") in printed
    assert (out / "unrated" / "tiny" / "fit.json").is_file()
    assert not (out / "unrated" / "rated").exists()

    assert main(["fit", str(models / "rated.toml"), "--data", str(data),
                 "--out", str(tmp_path / "alone")]) == 1
    assert "no rows left: text_rating is missing in every row" in capsys.readouterr().err


def test_run_fits_a_large_gaussian_table_from_sufficient_statistics(
        batch_inputs: Path, tmp_path: Path, monkeypatch) -> None:
    """Over REDUCE_ROWS rows, `fundgap run` fits a Gaussian spec from sufficient statistics
    (as `fundgap fit` does), its fit.json records the prepared rows' fingerprint, so the
    frequentist comparison takes the posterior, and nothing per campaign is kept."""
    import json

    from fundgap import reduce

    monkeypatch.setattr(reduce, "REDUCE_ROWS", 100)
    out = tmp_path / "fits"
    result = run_batch([batch_inputs / "data" / "first"], [batch_inputs / "models" / "tiny.toml"],
                       out, FAST, progress=False)
    assert set(result.rows["status"]) <= {"passed", "failed", "done"}, result.rows
    record = json.loads((out / "first" / "tiny" / "fit.json").read_text())
    assert record["data_form"] == "sufficient statistics (chunked)"
    assert record["per_campaign"] == "skip"
    frequentist = json.loads((out / "first" / "frequentist" / "tiny" /
                              "frequentist.json").read_text())
    assert frequentist["posterior"] == str(out / "first" / "tiny")
    comparison = pd.read_csv(out / "first" / "frequentist" / "tiny" / "comparison.csv")
    assert comparison["posterior_mean"].notna().any()


def test_a_spec_with_a_robustness_table_gets_its_variants_fitted_and_reported(
        batch_inputs: Path, tmp_path: Path) -> None:
    """[robustness]: `fundgap run` fits the variants into fits/<data>/robustness/<spec>, with
    the LOO comparison held out by campaign, county and prefecture; the index lists the
    folder, a rerun skips it, and the report shows it (failed variants marked as such)."""
    from fundgap.render import render_markdown
    from fundgap.report import build_report

    models = tmp_path / "models"
    models.mkdir()
    (models / "robust.toml").write_text(TINY.format(name="robust", extra="") + (
        '[robustness]\nvariants = ["county_in_prefecture", "complete_pooling", "urban"]\n'
        '[robustness.exposures]\nurban = "urbanisation_rate"\n'))
    out = tmp_path / "fits"
    first = run_batch([batch_inputs / "data" / "first"], [models / "robust.toml"], out, FAST,
                      progress=False)
    rows = first.rows.set_index("kind")
    assert rows.loc["robustness", "action"] == "fitted"
    folder = out / "first" / "robustness" / "robust"
    side_by_side = pd.read_csv(folder / "robustness.csv")
    assert list(side_by_side["variant"]) == ["county_in_prefecture", "complete_pooling",
                                             "urban"]
    assert (side_by_side["campaigns"] == 250).all()
    # an exposure variant: another column in the exposure's place, its coefficient reported
    exposures = side_by_side.set_index("variant")["exposure"]
    assert exposures["urban"] == "urbanisation_rate" and exposures[
        "county_in_prefecture"] == "development"
    assert side_by_side["exposure_coefficient_mean"].notna().all()
    summary = pd.read_csv(out / "first" / "robust" / "summary.csv", index_col=0)
    assert side_by_side.loc[0, "exposure_coefficient_mean"] == pytest.approx(
        summary.loc[f"{names.coefficients('log_amount_raised')}[development]", "mean"],
        rel=1e-12)
    loo = pd.read_csv(folder / "loo.csv")
    assert set(loo["held_out"]) == {"campaign", "county", "prefecture"}
    assert loo.groupby("held_out")["variant"].nunique().eq(2).all()
    assert rows.loc["robustness", "status"] == (
        "passed" if side_by_side["passed"].all() else "failed")
    # the spec as written is the spec's own fit, not another run of it
    record = json.loads((folder / "robustness.json").read_text("utf-8"))
    assert record["spec_as_written"] == str(out / "first" / "robust")
    effects = pd.read_csv(out / "first" / "robust" / "effects.csv", keep_default_na=False)
    direct = effects[(effects["effect"] == "direct") & (effects["mediator"] == "")]
    assert side_by_side.loc[0, "direct_mean"] == pytest.approx(float(direct["mean"].iloc[0]),
                                                               rel=1e-12)
    index = pd.read_parquet(first.index).set_index("kind")
    assert index.loc["robustness", "status"] == rows.loc["robustness", "status"]
    again = run_batch([batch_inputs / "data" / "first"], [models / "robust.toml"], out, FAST,
                      progress=False)
    assert set(again.rows["action"]) == {"skipped"}
    (analysis,) = build_report(out / "first").analyses
    assert len(analysis.robustness) == 3 and not analysis.loo.empty
    page = render_markdown(build_report(out / "first"), "figures")
    assert "### The spec's variants" in page and "held_out" in page
    lines = page.splitlines()
    for variant in side_by_side.loc[~side_by_side["passed"], "variant"]:
        assert any(line.startswith(f"| {variant} ") and "FAILED" in line for line in lines)
        if variant in POOLING:    # in the LOO comparison too
            assert f"{variant} (FAILED)" in page


def test_fundgap_robustness_writes_the_same_folder_from_the_command_line(
        batch_inputs: Path, tmp_path: Path, capsys) -> None:
    """`fundgap robustness` without --fit fits the spec as written too, says so in
    robustness.json, and exits 1 exactly where a variant failed its diagnostics."""
    spec = tmp_path / "robust.toml"
    spec.write_text(TINY.format(name="robust", extra="") + (
        '[robustness]\nvariants = ["county_in_prefecture", "prefecture_only"]\n'))
    out = tmp_path / "robustness"
    code = main(["robustness", str(spec), "--data", str(batch_inputs / "data" / "first"),
                 "--out", str(out), "--draws", "150", "--tune", "150", "--chains", "2",
                 "--quiet"])
    record = json.loads((out / "robustness.json").read_text("utf-8"))
    assert record["spec_as_written"].startswith("fitted here")
    assert record["variants"] == ["county_in_prefecture", "prefecture_only"]
    assert code == (0 if record["passed"] else 1)
    assert "Traceback" not in capsys.readouterr().err
    assert set(pd.read_csv(out / "loo.csv")["held_out"]) == {"campaign", "county",
                                                            "prefecture"}
