"""The report a reviewer reads: one self-contained HTML page (and a Markdown twin) per data set.

`build_report(fits/<data>)` reads what `fundgap run` wrote there (prepared data, fit folders,
frequentist folders) and lays out, per analysis: the diagnostics status (a failed fit is shown
failed, in red, with its reasons and without its numbers), the effects with a forest plot of
posterior and frequentist intervals on one axis, the channel contrasts, the county-intercept
shrinkage and a posterior predictive check, the side-by-side table of published figure,
OLS/KHB, MixedLM and posterior, and Table 4's variants with the LOO comparison of pooling
structures (a spec with a [robustness] table). Figures are ArviZ/matplotlib PNGs embedded in
the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fundgap import fit_index, fitfolder
from fundgap.correlated import correlation_table
from fundgap.describe import descriptives, occupancy
from fundgap.errors import FundgapError
from fundgap.figures import (
    Figure,
    contrast_figure,
    forest_figures,
    frequentist_intervals,
    model_graph,
    ppc_figure,
    sensitivity_figure,
    shrinkage_figure,
)
from fundgap.prepare import PreparedData, read_prepared
from fundgap.render import render_html, render_markdown
from fundgap.store import atomic_directory, atomic_path


@dataclass
class Analysis:
    """What the report shows of one spec."""

    name: str
    description: str
    status: str                       # passed, FAILED, damaged, or "no Bayesian fit"
    reasons: list[str]
    diagnostics: dict
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    contrasts: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparison_notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    graph_svg: str = ""               # the model's graph (Graphviz), where dot is installed
    graph_text: str = ""              # the model's variables, as PyMC lists them
    # Table 4's variants side by side and their LOO comparison (a [robustness] spec)
    robustness: pd.DataFrame = field(default_factory=pd.DataFrame)
    loo: pd.DataFrame = field(default_factory=pd.DataFrame)
    robustness_notes: list[str] = field(default_factory=list)
    # the mediators' error correlations beside the OLS residuals' (correlated errors)
    error_correlations: pd.DataFrame = field(default_factory=pd.DataFrame)


def _problems(error: FundgapError) -> str:
    """What a refused folder's error says is wrong with it."""
    return "; ".join(error.problems if isinstance(error, fitfolder.DamagedFolder)
                     else [str(error)])


