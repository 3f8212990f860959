"""How much unmeasured mediator-outcome confounding it would take to explain an indirect
effect away (Imai, Keele and Yamamoto 2010), per mediator, per draw of a fit's posterior.

Every indirect effect rests on an assumption the data cannot check: nothing unmeasured
drives both a mediator and the outcome. If the campaign-level errors of mediator m's equation
and of the outcome's are correlated with rho (the fit assumes 0), the outcome's coefficient on
m absorbs the confounding, and the path the mediator carries is

    b(rho) = b - rho / sqrt(1 - rho^2) * sigma_outcome / sigma_m

(sigma the equations' campaign-level residual sds as fitted), so indirect(rho) = a b(rho),
evaluated per draw; the total effect does not depend on rho, so share(rho) = indirect(rho) /
total. One mediator's rho moves at a time, the others' stay at 0. For Gaussian (identity-link)
mediators and outcome only: on a count or 0/1 outcome rho has no such closed form (a
latent-scale formulation or a refit with the correlation fixed would be needed), and
`not_supported` says so instead of reporting a curve.

For readers who think in variance explained: rho^2 equals the product of the shares of the two
equations' residual variance that a confounder would have to explain (R*^2_M R*^2_Y), and
rho^2 (1 - R^2_M) (1 - R^2_Y) the product of the shares of their total variance (R~^2_M
R~^2_Y), with R^2 = 1 - sigma^2 / Var(y) for each equation (IKY 2010, section 4.2).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from fundgap import names
from fundgap.design import Design
from fundgap.effects import SAMPLE_DIMS, slope
from fundgap.errors import FundgapError
from fundgap.families import family
from fundgap.fitfolder import load_fit, opened_posterior
from fundgap.spec import ModelSpec

RHO_GRID = np.round(np.arange(-0.9, 0.9 + 1e-9, 0.05), 2)
# the grid on which the first rho whose 95% interval includes 0 is searched
FINE_STEP = 0.001
SENSITIVITY_EFFECTS = ("indirect", "share")


def not_supported(spec: ModelSpec, families: dict[str, str]) -> str | None:
    """Why a spec's fit gets no sensitivity curve (no mediators, or a non-Gaussian mediator
    or outcome), or None where it gets one. `families` maps equations to family names."""
    if not spec.mediators:
        return "the spec has no mediators"
    other = [name for name in (*spec.mediators, spec.outcome)
             if not family(families[name]).identity_link]
    if other:
        return (f"sensitivity to mediator-outcome confounding is computed for identity-link "
                f"(Gaussian) mediators and outcome, where b(rho) has a closed form; "
                f"{', '.join(f'{n} ({families[n]})' for n in other)} "
                f"{'is' if len(other) == 1 else 'are'} not, and the latent-scale "
                "formulation that would need is not built")
    return None


def paths(posterior: xr.Dataset, spec: ModelSpec, levels: list[str]) -> xr.Dataset:
    """Per draw: a, b (mediator[, moderator]), the total effect ([moderator]) and
    sigma_outcome / sigma_mediator (mediator), for the spec's primary outcome."""
    outcome = spec.outcome

    def at(level: str | None) -> xr.Dataset:
        a = xr.concat([slope(posterior, spec, m, spec.exposure, level)
                       for m in spec.mediators], dim="mediator")
        b = xr.concat([slope(posterior, spec, outcome, m, level) for m in spec.mediators],
                      dim="mediator")
        direct = slope(posterior, spec, outcome, spec.exposure, level)
        return xr.Dataset({"a": a, "b": b, "total": direct + (a * b).sum("mediator")})

    if levels:
        found = xr.concat([at(level) for level in levels], dim=spec.moderator)
        found = found.assign_coords({spec.moderator: levels})
    else:
        found = at(None)
    ratio = xr.concat([posterior[names.sigma(outcome)] / posterior[names.sigma(m)]
                       for m in spec.mediators], dim="mediator")
    return found.assign(ratio=ratio).assign_coords(mediator=list(spec.mediators))


def _confounding(rho: np.ndarray) -> np.ndarray:
    return rho / np.sqrt(1.0 - rho**2)


def curve_draws(path_draws: xr.Dataset, rho: np.ndarray = RHO_GRID) -> xr.Dataset:
    """indirect(rho) and share(rho) per draw, with a `rho` dim."""
    rho = np.asarray(rho, dtype=float)
    if np.any(np.abs(rho) >= 1):
        raise ValueError("rho must lie strictly between -1 and 1")
    shift = xr.DataArray(_confounding(rho), dims="rho", coords={"rho": rho})
    indirect = path_draws["a"] * (path_draws["b"] - shift * path_draws["ratio"])
    return xr.Dataset({"indirect": indirect, "share": indirect / path_draws["total"]})


def _cells(draws: xr.DataArray) -> list[tuple[dict, np.ndarray]]:
    """(labels, draws flattened over chains) for each cell of the non-sample dims but rho."""
    dims = [d for d in draws.dims if d not in (*SAMPLE_DIMS, "rho")]
    cells = []
    for labels in itertools.product(*(draws[d].values for d in dims)):
        pick = dict(zip(dims, labels, strict=True))
        values = draws.sel(pick).stack(sample=SAMPLE_DIMS).transpose(..., "sample").values
        cells.append(({d: str(v) for d, v in pick.items()}, values))
    return cells


