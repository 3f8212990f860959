"""The diagnostic gate: ArviZ's summary of a fit's parameters and the checks a reported
quantity must pass (divergences, R-hat, bulk and tail ESS, E-BFMI; tree-depth hits warn),
with thresholds from fundgap/defaults.py (GATE).
"""

from __future__ import annotations

from collections.abc import Sequence

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from fundgap import names
from fundgap.defaults import GATE
from fundgap.families import AUXILIARY_NAMES


def reported_prefixes(groupings: Sequence[str]) -> tuple[str, ...]:
    """The prefixes of the variables the gate checks besides the effects, for a model with
    these grouping dimensions (the latent intercepts are not reported)."""
    return names.reported_prefixes(AUXILIARY_NAMES, groupings)


def parameter_summary(idata: az.InferenceData, groupings: Sequence[str],
                      full: bool = False) -> pd.DataFrame:
    """ArviZ's summary of every parameter; `reported` marks those the gate checks.
    `groupings`: the model's grouping dimensions (Design.grouping_dims).

    The latent county and prefecture intercepts (thousands of series) get ArviZ's statistics
    and, with `full`, its diagnostics too (slow for thousands of series: benchmarks/README.md,
    "Figures the code cites")
    """
    posterior = idata.posterior
    prefixes = reported_prefixes(groupings)
    reported = [v for v in posterior.data_vars if str(v).startswith(prefixes)]
    latent = [v for v in posterior.data_vars if names.is_group_intercept(str(v), groupings)]
    parts = [az.summary(idata, var_names=reported, kind="all", round_to="none",
                        hdi_prob=0.95).assign(reported=True)]
    if latent and full:
        parts.append(az.summary(idata, var_names=latent, kind="all", round_to="none",
                                hdi_prob=0.95).assign(reported=False))
    elif latent:
        parts.append(_latent_statistics(posterior[latent]).assign(reported=False))
    return pd.concat(parts)


def _latent_statistics(posterior: xr.Dataset) -> pd.DataFrame:
    """Mean, sd and 95% HDI of every level of every variable, as az.summary(kind="stats")
    gives them, computed per variable at once (az.summary builds its table series by series,
    most of its time for thousands of intercepts)."""
    mean = posterior.mean(("chain", "draw"))
    sd = posterior.std(("chain", "draw"), ddof=1)
    hdi = az.hdi(posterior, hdi_prob=0.95)
    frames = []
    for name in posterior.data_vars:
        (dim,) = posterior[name].dims[2:]
        labels = [f"{name}[{level}]" for level in posterior[name][dim].values]
        frames.append(pd.DataFrame({
            "mean": mean[name].values, "sd": sd[name].values,
            "hdi_2.5%": hdi[name].sel(hdi="lower").values,
            "hdi_97.5%": hdi[name].sel(hdi="higher").values}, index=labels))
    return pd.concat(frames)


def _effect_labels(effects: pd.DataFrame) -> pd.Series:
    """`indirect[core_capacity, mixed]`-style names for effect and contrast rows."""
    qualifiers = [c for c in effects.columns if c not in ("effect", "mean", "sd", "ci_lower",
                                                          "ci_upper", "r_hat", "ess_bulk",
                                                          "ess_tail", "p_positive",
                                                          "p_greater", "defined")]
    inside = effects[qualifiers].fillna("").astype(str).apply(
        lambda row: ", ".join(v for v in row if v), axis=1) if qualifiers else ""
    return effects["effect"] + inside.map(lambda s: f"[{s}]" if s else "")


def diagnose(idata: az.InferenceData, effects: pd.DataFrame, summary: pd.DataFrame,
             timing: dict) -> dict:
    """The gate's verdict on a fit (fit.json's diagnostics): divergences, the largest R-hat
    and the smallest bulk and tail ESS over the reported parameters (`summary`) and the
    effects, E-BFMI per chain, tree-depth hits, with `passed` and the reasons when not;
    `timing` is merged in."""
    stats = idata.sample_stats
    depth_hits = next((int(stats[k].sum()) for k in ("maxdepth_reached",
                                                     "reached_max_treedepth") if k in stats), 0)
    reported = summary[summary["reported"]]
    labelled = effects.set_index(_effect_labels(effects))
    r_hat = pd.concat([reported["r_hat"], labelled["r_hat"]])
    ess = pd.concat([reported["ess_bulk"], labelled["ess_bulk"]])
    tail = pd.concat([reported["ess_tail"], labelled["ess_tail"]])
    # E-BFMI per chain (energy's step-to-step variation against its spread): low values
    # mean the momentum resampling cannot move the sampler across the energy levels
    bfmi = az.bfmi(idata) if "energy" in stats else np.array([np.nan])
    divergences = int(stats["diverging"].sum())
    reasons, warnings = [], []
    if divergences > GATE["max_divergences"]:
        reasons.append(f"{divergences} divergent transitions")
    if r_hat.max() > GATE["max_r_hat"]:
        reasons.append(f"max R-hat {r_hat.max():.3f} > {GATE['max_r_hat']} ({r_hat.idxmax()})")
    if ess.min() < GATE["min_ess_bulk"]:
        reasons.append(f"min bulk ESS {ess.min():.0f} < {GATE['min_ess_bulk']:.0f} "
                       f"({ess.idxmin()})")
    if tail.min() < GATE["min_ess_tail"]:
        reasons.append(f"min tail ESS {tail.min():.0f} < {GATE['min_ess_tail']:.0f} "
                       f"({tail.idxmin()})")
    if np.nanmin(bfmi) < GATE["min_bfmi"]:
        reasons.append(f"E-BFMI {np.nanmin(bfmi):.2f} < {GATE['min_bfmi']} in chain "
                       f"{int(np.nanargmin(bfmi))}")
    if depth_hits:
        warnings.append(f"{depth_hits} transitions reached the maximum tree depth: the "
                        "sampler's steps are short for the posterior's scale")
    draws = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    return {
        "passed": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "divergences": divergences,
        "max_r_hat": float(r_hat.max()),
        "min_ess_bulk": float(ess.min()),
        "min_ess_quantity": str(ess.idxmin()),
        "min_ess_tail": float(tail.min()),
        "min_ess_tail_quantity": str(tail.idxmin()),
        "min_bfmi": float(np.nanmin(bfmi)),
        "max_r_hat_quantity": str(r_hat.idxmax()),
        "tree_depth_hits": depth_hits,
        "draws": draws,
        "min_ess_bulk_per_second": float(ess.min() / max(timing["sample_seconds"], 1e-9)),
        "gate": GATE,
        **timing,
    }