def _comparison(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """A frequentist folder's comparison and notes (none from a damaged folder)."""
    if not (folder / fitfolder.COMPARISON).is_file():
        return pd.DataFrame(), []
    try:
        record = fitfolder.checked_record(folder, "frequentist")
    except FundgapError as error:  # damaged, or written by another version
        return pd.DataFrame(), [f"the frequentist folder is damaged ({_problems(error)}): "
                                "its comparison is not shown; the next `fundgap run` writes "
                                "it again"]
    return pd.read_csv(folder / fitfolder.COMPARISON), record["notes"]


def _robustness(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """A robustness folder's tables and notes (none from a damaged folder)."""
    if not folder.is_dir():
        return pd.DataFrame(), pd.DataFrame(), []
    try:
        side_by_side, loo, record = fitfolder.read_robustness(folder)
    except FundgapError as error:
        return pd.DataFrame(), pd.DataFrame(), [
            f"the robustness folder is damaged ({_problems(error)}): its variants are not "
            "shown; the next `fundgap run` fits them again"]
    failed = record.get("failed_variants", [])
    notes = [f"FAILED diagnostics (their numbers are not shown): {', '.join(failed)}"
             ] if failed else []
    return side_by_side, loo, notes


def _analysis(fits: Path, name: str, table: pd.DataFrame) -> Analysis:
    analysis = _bayesian_analysis(fits, name, table)
    analysis.robustness, analysis.loo, analysis.robustness_notes = _robustness(
        fitfolder.robustness_folder(fits, name))
    return analysis


def _bayesian_analysis(fits: Path, name: str, table: pd.DataFrame) -> Analysis:
    folder = fitfolder.bayesian_folder(fits, name)
    frequentist = fitfolder.frequentist_folder(fits, name)
    comparison, notes = _comparison(frequentist)
    if not (folder / fitfolder.SPEC).is_file():
        return Analysis(name, "", "no Bayesian fit", [], {}, comparison=comparison,
                        comparison_notes=notes)
    try:
        saved = fitfolder.load_fit(folder)
        passed = saved.diagnostics["passed"]
    except fitfolder.DamagedFolder as error:  # e.g. a posterior.nc truncated since
        return Analysis(name, "", "damaged", error.problems, {}, comparison=comparison,
                        comparison_notes=notes)
    except (OSError, ValueError, KeyError, FundgapError) as error:  # not a folder fundgap wrote
        return Analysis(name, "", "damaged",
                        [f"cannot be read ({type(error).__name__}: {error})"], {},
                        comparison=comparison, comparison_notes=notes)
    analysis = Analysis(name, saved.spec.description.strip(), "passed" if passed else "FAILED",
                        saved.reasons, saved.diagnostics, comparison=comparison,
                        comparison_notes=notes)
    analysis.graph_svg, analysis.graph_text = model_graph(saved.spec, table, saved.record)
    if not passed:
        return analysis  # a failed fit's numbers are never shown
    analysis.figures = _named(name, _figures(saved, frequentist, analysis))
    return analysis


def _named(prefix: str, figures: list[Figure]) -> list[Figure]:
    """File names unique over the report: the analysis, then the figure."""
    return [Figure(f"{prefix}_{f.name}", f.caption, f.png) for f in figures]


def _figures(saved: fitfolder.SavedFit, frequentist: Path, analysis: Analysis
             ) -> list[Figure]:
    """Read a passed fit's tables into `analysis` and draw its figures."""
    spec = saved.spec
    analysis.effects = saved.effects
    analysis.error_correlations = correlation_table(saved.summary, saved.record)
    figures = forest_figures(analysis.effects, frequentist_intervals(
        frequentist, spec.text) if frequentist.is_dir() else pd.DataFrame(), analysis.name)
    if not saved.contrasts.empty:
        analysis.contrasts = saved.contrasts
        figures += contrast_figure(analysis.contrasts)
    if not saved.shrinkage.empty:
        figures += shrinkage_figure(saved.shrinkage, spec.outcome)
    if not saved.sensitivity.empty:
        figures += sensitivity_figure(saved.sensitivity, saved.sensitivity_thresholds)
    return figures + ppc_figure(saved.idata, spec.outcome)


def data_summary(prepared: PreparedData) -> tuple[dict, pd.DataFrame]:
    """Counts, county occupancy and factor diagnostics; and the descriptives table."""
    table, diagnostics = prepared.table, prepared.diagnostics
    occ = occupancy(table)
    factor = diagnostics.get("development_factor", {})
    facts = {
        "campaigns": len(table),
        "counties": occ["n_counties"],
        "prefectures": int(table["prefecture_code"].nunique()),
        "campaigns in counties seen once": f"{occ['share_campaigns_in_counties_seen_once']:.1%}",
        "campaigns in counties seen twice":
            f"{occ['share_campaigns_in_counties_seen_twice']:.1%}",
        "counties seen 3+ times": occ["counties_seen_3plus"],
        "channels": ", ".join(f"{k} {v}" for k, v in
                              table["channel"].value_counts().items()),
    }
    if factor:
        facts["development factor"] = (
            f"{factor['variance_explained']:.1%} of variance; loadings "
            + ", ".join(f"{k} {v:.2f}" for k, v in factor["loadings"].items())
            + f"; KMO {factor['kmo']:.2f}; Bartlett chi2({factor['bartlett_df']}) = "
            f"{factor['bartlett_chi2']:.0f}")
    if diagnostics.get("rating_icc"):
        facts["rating ICC(1)"] = ", ".join(f"{k} {v:.3f}"
                                           for k, v in diagnostics["rating_icc"].items())
    return facts, descriptives(table)


@dataclass
class Report:
    """Everything on the page, before it is rendered."""

    data: str
    facts: dict
    descriptives: pd.DataFrame
    index: pd.DataFrame
    analyses: list[Analysis]


def build_report(fits: str | Path) -> Report:
    """Read a data set's fits folder (`fits/<data>/`, as `fundgap run` writes it)."""
    fits = Path(fits)
    if not (fits / fitfolder.PREPARED).is_file():
        raise FundgapError(f"{fits}: no prepared.parquet; run `fundgap run` for this data set "
                           "first")
    names = fitfolder.spec_names(fits)
    if not names:
        raise FundgapError(f"{fits}: no fits to report")
    index = fit_index.build_index(fits.parent)
    index = index[index["data"] == fits.name]
    prepared = read_prepared(fits / fitfolder.PREPARED)
    facts, table = data_summary(prepared)
    analyses = [_analysis(fits, n, prepared.table) for n in names]
    # the index reads records, not the files they list: what the analyses found damaged
    # is marked there too
    broken = [a.name for a in analyses if a.status == "damaged"]
    index.loc[(index["kind"] == "bayesian") & index["spec"].isin(broken), "status"] = "damaged"
    return Report(fits.name, facts, table, index, analyses)


def write_report(report: Report, out: str | Path) -> tuple[Path, Path]:
    """Write `out` (HTML, self-contained) and its Markdown twin beside it (`.md`, figures in
    `<stem>_figures/`), each atomically."""
    out = Path(out)
    markdown = out.with_suffix(".md")
    figures = out.parent / f"{out.stem}_figures"
    with atomic_directory(figures) as folder:
        for analysis in report.analyses:
            for figure in analysis.figures:
                (folder / f"{figure.name}.png").write_bytes(figure.png)
    with atomic_path(out) as temporary:
        temporary.write_text(render_html(report), "utf-8")
    with atomic_path(markdown) as temporary:
        temporary.write_text(render_markdown(report, figures.name), "utf-8")
    return out, markdown


