"""The reviewer's side-by-side table: published figure | OLS/KHB | MixedLM | posterior.

One tidy frame per analysis (`comparison_frame`), one row per published term or effect,
then rendered to Markdown and HTML (fundgap.render). The frequentist columns carry the
study's stars; the posterior carries none. A published figure outside our 95% interval is
flagged: † for the frequentist interval (cluster-robust for OLS, county bootstrap for KHB),
‡ for the posterior's. A posterior whose fit failed its diagnostics is shown as failed,
never as a number, and a fit made from other data is not shown at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from fundgap import fitfolder, names
from fundgap.errors import FundgapError
from fundgap.fitfolder import SavedFit, load_fit, record_file
from fundgap.frequentist_tables import Z95, FrequentistResult, stars
from fundgap.published import published_tables
from fundgap.render import to_html, to_markdown
from fundgap.spec import ModelSpec
from fundgap.store import frame_fingerprint, package_versions

FIT_STATISTICS = ("adj_r2", "pseudo_r2")


def read_posterior(folder: str | Path, data_fingerprint: str | None = None
                   ) -> tuple[SavedFit | None, str]:
    """A Bayesian fit folder made from the data of `data_fingerprint`, or None and the
    reason it cannot be used (missing, damaged, other data)."""
    if not record_file(folder, "bayesian").is_file():
        return None, f"no Bayesian fit in {folder}"
    try:
        return load_fit(folder, data_fingerprint=data_fingerprint), ""
    except FundgapError as error:
        return None, f"the fit cannot be compared: {error}"


def published_entry(published: dict, table: str, model: str) -> dict | None:
    """The published figures of `table`.`model` (a dotted path), or None."""
    node = published.get(table)
    for key in model.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def _normal_p(estimate: float, std_error: float) -> float:
    if not np.isfinite(std_error) or std_error <= 0:
        return 0.0 if np.isfinite(estimate) and estimate != 0 else np.nan
    return float(2 * norm.sf(abs(estimate / std_error)))


def _posterior_cells(row: pd.Series, lower: str, upper: str) -> dict:
    return {"posterior_mean": row["mean"], "posterior_ci_lower": row[lower],
            "posterior_ci_upper": row[upper], "posterior_r_hat": row["r_hat"],
            "posterior_ess_bulk": row["ess_bulk"]}


def _posterior_columns(posterior: SavedFit | None, parameter: str) -> dict:
    """The posterior columns of a summary.csv parameter (95% HDI)."""
    if posterior is None:
        return {}
    if parameter not in posterior.summary.index:
        return {}
    return _posterior_cells(posterior.summary.loc[parameter], "hdi_2.5%", "hdi_97.5%")


def _effect_columns(posterior: SavedFit | None, keys: dict[str, str]) -> dict:
    """The posterior columns of the effects.csv row matching every key (effect, mediator,
    moderator level)."""
    if posterior is None or posterior.effects.empty:
        return {}
    wanted = {"mediator": "", **keys}
    if any(column not in posterior.effects for column in wanted):
        return {}
    match = posterior.effects
    for column, value in wanted.items():
        match = match[match[column].fillna("").astype(str) == value]
    return {} if match.empty else _posterior_cells(match.iloc[0], "ci_lower", "ci_upper")


def _ols_rows(result: FrequentistResult, published: dict,
              posterior: SavedFit | None) -> list[dict]:
    rows = []
    mixed = result.mixedlm
    for model in result.spec.tables:
        entry = published_entry(published, model.table, model.model)
        if entry is None:
            continue
        ours = result.ols[(result.ols["table"] == model.table)
                          & (result.ols["model"] == model.model)]
        for term, figure in entry.items():
            if term == "n" or not isinstance(figure, list | int | float):
                continue
            base = {"table": model.table, "model": model.model, "term": term,
                    "kind": "fit statistic" if term in FIT_STATISTICS else "coefficient",
                    "n": int(ours["n"].iloc[0]) if not ours.empty else None}
            if term in FIT_STATISTICS:
                rows.append({**base, "published_estimate": float(figure),
                             "frequentist_estimate": float(ours[term].iloc[0])
                             if not ours.empty else None})
                continue
            match = ours[ours["published_term"] == term]
            row = {**base, "published_estimate": figure[0], "published_std_error": figure[1],
                   "published_stars": stars(_normal_p(*figure[:2]))}
            if not match.empty:
                ols = match.iloc[0]
                row.update({
                    "frequentist_estimate": ols["estimate"],
                    "frequentist_std_error": ols["std_error"],
                    "frequentist_cluster_std_error": ols["cluster_std_error"],
                    "frequentist_stars": ols["stars"],
                    "frequentist_ci_lower": ols["estimate"] - Z95 * ols["cluster_std_error"],
                    "frequentist_ci_upper": ols["estimate"] + Z95 * ols["cluster_std_error"],
                })
                if model.equation and not mixed.empty:
                    hit = mixed[(mixed["equation"] == model.equation)
                                & (mixed["term"] == ols["term"])]
                    if not hit.empty:
                        row.update({"mixedlm_estimate": hit["estimate"].iloc[0],
                                    "mixedlm_std_error": hit["std_error"].iloc[0],
                                    "mixedlm_stars": hit["stars"].iloc[0]})
                if model.equation:
                    row.update(_posterior_columns(
                        posterior, f"{names.coefficients(model.equation)}[{ols['term']}]"))
                elif model.posterior_effect and ols["term"] == result.spec.exposure:
                    row.update(_effect_columns(posterior, model.posterior_effect))
            rows.append(row)
    return rows


def _equation_rows(result: FrequentistResult, published: dict,
                   posterior: SavedFit | None) -> list[dict]:
    """Equations no published table covers (a spec's own `spec.equation` models): the
    exposure's and the mediators' coefficients, frequentist beside posterior."""
    spec, rows = result.spec, []
    covered = {m.equation for m in spec.tables if m.equation}
    for name in spec.equations:
        if name in covered or published_entry(published, spec.name, name) is not None:
            continue
        ours = result.ols[(result.ols["table"] == spec.name) & (result.ols["model"] == name)]
        wanted = ours["term"].map(lambda t: spec.exposure in t.split(":")[0]
                                  or t in spec.mediators)
        for _, ols in ours[wanted].iterrows():
            row = {"table": spec.name, "model": name, "term": ols["term"],
                   "kind": "coefficient", "n": int(ols["n"]),
                   "frequentist_estimate": ols["estimate"],
                   "frequentist_std_error": ols["std_error"],
                   "frequentist_cluster_std_error": ols["cluster_std_error"],
                   "frequentist_stars": ols["stars"],
                   "frequentist_ci_lower": ols["estimate"] - Z95 * ols["cluster_std_error"],
                   "frequentist_ci_upper": ols["estimate"] + Z95 * ols["cluster_std_error"]}
            mixed = result.mixedlm
            if not mixed.empty:
                hit = mixed[(mixed["equation"] == name) & (mixed["term"] == ols["term"])]
                if not hit.empty:
                    row.update({"mixedlm_estimate": hit["estimate"].iloc[0],
                                "mixedlm_std_error": hit["std_error"].iloc[0],
                                "mixedlm_stars": hit["stars"].iloc[0]})
            row.update(_posterior_columns(posterior, f"{names.coefficients(name)}[{ols['term']}]"))
            rows.append(row)
    return rows


def _khb_rows(result: FrequentistResult, published: dict,
              posterior: SavedFit | None) -> list[dict]:
    table = result.spec.khb_table
    entry = published.get(table) if table else None
    if result.khb.empty or not isinstance(entry, dict):
        return []
    total_mean = None
    if posterior is not None and not posterior.effects.empty:
        totals = posterior.effects[posterior.effects["effect"] == "total"]
        total_mean = float(totals["mean"].iloc[0]) if not totals.empty else None
    published_total = (entry.get("total") or [None])[0]
    wanted = [("total", "", entry.get("total")), ("direct", "", entry.get("direct"))]
    wanted += [("indirect", m, f) for m, f in (entry.get("indirect") or {}).items()]
    rows = []
    for component, mediator, figure in wanted:
        if figure is None:
            continue
        khb = result.khb[(result.khb["component"] == component)
                         & (result.khb["mediator"] == mediator)]
        row = {"table": table, "model": "khb", "kind": "effect",
               "term": f"{component}: {mediator}" if mediator else component,
               "published_estimate": figure[0], "published_std_error": figure[1],
               "published_stars": stars(_normal_p(*figure[:2])),
               "published_share": figure[2] if len(figure) > 2 else
               (figure[0] / published_total if published_total else None)}
        if not khb.empty:
            k = khb.iloc[0]
            # beside the published total, the standard error Stata's khb prints for it: the
            # reduced model's own (khb.csv keeps the delta-method one, which also counts the
            # mediators' estimated residuals and is about twice as large)
            comparable = k.get("reduced_model_std_error", np.nan)
            std_error = comparable if component == "total" and pd.notna(comparable) \
                else k["std_error"]
            row.update({"frequentist_estimate": k["estimate"],
                        "frequentist_std_error": std_error,
                        "frequentist_cluster_std_error": k["cluster_std_error"],
                        "frequentist_stars": stars(_normal_p(k["estimate"], std_error)),
                        "frequentist_ci_lower": k["bootstrap_ci_lower"],
                        "frequentist_ci_upper": k["bootstrap_ci_upper"],
                        "frequentist_share": k["share"], "n": int(k["n"])})
        if posterior is not None and not posterior.effects.empty:
            found = _effect_columns(posterior, {"effect": component, "mediator": mediator})
            row.update(found)
            if found and total_mean:
                # a ratio of posterior means: the mean of per-draw ratios is unstable when
                # the total's draws come near zero
                row["posterior_share"] = found["posterior_mean"] / total_mean
        rows.append(row)
    return rows


COLUMNS = [
    "table", "model", "term", "kind", "n",
    "published_estimate", "published_std_error", "published_stars", "published_share",
    "frequentist_estimate", "frequentist_std_error", "frequentist_cluster_std_error",
    "frequentist_stars", "frequentist_ci_lower", "frequentist_ci_upper", "frequentist_share",
    "mixedlm_estimate", "mixedlm_std_error", "mixedlm_stars",
    "posterior_mean", "posterior_ci_lower", "posterior_ci_upper", "posterior_share",
    "posterior_r_hat", "posterior_ess_bulk", "posterior_passed",
    "published_outside_frequentist", "published_outside_posterior",
]


def comparison_frame(result: FrequentistResult, posterior: SavedFit | None = None,
                     published: dict | None = None) -> pd.DataFrame:
    """One row per published term or effect of the spec, then the exposure and mediator
    coefficients of equations no published table covers, with every column side by side."""
    published = published if published is not None else published_tables()
    rows = (_ols_rows(result, published, posterior) + _khb_rows(result, published, posterior)
            + _equation_rows(result, published, posterior))
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    if frame.empty:
        return frame
    # tables in the order the study prints them
    order = {table: rank for rank, table in enumerate(published)}
    frame = frame.sort_values("table", key=lambda t: t.map(order), kind="stable",
                              ignore_index=True)
    frame["posterior_passed"] = (posterior.passed if posterior is not None else np.nan)
    frame["published_outside_frequentist"] = _outside(frame, "frequentist")
    frame["published_outside_posterior"] = _outside(frame, "posterior")
    return frame


def with_variant_posteriors(comparison: pd.DataFrame, spec: ModelSpec,
                            variants: pd.DataFrame) -> pd.DataFrame:
    """`comparison` with the posterior columns of each table model that names a
    [robustness] exposure variant (`TableModel.variant`) taken from that variant's row of
    robustness.csv (`variants`): its exposure's coefficient, R-hat and ESS, and whether it
    passed (a failed variant is shown as failed, not as numbers, as a failed fit is)."""
    if comparison.empty or variants.empty:
        return comparison
    frame = comparison.copy()
    frame["posterior_passed"] = frame["posterior_passed"].astype(object)  # per row here
    by_name = variants.set_index("variant")
    for model in spec.tables:
        if model.variant is None or model.variant not in by_name.index:
            continue
        fitted = by_name.loc[model.variant]
        term = model.rename.get(fitted["exposure"], fitted["exposure"])
        rows = ((frame["table"] == model.table) & (frame["model"] == model.model)
                & (frame["term"] == term))
        frame.loc[rows, "posterior_passed"] = bool(fitted["passed"])
        for column, source in (("posterior_mean", "exposure_coefficient_mean"),
                               ("posterior_ci_lower", "exposure_coefficient_ci_lower"),
                               ("posterior_ci_upper", "exposure_coefficient_ci_upper"),
                               ("posterior_r_hat", "max_r_hat"),
                               ("posterior_ess_bulk", "min_ess_bulk")):
            frame.loc[rows, column] = fitted[source]
    frame["published_outside_posterior"] = _outside(frame, "posterior")
    return frame


def _outside(frame: pd.DataFrame, side: str) -> pd.Series:
    lower, upper = frame[f"{side}_ci_lower"], frame[f"{side}_ci_upper"]
    value = frame["published_estimate"]
    known = lower.notna() & upper.notna() & value.notna()
    return ((value < lower) | (value > upper)).where(known)




def posterior_for(result: FrequentistResult, table: pd.DataFrame,
                  fits: str | Path | None) -> tuple[SavedFit | None, str]:
    """The Bayesian fit of the same spec under `fits`, checked to come from `table`."""
    if fits is None or not result.spec.is_bayesian:
        return None, ""
    return read_posterior(fitfolder.bayesian_folder(fits, result.spec.name),
                          frame_fingerprint(table))


def variants_for(result: FrequentistResult, table: pd.DataFrame,
                 fits: str | Path | None) -> tuple[pd.DataFrame, str]:
    """The spec's robustness variants under `fits` (robustness.csv) where a table model
    takes its posterior from one, checked to come from `table`; else an empty frame and,
    where they were wanted, why there are none."""
    wanted = [m.model for m in result.spec.tables if m.variant is not None]
    if fits is None or not wanted:
        return pd.DataFrame(), ""
    folder = fitfolder.robustness_folder(fits, result.spec.name)
    missing = (f"models {', '.join(wanted)}: no posterior column, their exposure variants "
               f"are not in {folder}")
    if not folder.is_dir():
        return pd.DataFrame(), f"{missing} (`fundgap run` fits them)"
    try:
        side_by_side, _, record = fitfolder.read_robustness(folder)
    except FundgapError as error:
        return pd.DataFrame(), f"{missing} in a readable form ({error})"
    if record.get("data_fingerprint") != frame_fingerprint(table):
        return pd.DataFrame(), f"{missing} for these data (fitted to other data)"
    return side_by_side, ""


def write_frequentist(result: FrequentistResult, table: pd.DataFrame, out: str | Path,
                      fits: str | Path | None = None, replicates: int | None = None,
                      seed: int | None = None, record: dict | None = None) -> pd.DataFrame:
    """Write a spec's frequentist tables and their comparison into `out`, atomically:
    ols.csv, khb.csv, mixedlm.csv (where they apply), comparison.csv/.md/.html and
    frequentist.json (spec, data fingerprint, settings, versions, notes, and `record`).
    Returns the comparison frame."""
    posterior, reason = posterior_for(result, table, fits)
    notes = [*result.notes, *([reason] if reason else [])]
    if posterior is not None and not posterior.passed:
        notes.append(f"the Bayesian fit in {posterior.path} FAILED its diagnostics "
                     f"({'; '.join(posterior.reasons)}): its column is shown as failed")
    variants, reason = variants_for(result, table, fits)
    notes += [reason] if reason else []
    comparison = with_variant_posteriors(comparison_frame(result, posterior), result.spec,
                                         variants)
    title = f"{result.spec.name}: published, frequentist and Bayesian side by side"
    fitfolder.write_frequentist(
        out, {fitfolder.OLS: result.ols, fitfolder.KHB: result.khb,
              fitfolder.MIXEDLM: result.mixedlm, fitfolder.COMPARISON: comparison},
        dict(zip(fitfolder.COMPARISON_PAGES, (to_markdown(comparison, title, notes),
                                              to_html(comparison, title, notes)),
                 strict=True)),
        {"spec_name": result.spec.name, "spec_source": result.spec.source,
         "data_fingerprint": frame_fingerprint(table), "bootstrap_replicates": replicates,
         "bootstrap_seed": seed, "khb_identity_gap": result.khb.attrs.get("identity_gap"),
         "posterior": posterior.path if posterior else None, "notes": notes,
         "versions": package_versions(), **(record or {})})
    return comparison
