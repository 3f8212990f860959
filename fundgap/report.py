"""The report a reviewer reads: one self-contained HTML page (and a Markdown twin) per data set.

`build_report(fits/<data>)` reads what `fundgap run` wrote there (prepared data, fit folders,
frequentist folders) and lays out, per analysis: the diagnostics status (a failed fit is shown
failed, in red, with its reasons and without its numbers), the effects with a forest plot of
posterior and frequentist intervals on one axis, the channel contrasts, the county-intercept
shrinkage and a posterior predictive check, and the side-by-side table of published figure,
OLS/KHB, MixedLM and posterior. Figures are ArviZ/matplotlib PNGs embedded in the page.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: figures are only saved
import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from jinja2 import Environment
from markupsafe import Markup

from fundgap import __version__, fitfolder
from fundgap.compare import LEGEND, html_sections
from fundgap.describe import descriptives, occupancy
from fundgap.effects import mark_undefined_shares
from fundgap.errors import FundgapError
from fundgap.prepare import PreparedData, read_prepared
from fundgap.spec import parse_spec
from fundgap.store import atomic_directory, atomic_path

Z95 = 1.959964
POSTERIOR_COLOUR, FREQUENTIST_COLOUR = "#1f5fa8", "#d9731a"
MAIN_EFFECTS = ("total", "direct", "indirect", "indirect_total")


@dataclass
class Figure:
    """A rendered figure: its name (for the Markdown twin's file) and PNG bytes."""

    name: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


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


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _label(row: pd.Series, qualifiers: list[str]) -> str:
    parts = [str(row[q]) for q in qualifiers if str(row.get(q, "") or "")]
    name = row["effect"] + (f": {row['mediator']}" if row.get("mediator") else "")
    return name + (f" ({', '.join(parts)})" if parts else "")


def frequentist_intervals(folder: Path, spec_text: str) -> pd.DataFrame:
    """Frequentist counterparts of effects.csv rows: KHB components, and table models whose
    spec entry names a `posterior_effect` (e.g. Table 5's per-channel slopes)."""
    rows = []
    khb = folder / "khb.csv"
    if khb.is_file():
        for _, k in pd.read_csv(khb, keep_default_na=False).iterrows():
            if k["component"] in MAIN_EFFECTS:
                se = k["cluster_std_error"] if k["cluster_std_error"] != "" else k["std_error"]
                rows.append({"effect": k["component"], "mediator": k["mediator"],
                             "estimate": float(k["estimate"]), "se": float(se),
                             "source": "KHB"})
    ols = folder / "ols.csv"
    if ols.is_file():
        spec = parse_spec(spec_text, "spec.toml", columns=None)
        fitted = pd.read_csv(ols)
        for model in spec.tables:
            if not model.posterior_effect:
                continue
            hit = fitted[(fitted["table"] == model.table) & (fitted["model"] == model.model)
                         & (fitted["term"] == spec.exposure)]
            if not hit.empty:
                rows.append({"mediator": "", **model.posterior_effect,
                             "estimate": float(hit["estimate"].iloc[0]),
                             "se": float(hit["cluster_std_error"].iloc[0]),
                             "source": f"{model.table} {model.model}"})
    return pd.DataFrame(rows)


def forest_figures(effects: pd.DataFrame, frequentist: pd.DataFrame,
                   title: str) -> list[Figure]:
    """Forest plots of total, direct and indirect effects: the posterior's 95% interval and,
    where one exists, the frequentist 95% interval just below it. One panel per outcome
    (their scales differ)."""
    main = effects[effects["effect"].isin(MAIN_EFFECTS)].copy()
    if main.empty:
        return []
    qualifiers = [c for c in main.columns if c in ("channel", "moderator")]
    outcomes = main["outcome"].unique() if "outcome" in main else [None]
    figures = []
    for outcome in outcomes:
        part = main if outcome is None else main[main["outcome"] == outcome]
        part = part.iloc[::-1].reset_index(drop=True)
        height = 0.45 * len(part) + 1.2
        figure, axis = plt.subplots(figsize=(7.5, height))
        compared = 0
        for position, row in part.iterrows():
            axis.plot([row["ci_lower"], row["ci_upper"]], [position, position],
                      color=POSTERIOR_COLOUR, lw=2.2)
            axis.plot(row["mean"], position, "o", color=POSTERIOR_COLOUR, ms=5)
            match = _matching(frequentist, row, qualifiers)
            if match is not None:
                compared += 1
                low = match["estimate"] - Z95 * match["se"]
                high = match["estimate"] + Z95 * match["se"]
                axis.plot([low, high], [position - 0.25, position - 0.25],
                          color=FREQUENTIST_COLOUR, lw=1.6)
                axis.plot(match["estimate"], position - 0.25, "s",
                          color=FREQUENTIST_COLOUR, ms=4)
        axis.axvline(0, color="#888", lw=0.8, ls="--")
        axis.set_yticks(range(len(part)))
        axis.set_yticklabels([_label(r, qualifiers) for _, r in part.iterrows()])
        scale = f" ({outcome})" if outcome is not None else ""
        # name a frequentist series only where one is drawn
        series = ("posterior (blue) and frequentist (orange)" if compared
                  else "posterior (no frequentist counterpart)")
        axis.set_title(f"{title}{scale}: {series}, 95%", fontsize=9)
        axis.set_xlabel("effect per unit of the exposure")
        figures.append(Figure(f"forest{'_' + str(outcome) if outcome else ''}",
                              f"Effects{scale}", _png(figure)))
    return figures


def _matching(frequentist: pd.DataFrame, row: pd.Series,
              qualifiers: list[str]) -> pd.Series | None:
    if frequentist.empty:
        return None
    match = frequentist[(frequentist["effect"] == row["effect"])
                        & (frequentist["mediator"].fillna("") == (row.get("mediator") or ""))]
    for column in qualifiers:
        if column in match:
            match = match[match[column].fillna("") == str(row[column])]
        elif str(row[column]):
            return None
    return None if match.empty else match.iloc[0]


def contrast_figure(contrasts: pd.DataFrame) -> list[Figure]:
    """The moderator contrasts of total, direct and indirect effects with 95% intervals."""
    main = contrasts[contrasts["effect"].isin(MAIN_EFFECTS)]
    if main.empty:
        return []
    main = main.iloc[::-1].reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(7.5, 0.4 * len(main) + 1.2))
    qualifiers = [c for c in ("outcome",) if c in main]
    for position, row in main.iterrows():
        axis.plot([row["ci_lower"], row["ci_upper"]], [position] * 2, color=POSTERIOR_COLOUR,
                  lw=2.2)
        axis.plot(row["mean"], position, "o", color=POSTERIOR_COLOUR, ms=5)
    axis.axvline(0, color="#888", lw=0.8, ls="--")
    axis.set_yticks(range(len(main)))
    axis.set_yticklabels([_label(r, qualifiers) for _, r in main.iterrows()])
    axis.set_title(f"{main['contrast'].iloc[0]}: posterior contrasts, 95%", fontsize=9)
    return [Figure("contrasts", "Contrasts between the moderator's levels", _png(figure))]


