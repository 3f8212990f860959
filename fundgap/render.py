"""Rendering: the comparison tables and the report as HTML and Markdown, from computed frames
(fundgap.compare) and read folders (fundgap.report). The HTML pages are Jinja templates in
fundgap/templates/ (comparison.html, report.html), autoescaped: spec descriptions and notes
are text; the tables are HTML already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from fundgap import __version__
from fundgap.effects import mark_undefined_shares
from fundgap.figures import MAIN_EFFECTS

if TYPE_CHECKING:
    from fundgap.report import Analysis, Report

TEMPLATES = Environment(loader=PackageLoader("fundgap", "templates"), autoescape=True)


def _decimals(value: float | None) -> int:
    """Three decimals, as the study prints, or more where that would print a nonzero value as
    0.000: enough for its first two significant digits."""
    if value is None or pd.isna(value) or value == 0 or abs(value) >= 0.0005:
        return 3
    return 1 - int(np.floor(np.log10(abs(value))))


def _number(value: float, decimals: int = 3) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{decimals}f}"


def _cell(estimate: float, std_error: float | None = None, mark: str = "") -> str:
    """estimate[mark] (se), both to the decimals the smaller of them needs (a verifier
    count's coefficient of 0.0031 with se 0.0004 is not 0.003 (0.000))."""
    if estimate is None or pd.isna(estimate):
        return ""
    has_error = std_error is not None and not pd.isna(std_error)
    decimals = _decimals(std_error if has_error and std_error else estimate)
    text = f"{_number(estimate, decimals)}{mark if isinstance(mark, str) else ''}"
    if has_error:
        text += f" ({_number(std_error, decimals)})"
    return text


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The comparison as formatted text cells, the way the study prints a table."""
    out = pd.DataFrame({
        "table": frame["table"], "model": frame["model"], "term": frame["term"],
        "n": frame["n"].map(lambda v: "" if pd.isna(v) else str(int(v)))})
    flags = (frame["published_outside_frequentist"].eq(True).map({True: "†", False: ""})
             + frame["published_outside_posterior"].eq(True).map({True: "‡", False: ""}))
    out["published"] = [
        _cell(r.published_estimate, r.published_std_error, r.published_stars) + flag
        for r, flag in zip(frame.itertuples(), flags, strict=True)]
    out["frequentist: OLS, logit, NB, beta, Tobit or KHB (se) [cluster se]"] = [
        _cell(r.frequentist_estimate, r.frequentist_std_error, r.frequentist_stars)
        + (f" [{_number(r.frequentist_cluster_std_error)}]"
           if not pd.isna(r.frequentist_cluster_std_error) else "")
        for r in frame.itertuples()]
    out["MixedLM (se)"] = [_cell(r.mixedlm_estimate, r.mixedlm_std_error, r.mixedlm_stars)
                           for r in frame.itertuples()]
    posterior = []
    for r in frame.itertuples():
        if pd.isna(r.posterior_mean):
            posterior.append("")
        elif r.posterior_passed is False:
            posterior.append("FAILED diagnostics")
        else:
            posterior.append(f"{_number(r.posterior_mean)} [{_number(r.posterior_ci_lower)}, "
                             f"{_number(r.posterior_ci_upper)}]")
    out["posterior mean [95% interval]"] = posterior
    shares = frame[["published_share", "frequentist_share", "posterior_share"]]
    if shares.notna().any().any():
        out["share: published / KHB / posterior"] = [
            " / ".join(_number(v) or "–" for v in row) if row.notna().any() else ""
            for _, row in shares.iterrows()]
    return out


LEGEND = ("Estimates with standard errors in parentheses; stars as the study prints them "
          "(! p<0.10, * p<0.05, ** p<0.01, *** p<0.001), for the published and frequentist "
          "columns only; published stars are recomputed from estimate and se. [ ] is the "
          "county-clustered se. † the published figure lies outside our 95% frequentist "
          "interval (cluster-robust for OLS, county bootstrap for KHB); ‡ outside the "
          "posterior's 95% interval (HDI for coefficients, equal-tailed for effects).")


def to_markdown(frame: pd.DataFrame, title: str, notes: list[str]) -> str:
    """The comparison as a Markdown document."""
    lines = [f"# {title}", ""]
    if frame.empty:
        lines.append("No published figure matches this analysis.")
    else:
        for table, part in display_frame(frame).groupby("table", sort=False):
            lines += [f"## {table}", "", part.drop(columns="table").to_markdown(index=False),
                      ""]
    lines += ["", LEGEND, "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _cell_styles(column: pd.Series, flagged: pd.Series, failed: pd.Series) -> list[str]:
    if column.name == "published":
        return ["background:#fde2e1" if flagged.loc[i] else "" for i in column.index]
    if str(column.name).startswith("posterior"):
        return ["color:#b00020;font-weight:bold" if failed.loc[i] else ""
                for i in column.index]
    return [""] * len(column)


def html_sections(frame: pd.DataFrame) -> list[dict[str, str]]:
    """The comparison as one HTML table per published table (flagged cells highlighted,
    a failed posterior in red): [{"table": name, "html": ...}]."""
    sections = []
    display = display_frame(frame) if not frame.empty else pd.DataFrame()
    for table, part in (display.groupby("table", sort=False) if not display.empty else []):
        flagged = frame.loc[part.index, ["published_outside_frequentist",
                                         "published_outside_posterior"]].eq(True).any(axis=1)
        failed = frame.loc[part.index, "posterior_passed"].eq(False)
        styler = part.drop(columns="table").style.hide(axis="index")
        styler = styler.apply(_cell_styles, flagged=flagged, failed=failed, axis=0)
        sections.append({"table": table, "html": Markup(styler.to_html())})
    return sections


def to_html(frame: pd.DataFrame, title: str, notes: list[str]) -> str:
    """The comparison as one self-contained HTML page."""
    return TEMPLATES.get_template("comparison.html").render(
        title=title, sections=html_sections(frame), legend=LEGEND, notes=notes)


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


def _interval(row: pd.Series, prefix: str) -> str:
    if pd.isna(row.get(f"{prefix}_mean")):
        return "–"
    return (f"{significant(row[f'{prefix}_mean'])} [{significant(row[f'{prefix}_ci_lower'])}, "
            f"{significant(row[f'{prefix}_ci_upper'])}]")


def robustness_tables(side_by_side: pd.DataFrame, loo: pd.DataFrame
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 4's variants as a reader sees them (each estimate as mean [95% interval]; a
    variant that failed its diagnostics shows FAILED and no numbers) and the LOO comparison
    (a failed variant's row marked, its numbers left out)."""
    rows = []
    # where variants put other exposures in the spec's place (Table 7's models 2-5), each
    # one's coefficient is shown: their effects are per sd of different columns
    several = "exposure" in side_by_side and side_by_side["exposure"].nunique() > 1
    estimates = (("direct", "direct effect"), ("total", "total effect"),
                 *((("exposure_coefficient", "exposure's coefficient"),) if several else ()),
                 ("county_sd", "county sd"), ("prefecture_sd", "prefecture sd"))
    for _, row in side_by_side.iterrows():
        passed = bool(row["passed"])
        shown = {"variant": row["variant"],
                 **({"exposure": row["exposure"]} if several else {}),
                 "campaigns": f"{int(row['campaigns']):,}",
                 "counties": f"{int(row['counties']):,}",
                 "diagnostics": (f"passed (R-hat {row['max_r_hat']:.3f}, ESS "
                                 f"{row['min_ess_bulk']:,.0f})" if passed else "FAILED")}
        for prefix, label in estimates:
            shown[label] = _interval(row, prefix) if passed else "–"
        rows.append(shown)
    compared = pd.DataFrame()
    if not loo.empty:
        columns = ["held_out", "variant", "elpd_loo", "se", "elpd_diff", "dse", "p_loo",
                   "weight", "pareto_k_above_0_7"]
        compared = loo[columns].copy().astype(object)
        for column in ("elpd_loo", "se", "elpd_diff", "dse", "p_loo"):
            compared[column] = loo[column].map(lambda v: f"{v:.1f}")
        compared["weight"] = loo["weight"].map(lambda v: f"{v:.2f}")
        if "passed" in loo:
            failed = ~loo["passed"].astype(bool)
            compared.loc[failed, columns[2:]] = "–"
            compared.loc[failed, "variant"] = compared.loc[failed, "variant"] + " (FAILED)"
    return pd.DataFrame(rows), compared


def _frame_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0,
                         classes="grid")