def sensitivity_table(path_draws: xr.Dataset, rho: np.ndarray = RHO_GRID) -> pd.DataFrame:
    """The curve: one row per mediator ([moderator level]), rho and effect (indirect,
    share) with mean, sd and the 95% equal-tailed interval over draws."""
    curves = curve_draws(path_draws, rho)
    rows = []
    for effect in SENSITIVITY_EFFECTS:
        for labels, values in _cells(curves[effect]):
            for k, value in enumerate(curves["rho"].values):
                draws = values[k] if values.ndim == 2 else values
                rows.append({**labels, "rho": float(value), "effect": effect,
                             "mean": float(draws.mean()), "sd": float(draws.std(ddof=1)),
                             "ci_lower": float(np.quantile(draws, 0.025)),
                             "ci_upper": float(np.quantile(draws, 0.975))})
    frame = pd.DataFrame(rows)
    labels = [c for c in frame.columns if c not in ("mediator", "rho", "effect", "mean", "sd",
                                                      "ci_lower", "ci_upper")]
    return frame[["mediator", *labels, "rho", "effect", "mean", "sd", "ci_lower",
                  "ci_upper"]]


def thresholds(path_draws: xr.Dataset, r_squared: dict[str, float] | None = None
               ) -> pd.DataFrame:
    """Per mediator ([moderator level]): the rho at which the indirect effect's posterior
    mean crosses 0 (exact: indirect is linear in rho / sqrt(1 - rho^2) per draw), the rho
    nearest 0 at which its 95% interval first includes 0 (on a grid of FINE_STEP; 0 where
    it includes 0 already), and for each the equivalent products of partial R^2: rho^2
    (residual variance) and, given each equation's R^2 (`r_squared`), rho^2 (1 - R^2_M)
    (1 - R^2_Y) (total variance)."""
    fine = np.round(np.arange(-0.999, 0.999 + 1e-9, FINE_STEP), 3)
    shift = _confounding(fine)
    r_squared = r_squared or {}
    outcome_r2 = r_squared.get("__outcome__")
    rows = []
    ratios = path_draws["ratio"].broadcast_like(path_draws["a"])
    for (labels, a), (_, b), (_, ratio) in zip(_cells(path_draws["a"]),
                                               _cells(path_draws["b"]), _cells(ratios),
                                               strict=True):
        naive = a * b
        slope_in_t = a * ratio          # indirect(t) = naive - t * slope_in_t, per draw
        t_cross = naive.mean() / slope_in_t.mean() if slope_in_t.mean() else np.nan
        rho_mean = t_cross / np.sqrt(1 + t_cross**2) if np.isfinite(t_cross) else np.nan
        lower, upper = np.quantile(naive[None, :] - shift[:, None] * slope_in_t[None, :],
                                   [0.025, 0.975], axis=1)
        covers = (lower <= 0) & (upper >= 0)
        rho_interval = float(fine[covers][np.argmin(np.abs(fine[covers]))]) \
            if covers.any() else np.nan
        mediator_r2 = r_squared.get(labels["mediator"])
        row = {**labels, "indirect_mean": float(naive.mean()),
               "rho_mean_zero": float(rho_mean), "rho_interval_zero": rho_interval}
        for name, value in (("mean_zero", rho_mean), ("interval_zero", rho_interval)):
            row[f"r2_residual_product_{name}"] = float(value**2)
            if mediator_r2 is not None and outcome_r2 is not None:
                row[f"r2_total_product_{name}"] = float(
                    value**2 * (1 - mediator_r2) * (1 - outcome_r2))
        rows.append(row)
    return pd.DataFrame(rows)


def r_squared(posterior: xr.Dataset, spec: ModelSpec, variances: dict[str, float]
              ) -> dict[str, float]:
    """Each mediator's and the outcome's (key "__outcome__") 1 - sigma^2 / Var(y), sigma at
    its posterior mean; `variances` the responses' sample variances."""
    found = {m: 1 - float(posterior[names.sigma(m)].mean()) ** 2 / variances[m]
             for m in spec.mediators if m in variances}
    if spec.outcome in variances:
        found["__outcome__"] = (1 - float(posterior[names.sigma(spec.outcome)].mean()) ** 2
                                / variances[spec.outcome])
    return found


def response_variance(design: Design, name: str) -> float:
    """The sample variance of an equation's response (from its sufficient statistics where
    the design was reduced to them: the design's first column is the intercept's ones)."""
    if design.reduced:
        stats = design.statistics[name]
        total = float(stats.Zty[0])
        return (float(stats.yty) - total**2 / stats.n) / (stats.n - 1)
    return float(np.var(design.equations[name].y, ddof=1))


def sensitivity(posterior: xr.Dataset, spec: ModelSpec, levels: list[str],
                variances: dict[str, float], rho: np.ndarray = RHO_GRID
                ) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """The curve (`sensitivity_table`) and `thresholds` of a posterior, given the moderator's
    levels and the responses' variances; or two empty frames and why there are none."""
    reason = not_supported(spec, {n: e.family for n, e in spec.equations.items()})
    if reason is not None:
        return pd.DataFrame(), pd.DataFrame(), reason
    path_draws = paths(posterior, spec, levels)
    return (sensitivity_table(path_draws, rho),
            thresholds(path_draws, r_squared(posterior, spec, variances)), None)


def folder_sensitivity(folder: Path, rho: np.ndarray = RHO_GRID
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`sensitivity` of a fit folder (`fundgap sensitivity`): the posterior, spec, moderator
    levels (from effects.csv) and response variances (fit.json) it saved. Raises a
    FundgapError for a folder that is not an intact fit, or a fit that has no curve."""
    saved = load_fit(folder)
    levels = []
    if saved.spec.moderator:
        levels = sorted({str(v) for v in saved.effects[saved.spec.moderator] if str(v)})
    variances = saved.record.get("response_variance", {})
    with opened_posterior(folder) as posterior:
        curve, limits, reason = sensitivity(posterior.load(), saved.spec, levels, variances,
                                            rho)
    if reason is not None:
        raise FundgapError(f"{folder}: no sensitivity curve: {reason}")
    return curve, limits
