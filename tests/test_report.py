"""The report (`fundgap report`): what a passing and a failed fit look like on the page, the
Markdown twin, and the page rendered in a real (headless) browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fundgap.compare import write_frequentist
from fundgap.fit import write_fit
from fundgap.frequentist import run_frequentist
from fundgap.report import build_report, write_report
from fundgap.store import write_table

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
    failed = fits / "regional_failed"
    shutil.copytree(fits / "regional_mediation", failed)
    diagnostics = json.loads((failed / "diagnostics.json").read_text())
    diagnostics.update(passed=False, reasons=["max R-hat 1.050 > 1.01 (test)"])
    (failed / "diagnostics.json").write_text(json.dumps(diagnostics))
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
                       "regional_mediation_shrinkage_log_amount_raised.png"]
    # every figure is embedded in the page itself
    assert html.count("data:image/png;base64,") == 3
    # the side-by-side table with the published Table 2 and the KHB rows
    assert "table2_outcome_ols" in html and "table3_khb_decomposition" in html
    markdown = (report_files / "report.md").read_text()
    assert "](report_figures/regional_mediation_forest.png)" in markdown


def test_report_shows_a_failed_fit_as_failed_without_its_numbers(report_files: Path) -> None:
    html = (report_files / "report.html").read_text()
    section = html.split('<h2 id="regional_failed">')[1].split("<h2 id=")[0]
    assert "FAILED diagnostics: max R-hat 1.050 &gt; 1.01 (test)" in section
    assert "class=\"status failed\"" in section
    assert "<h3>Effects</h3>" not in section and "data:image/png" not in section
    markdown = (report_files / "report.md").read_text()
    assert "**FAILED diagnostics**: max R-hat 1.050 > 1.01 (test)" in markdown


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                    "(make test installs it where apt-get can)")
def test_report_renders_in_headless_chromium(report_files: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    page = (report_files / "report.html").resolve().as_uri()
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,4000",
                    page], check=True, capture_output=True, timeout=120)
    pixels = imread(shot)
    assert pixels.shape[0] >= 4000 and pixels.shape[1] >= 1200
    # not a blank page: text, tables and figures put many distinct colours on it
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1])[::50], axis=0)) > 50
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 3 and "FAILED diagnostics" in dom