def sensitivity_figure(curve: pd.DataFrame, limits: pd.DataFrame) -> list[Figure]:
    """Each mediator's indirect effect (mean and 95% interval) against rho, the correlation
    of its equation's and the outcome's campaign-level errors that the fit assumes 0; the
    rho at which the interval first includes 0 dashed (fundgap.sensitivity)."""
    indirect = curve[curve["effect"] == "indirect"]
    if indirect.empty:
        return []
    mediators = list(dict.fromkeys(indirect["mediator"]))
    level = next((c for c in indirect.columns if c not in (
        "mediator", "rho", "effect", "mean", "sd", "ci_lower", "ci_upper")), None)
    groups = list(dict.fromkeys(indirect[level])) if level else [None]
    figure, axes = plt.subplots(1, len(mediators), figsize=(3.2 * len(mediators), 3.0),
                                sharey=False, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, mediator in zip(axes[0], mediators, strict=True):
        for k, group in enumerate(groups):
            rows = indirect[indirect["mediator"] == mediator]
            marks = limits[limits["mediator"] == mediator]
            if level:
                rows, marks = rows[rows[level] == group], marks[marks[level] == group]
            colour = colours[k % len(colours)]
            axis.fill_between(rows["rho"], rows["ci_lower"], rows["ci_upper"], color=colour,
                              alpha=0.2, lw=0)
            axis.plot(rows["rho"], rows["mean"], color=colour, lw=1.5, label=group)
            for value in marks["rho_interval_zero"].dropna():
                axis.axvline(value, color=colour, lw=0.9, ls="--")
        axis.axhline(0, color="#888", lw=0.8)
        axis.set_title(mediator, fontsize=9)
        axis.set_xlabel("rho (mediator-outcome error correlation)", fontsize=8)
    axes[0][0].set_ylabel("indirect effect", fontsize=8)
    if level:
        axes[0][0].legend(fontsize=7, title=level, title_fontsize=7)
    return [Figure("sensitivity", "Sensitivity of each indirect effect to unmeasured "
                   "mediator-outcome confounding: mean and 95% interval against rho (the fit "
                   "assumes 0); dashed where the interval first includes 0", _png(figure))]


def shrinkage_figure(shrinkage: pd.DataFrame, equation: str) -> list[Figure]:
    """County intercepts (posterior means) against their campaign counts, beside the
    no-pooling estimates: sparse counties are pulled to zero, well-observed ones are not."""
    county = shrinkage[(shrinkage["equation"] == equation) & (shrinkage["level"] == "county")]
    if county.empty:
        return []
    rng = np.random.default_rng(0)
    jitter = county["campaigns"] * np.exp(rng.uniform(-0.08, 0.08, len(county)))
    figure, axis = plt.subplots(figsize=(7.5, 4))
    axis.scatter(jitter, county["no_pooling"], s=9, color="#bbbbbb",
                 label="no pooling (county mean residual)")
    axis.scatter(jitter, county["intercept_mean"], s=9, color=POSTERIOR_COLOUR,
                 label="partial pooling (posterior mean)")
    axis.axhline(0, color="#888", lw=0.8, ls="--")
    axis.set_xscale("log")
    axis.set_xlabel("campaigns in the county (log scale)")
    axis.set_ylabel(f"county intercept, {equation}")
    axis.legend(fontsize=8)
    return [Figure(f"shrinkage_{equation}", f"County intercepts of {equation} against their "
                   "campaign counts", _png(figure))]


def ppc_figure(idata: az.InferenceData, outcome: str) -> list[Figure]:
    """ArviZ's posterior predictive check of the outcome (thinned draws saved with the fit)."""
    if "posterior_predictive" not in idata.groups() or \
            outcome not in idata.posterior_predictive:
        return []
    axes = az.plot_ppc(idata, var_names=[outcome], num_pp_samples=100, random_seed=0,
                       figsize=(7.5, 3.5), textsize=9)
    figure = np.atleast_1d(axes).ravel()[0].figure
    return [Figure(f"ppc_{outcome}", f"Posterior predictive check of {outcome}", _png(figure))]


def _comparison(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """A frequentist folder's comparison and notes (none from a damaged folder)."""
    if not (folder / fitfolder.COMPARISON).is_file():
        return pd.DataFrame(), []
    try:
        record = fitfolder.checked_record(folder, "frequentist")
    except FundgapError as error:
        problems = getattr(error, "problems", [str(error)])
        return pd.DataFrame(), [f"the frequentist folder is damaged ({'; '.join(problems)}): "
                                "its comparison is not shown; the next `fundgap run` writes "
                                "it again"]
    return pd.read_csv(folder / fitfolder.COMPARISON), record["notes"]


def _analysis(fits: Path, name: str, table: pd.DataFrame) -> Analysis:
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


def model_graph(spec, table: pd.DataFrame, record: dict) -> tuple[str, str]:
    """The fitted model's graph as SVG (empty where Graphviz's dot is not installed) and its
    variable listing, built in the form the fit used (`record`: its fit.json)."""
    import pymc as pm

    from fundgap.build import build_model
    from fundgap.design import build_design

    forms = record.get("equation_forms", {})
    try:
        model = build_model(build_design(spec, table),
                            [e for e, f in forms.items() if f == "exact"],
                            record.get("centred", []),
                            [e for e, f in forms.items() if f == "laplace"])
    except (FundgapError, ValueError, KeyError) as error:
        return "", f"(the model cannot be built from these data: {error})"
    text = model.str_repr()
    try:
        svg = pm.model_to_graphviz(model).pipe(format="svg").decode("utf-8")
    except Exception:  # no dot binary (graphviz.ExecutableNotFound) or no Python package
        return "", text
    return svg[svg.find("<svg"):], text


def _named(prefix: str, figures: list[Figure]) -> list[Figure]:
    """File names unique over the report: the analysis, then the figure."""
    return [Figure(f"{prefix}_{f.name}", f.caption, f.png) for f in figures]


def _figures(saved: fitfolder.SavedFit, frequentist: Path, analysis: Analysis
             ) -> list[Figure]:
    """Read a passed fit's tables into `analysis` and draw its figures."""
    spec = saved.spec
    analysis.effects = saved.effects
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
    index = fitfolder.build_index(fits.parent)
    index = index[index["data"] == fits.name]
    prepared = read_prepared(fits / fitfolder.PREPARED)
    facts, table = data_summary(prepared)
    analyses = [_analysis(fits, n, prepared.table) for n in names]
    # the index reads records, not the files they list: what the analyses found damaged
    # is marked there too
    broken = [a.name for a in analyses if a.status == "damaged"]
    index.loc[(index["kind"] == "bayesian") & index["spec"].isin(broken), "status"] = "damaged"
    return Report(fits.name, facts, table, index, analyses)


def significant(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits in positional notation (never 1.2e-05), with
    thousands separated: 0.000894, 0.0447, 31,600."""
    if not np.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = digits - 1 - int(np.floor(np.log10(abs(value))))
    return f"{round(value, decimals):,.{max(decimals, 0)}f}"


def _effects_table(effects: pd.DataFrame) -> pd.DataFrame:
    """The effects as a reader sees them: effects to 3 significant digits, R-hat to 3
    decimals, ESS whole; a share whose total's interval includes 0 as not defined."""
    if "defined" not in effects:  # a fit written before effects.csv had the flag
        effects = mark_undefined_shares(effects)
    main = effects[effects["effect"].isin((*MAIN_EFFECTS, "share"))]
    keep = [c for c in main.columns if c not in ("sd", "p_positive", "defined")]
    shown = main[keep].copy().astype(object)
    undefined = ~main["defined"].astype(bool)
    for column in ("mean", "ci_lower", "ci_upper"):
        shown[column] = main[column].map(significant)
    shown["r_hat"] = main["r_hat"].map(lambda v: f"{v:.3f}")
    for column in ("ess_bulk", "ess_tail"):
        if column in main:
            shown[column] = main[column].map(lambda v: f"{v:,.0f}")
    shown.loc[undefined, "mean"] = "not defined: the total's 95% interval includes 0"
    shown.loc[undefined, [c for c in ("ci_lower", "ci_upper", "r_hat", "ess_bulk",
                                      "ess_tail") if c in shown]] = "–"
    return shown


def _frame_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0,
                         classes="grid")


# how each analysis status is coloured in the contents and on its section
STATUS_CLASS = {"passed": "passed", "FAILED": "failed", "damaged": "missing",
                "no Bayesian fit": "missing"}


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    index = report.index.drop(columns=["run_key", "data_fingerprint", "folder"],
                              errors="ignore")
    analyses = []
    for analysis in report.analyses:
        analyses.append({
            "a": analysis,
            "effects": Markup(_frame_html(_effects_table(analysis.effects)))
            if not analysis.effects.empty else "",
            "contrasts": Markup(_frame_html(analysis.contrasts))
            if not analysis.contrasts.empty
            else "",
            "comparison": html_sections(analysis.comparison)
            if not analysis.comparison.empty else [],
        })
    # autoescaped: spec descriptions and notes are text; the tables are HTML already
    return Environment(autoescape=True).from_string(PAGE).render(
        report=report, analyses=analyses, index=Markup(_status_html(index)),
        descriptives=Markup(report.descriptives.to_html(float_format=lambda v: f"{v:.3f}",
                                                        border=0, classes="grid")),
        legend=LEGEND, version=__version__, status_class=STATUS_CLASS,
        generated=pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC"))


def _status_html(index: pd.DataFrame) -> str:
    def colour(value: object) -> str:
        return {"failed": "color:#b00020;font-weight:bold",
                "passed": "color:#1b7a2f"}.get(str(value), "")

    index = index.assign(
        finished_at=pd.to_datetime(index["finished_at"]).dt.strftime("%Y-%m-%d %H:%M"),
        divergences=index["divergences"].astype("Int64"))
    styler = index.style.hide(axis="index").map(colour, subset=["status"]).format(
        precision=3, na_rep="")
    return styler.to_html()


def render_markdown(report: Report, figures_folder: str) -> str:
    """The report as Markdown; figures are files in `figures_folder` (relative)."""
    lines = [f"# fundgap report: {report.data}", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.facts.items()] + [""]
    index = report.index.drop(columns=["run_key", "data_fingerprint", "folder"],
                              errors="ignore")
    lines += ["## Contents", "", *[f"- [{a.name}](#{a.name}): {a.status}"
                                   for a in report.analyses], ""]
    lines += ["## Fits", "", index.to_markdown(index=False), ""]
    for analysis in report.analyses:
        lines += [f"## {analysis.name}", "", analysis.description, ""]
        if analysis.status == "FAILED":
            lines += [f"**FAILED diagnostics**: {'; '.join(analysis.reasons)}. Its results "
                      "are not shown.", ""]
        elif analysis.status == "damaged":
            lines += [f"**Fit folder damaged** ({'; '.join(analysis.reasons)}): its results "
                      "are not shown; the next `fundgap run` fits it again.", ""]
        if analysis.graph_text:
            lines += ["<details><summary>The model's variables</summary>", "", "```",
                      analysis.graph_text, "```", "", "</details>", ""]
        if analysis.status == "passed":
            d = analysis.diagnostics
            lines += [f"Diagnostics passed: {d['divergences']} divergences, max R-hat "
                      f"{d['max_r_hat']:.3f}, min bulk ESS {d['min_ess_bulk']:.0f}"
                      + (f", min tail ESS {d['min_ess_tail']:.0f}, min E-BFMI "
                         f"{d['min_bfmi']:.2f}" if "min_ess_tail" in d else "")
                      + f", {d['wall_seconds']:.0f} s ({d['form']} form)."
                      + "".join(f" Warning: {w}." for w in d.get("warnings", [])), "",
                      _effects_table(analysis.effects).to_markdown(index=False,
                                                                   floatfmt=".4g"), ""]
            if not analysis.contrasts.empty:
                lines += [analysis.contrasts.to_markdown(index=False, floatfmt=".4g"), ""]
            lines += [f"![{f.caption}]({figures_folder}/{f.name}.png)"
                      for f in analysis.figures] + [""]
        if not analysis.comparison.empty:
            from fundgap.compare import display_frame

            lines += ["### Published, frequentist and Bayesian side by side", "",
                      display_frame(analysis.comparison).to_markdown(index=False), "",
                      f"*{LEGEND}*", ""]
    return "\n".join(lines)


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


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fundgap report: {{ report.data }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.status { padding: 0.5rem 0.8rem; border-radius: 4px; display: inline-block; }
.passed { background: #e3f4e6; color: #1b5e20; }
.failed { background: #fde2e1; color: #b00020; font-weight: bold; }
.missing { background: #eee; color: #555; }
.warning { background: #fff4d6; color: #7a5200; }
nav .status { padding: 0 0.4rem; font-size: 0.75rem; }
figure { margin: 1rem 0; } figcaption { font-size: 0.8rem; color: #555; }
.legend, .notes, .meta { font-size: 0.8rem; color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dt { font-weight: 600; }
</style></head><body>
{% macro graph(a) %}{% if a.graph_svg or a.graph_text %}<details class="graph"><summary>The
model ({{ "graph" if a.graph_svg else "its variables; install Graphviz for the graph" }})</summary>
{% if a.graph_svg %}{{ a.graph_svg|safe }}{% else %}<pre>{{ a.graph_text }}</pre>{% endif %}
</details>{% endif %}{% endmacro %}
<h1>fundgap report: {{ report.data }}</h1>
<p class="meta">fundgap {{ version }}, {{ generated }}</p>
<nav id="contents"><h2>Contents</h2><ul>
<li><a href="#data">Data</a></li><li><a href="#fits">Fits</a></li>
{% for item in analyses %}{% set a = item.a %}<li><a href="#{{ a.name }}">{{ a.name }}</a>
<span class="status {{ status_class[a.status] }}">{{ a.status }}</span></li>
{% endfor %}</ul></nav>
<h2 id="data">Data</h2>
<dl>{% for key, value in report.facts.items() %}
<dt>{{ key }}</dt><dd>{{ value }}</dd>{% endfor %}</dl>
<details><summary>Descriptives (Table 1's variables)</summary>{{ descriptives }}</details>
<h2 id="fits">Fits</h2>
{{ index }}
{% for item in analyses %}{% set a = item.a %}
<h2 id="{{ a.name }}">{{ a.name }}</h2>
<p>{{ a.description }}</p>
{% if a.status == "passed" %}
<p class="status passed">Diagnostics passed: {{ a.diagnostics.divergences }} divergences,
max R-hat {{ "%.3f"|format(a.diagnostics.max_r_hat) }}, min bulk ESS
{{ "%.0f"|format(a.diagnostics.min_ess_bulk) }},{% if a.diagnostics.min_ess_tail is defined %}
min tail ESS {{ "%.0f"|format(a.diagnostics.min_ess_tail) }}, min E-BFMI
{{ "%.2f"|format(a.diagnostics.min_bfmi) }},{% endif %}
{{ "%.0f"|format(a.diagnostics.wall_seconds) }} s
({{ a.diagnostics.form }} form, {{ a.diagnostics.backend }})</p>
{% for w in a.diagnostics.get("warnings", []) %}<p class="status warning">Warning: {{ w }}</p>
{% endfor %}
{{ graph(a) }}
<h3>Effects</h3>
{{ item.effects }}
{% for f in a.figures %}<figure><img alt="{{ f.caption }}" src="{{ f.data_uri }}">
<figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}
{% if item.contrasts %}<h3>Contrasts</h3>{{ item.contrasts }}{% endif %}
{% elif a.status == "FAILED" %}
<p class="status failed">FAILED diagnostics: {{ a.reasons|join("; ") }}. The fit's results are
not shown.</p>
{{ graph(a) }}
{% elif a.status == "damaged" %}
<p class="status missing">Fit folder damaged ({{ a.reasons|join("; ") }}): its results are not
shown; the next <code>fundgap run</code> fits it again.</p>
{% else %}<p class="status missing">No Bayesian fit for this spec.</p>{% endif %}
{% if item.comparison %}<h3>Published, frequentist and Bayesian side by side</h3>
{% for section in item.comparison %}<h4>{{ section.table }}</h4>{{ section.html }}{% endfor %}
<p class="legend">{{ legend }}</p>
<ul class="notes">{% for note in a.comparison_notes %}<li>{{ note }}</li>{% endfor %}</ul>
{% endif %}
{% endfor %}
</body></html>
"""
