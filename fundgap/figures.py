"""The report's figures, as PNG bytes (ArviZ and matplotlib): forest plots of posterior and
frequentist intervals on one axis, channel contrasts, sensitivity curves, county-intercept
shrinkage, the posterior predictive check, and each model's graph (Graphviz).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: figures are only saved
import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fundgap import fitfolder
from fundgap.errors import FundgapError
from fundgap.frequentist_tables import Z95
from fundgap.groupings import ANY_COLUMNS
from fundgap.spec import parse_spec

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
    khb = folder / fitfolder.KHB
    if khb.is_file():
        for _, k in pd.read_csv(khb, keep_default_na=False).iterrows():
            if k["component"] in MAIN_EFFECTS:
                se = k["cluster_std_error"] if k["cluster_std_error"] != "" else k["std_error"]
                rows.append({"effect": k["component"], "mediator": k["mediator"],
                             "estimate": float(k["estimate"]), "se": float(se),
                             "source": "KHB"})
    ols = folder / fitfolder.OLS
    if ols.is_file():
        spec = parse_spec(spec_text, "spec.toml", ANY_COLUMNS)
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
    """The innermost grouping's intercepts (counties in the study; posterior means) against
    their campaign counts, beside the no-pooling estimates: sparse levels are pulled to
    zero, well-observed ones are not."""
    rows = shrinkage[shrinkage["equation"] == equation]
    if rows.empty:
        return []
    level = rows.groupby("level").size().idxmax()   # the most levels: the innermost
    inner = rows[rows["level"] == level]
    rng = np.random.default_rng(0)
    jitter = inner["campaigns"] * np.exp(rng.uniform(-0.08, 0.08, len(inner)))
    figure, axis = plt.subplots(figsize=(7.5, 4))
    axis.scatter(jitter, inner["no_pooling"], s=9, color="#bbbbbb",
                 label=f"no pooling ({level} mean residual)")
    axis.scatter(jitter, inner["intercept_mean"], s=9, color=POSTERIOR_COLOUR,
                 label="partial pooling (posterior mean)")
    axis.axhline(0, color="#888", lw=0.8, ls="--")
    axis.set_xscale("log")
    axis.set_xlabel(f"campaigns in the {level} (log scale)")
    axis.set_ylabel(f"{level} intercept, {equation}")
    axis.legend(fontsize=8)
    return [Figure(f"shrinkage_{equation}", f"{level.capitalize()} intercepts of {equation} "
                   "against their campaign counts", _png(figure))]


def ppc_figure(idata: az.InferenceData, outcome: str) -> list[Figure]:
    """ArviZ's posterior predictive check of the outcome (thinned draws saved with the fit)."""
    if "posterior_predictive" not in idata.groups() or \
            outcome not in idata.posterior_predictive:
        return []
    axes = az.plot_ppc(idata, var_names=[outcome], num_pp_samples=100, random_seed=0,
                       figsize=(7.5, 3.5), textsize=9)
    figure = np.atleast_1d(axes).ravel()[0].figure
    return [Figure(f"ppc_{outcome}", f"Posterior predictive check of {outcome}", _png(figure))]


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