ROBUSTNESS_LEGEND = (
    "The spec on all campaigns beside the study's subsets (counties seen at least twice, three "
    "times), other random intercepts (prefecture only, county only, none), without a "
    "control that is post-treatment for the mediators, and with another exposure in its "
    "place (where the spec names some: Table 7's indicators), as the spec's [robustness] "
    "table chooses; each estimate is the posterior mean and 95% interval (equal-tailed for "
    "the effects, highest-density for the sds and coefficients).")
CORRELATION_LEGEND = (
    "The mediators' campaign-level errors are modelled as correlated (an LKJ prior), so the "
    "intervals of the total and of sums of indirect effects carry the cross terms. Beside "
    "each posterior correlation, the correlation of the two equations' OLS residuals "
    "(county and prefecture intercepts not separated from the errors there).")
LOO_LEGEND = (
    "held_out says what is left out: a campaign (conditional on the drawn county and "
    "prefecture intercepts, so a county seen once can give a high Pareto k), a whole county "
    "or a whole prefecture (their intercepts integrated out in closed form: how the "
    "structure predicts a county or prefecture it has not seen). Compare variants within "
    "one held_out only; elpd_diff is from the best, with its standard error dse.")

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
            **_robustness_html(analysis),
            "correlations": Markup(_frame_html(analysis.error_correlations))
            if not analysis.error_correlations.empty else "",
        })
    # autoescaped: spec descriptions and notes are text; the tables are HTML already
    return TEMPLATES.get_template("report.html").render(
        report=report, analyses=analyses, index=Markup(_status_html(index)),
        descriptives=Markup(report.descriptives.to_html(float_format=lambda v: f"{v:.3f}",
                                                        border=0, classes="grid")),
        legend=LEGEND, version=__version__, status_class=STATUS_CLASS,
        robustness_legend=ROBUSTNESS_LEGEND, loo_legend=LOO_LEGEND,
        correlation_legend=CORRELATION_LEGEND,
        generated=pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC"))


def _robustness_html(analysis: Analysis) -> dict[str, str]:
    if analysis.robustness.empty:
        return {"robustness": "", "loo": ""}
    variants, compared = robustness_tables(analysis.robustness, analysis.loo)
    return {"robustness": Markup(_frame_html(variants)),
            "loo": Markup(_frame_html(compared)) if not compared.empty else ""}


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
            if not analysis.error_correlations.empty:
                lines += ["### The mediators' error correlations", "", CORRELATION_LEGEND, "",
                          analysis.error_correlations.to_markdown(
                              index=False, disable_numparse=True), ""]
            lines += [f"![{f.caption}]({figures_folder}/{f.name}.png)"
                      for f in analysis.figures] + [""]
        if not analysis.comparison.empty:
            lines += ["### Published, frequentist and Bayesian side by side", "",
                      display_frame(analysis.comparison).to_markdown(index=False), "",
                      f"*{LEGEND}*", ""]
        lines += _robustness_markdown(analysis)
    return "\n".join(lines)


def _robustness_markdown(analysis: Analysis) -> list[str]:
    lines = [f"- {note}" for note in analysis.robustness_notes]
    if analysis.robustness.empty:
        return [*lines, ""] if lines else []
    variants, compared = robustness_tables(analysis.robustness, analysis.loo)
    lines = ["### The spec's variants", "", ROBUSTNESS_LEGEND, "",
             variants.to_markdown(index=False), "", *lines]
    if not compared.empty:
        lines += ["", "#### Pooling structures compared by PSIS-LOO", "", LOO_LEGEND, "",
                  compared.to_markdown(index=False)]
    return [*lines, ""]
