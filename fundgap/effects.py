"""Effects from the posterior, per draw: a and b paths, indirect, direct, total, shares, and
contrasts between the levels of a moderator.

Per unit of the exposure (development is scaled to sd 1, so per 1 sd). For an equation with
an identity link an exposure path is its coefficient; for a log or logit link it is the
g-computation contrast: the average predicted response (its mean, on the response's own
scale) with the exposure raised by one unit minus at its observed value, over the
campaigns, per draw. b paths are the outcome's mediator coefficients (on its link scale).
For an identity-link outcome indirect = a * b and total = direct + sum of indirect; for a
count, share or 0/1 outcome the indirect and total effects are g-computation contrasts too
(`_natural_effects`). share = indirect / total. indirect_total, the joint indirect effect of
all mediators moved at once, is total - direct in every case. A spec with several outcomes
gets every effect per outcome (dim `outcome`).

direct_link and total_link are the direct and total effects on the outcome's link scale:
its exposure slope (a log rate ratio on a count, a log odds ratio on a 0/1 outcome, per
unit), and that plus sum_m a_m b_m (the mediators' paths, identity-link mediators). They do
not depend on the outcome's baseline, so their contrasts between the levels of a moderator
compare the slopes alone, where a contrast on the response's scale mixes the slopes with
each level's baseline (acquaintance campaigns average more donations than mixed ones). On an
identity-link outcome they equal direct and total.

The estimands: the direct effect is the pure natural direct effect of a one-unit shift in
the exposure (mediators at their observed values); each mediator's indirect effect is
path-specific (the direct path at x + 1, the other mediators at their observed values), so
on a non-linear outcome the per-mediator effects need not add up to the joint one
(indirect_total), while total = direct + indirect_total always. Every effect averages over
the observed campaigns and their counties' intercepts: an in-sample population average, not
the effect in a new county.

A 0/1 exposure (both values in the data) is contrasted at 1 against 0 for every campaign
instead of shifted by one unit from its observed value: on a non-linear equation eta is
taken with the exposure at 0 (each identity-link mediator moved to its value under 0 by its
a path), so the direct effect is E[Y(1, M(0))] - E[Y(0, M(0))] (the pure natural direct
effect, R's mediation package's ADE(0)), indirect_total E[Y(1, M(1))] - E[Y(1, M(0))]
(ACME(1)) and total E[Y(1, M(1))] - E[Y(0, M(0))]; on identity-link equations both readings
give the slopes.

With a moderator (`moderator = "channel"` in the spec) every slope is taken at each level:
the coefficient of the variable plus that of its interaction with the level
(`development:C(channel)[mixed]`), so a spec may write `development:C(channel)` (one slope
per level) or `development + development:C(channel)` (a reference slope and differences).
Effects then carry a dim named after the moderator, and `contrast_draws` gives the first
level minus each other level (acquaintance - mixed).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from fundgap import names
from fundgap.defaults import EFFECT_CHUNK_VALUES
from fundgap.design import Design
from fundgap.errors import SpecError
from fundgap.families import auxiliary_draws, family
from fundgap.predictive import linear_predictor
from fundgap.spec import ModelSpec

T = TypeVar("T", xr.DataArray, xr.Dataset)
EFFECTS = ("total", "direct", "indirect", "indirect_total", "share", "a", "b",
           "direct_link", "total_link")
SAMPLE_DIMS = ("chain", "draw")


def moderator_levels(design: Design) -> list[str]:
    """The moderator's levels in the data (sorted), or [] without a moderator."""
    moderator = design.spec.moderator
    if not moderator:
        return []
    return sorted(design.table[moderator].astype(str).unique())


def _slope_terms(terms: list[str], variable: str, moderator: str | None,
                 level: str | None) -> list[str]:
    names = [variable] if variable in terms else []
    if moderator and level is not None:
        spellings = (f"{variable}:C({moderator})[{level}]", f"{variable}:{moderator}[{level}]",
                     f"C({moderator})[{level}]:{variable}", f"{moderator}[{level}]:{variable}")
        names += [name for name in spellings if name in terms]
    return names


def slope(posterior: xr.Dataset, spec: ModelSpec, equation: str, variable: str,
          level: str | None = None) -> xr.DataArray:
    """A variable's coefficient in an equation (at a moderator level), dims (chain, draw)."""
    coefficients = posterior[names.coefficients(equation)]
    dim = f"term_{equation}"
    terms = _slope_terms(list(coefficients[dim].values), variable, spec.moderator, level)
    if not terms:
        at = f" at {spec.moderator} = {level}" if level is not None else ""
        raise SpecError(f"{spec.source}: equations.{equation} has no slope for "
                        f"{variable}{at}")
    return coefficients.sel({dim: terms}).sum(dim)


def _level_rows(design: Design, equation: str, level: str | None) -> np.ndarray:
    if level is None:
        return np.arange(len(design.equations[equation].X))
    return np.flatnonzero(design.table[design.spec.moderator].astype(str).to_numpy() == level)


def _mean(posterior: xr.Dataset, family_name: str, equation: str, eta):
    """The response's mean given its linear predictor (the family's inverse link)."""
    return family(family_name).mean(eta, auxiliary_draws(posterior, family_name, equation))


def binary_exposure(design: Design) -> bool:
    """Whether the exposure is 0/1 (both values present): its effects are then the contrast
    of setting it to 1 against 0 for every campaign, not a one-unit shift."""
    values = pd.to_numeric(design.table[design.spec.exposure], errors="coerce")
    return bool(values.notna().all() and set(np.unique(values)) == {0.0, 1.0})


def _campaign_average(posterior: xr.Dataset, design: Design, equation: str,
                      level: str | None, contrast: Callable[[xr.DataArray], T],
                      at_zero: xr.DataArray | None = None) -> T:
    """The mean over campaigns (at a moderator level) of `contrast(eta)`, per draw; with
    `at_zero` (per draw: what one unit of a 0/1 exposure adds to eta), eta is each
    campaign's linear predictor with the exposure set to 0.

    Taken over blocks of campaigns, so that draws x campaigns stays within
    EFFECT_CHUNK_VALUES: a million campaigns never hold 4,000 draws of eta at once.
    """
    rows = _level_rows(design, equation, level)
    draws = posterior.sizes["chain"] * posterior.sizes["draw"]
    step = max(1, EFFECT_CHUNK_VALUES // draws)
    exposure = design.table[design.spec.exposure].to_numpy(float)
    total = None
    for start in range(0, len(rows), step):
        block_rows = rows[start:start + step]
        eta = linear_predictor(posterior, design, equation, block_rows)
        if at_zero is not None:
            eta = eta - at_zero * xr.DataArray(exposure[block_rows], dims="campaign")
        block = contrast(eta).sum("campaign")
        total = block if total is None else total + block
    return total / len(rows)


def _exposure_path(posterior: xr.Dataset, design: Design, equation: str,
                   level: str | None) -> xr.DataArray:
    """The exposure's effect on an equation's response (its mean), per unit, per draw."""
    exposure_slope = slope(posterior, design.spec, equation, design.spec.exposure, level)
    family_name = design.equations[equation].family
    if family(family_name).identity_link:
        return exposure_slope
    return _campaign_average(
        posterior, design, equation, level,
        lambda eta: _mean(posterior, family_name, equation, eta + exposure_slope)
        - _mean(posterior, family_name, equation, eta),
        exposure_slope if binary_exposure(design) else None)


def _outcome_effects(posterior: xr.Dataset, design: Design, outcome: str,
                     level: str | None) -> xr.Dataset:
    spec = design.spec
    mediators = list(spec.mediators)
    exposure_slope = slope(posterior, spec, outcome, spec.exposure, level)
    if not mediators:
        direct = _exposure_path(posterior, design, outcome, level)
        return xr.Dataset({"total": direct, "direct": direct, "direct_link": exposure_slope,
                           "total_link": exposure_slope})
    a = xr.concat([_exposure_path(posterior, design, m, level) for m in mediators],
                  dim="mediator").assign_coords(mediator=mediators)
    b = xr.concat([slope(posterior, spec, outcome, m, level) for m in mediators],
                  dim="mediator").assign_coords(mediator=mediators)
    if family(design.equations[outcome].family).identity_link:
        direct = _exposure_path(posterior, design, outcome, level)
        indirect = a * b
        total = direct + indirect.sum("mediator")
    else:
        direct, indirect, total = _natural_effects(posterior, design, outcome, level, a, b)
    # the joint indirect effect (every mediator moved at once): total - direct exactly, the
    # sum of the per-mediator ones only on an identity-link outcome
    # on the link scale (a log rate ratio, a log odds ratio per unit): free of the
    # baseline, so a contrast between channels compares slopes, not slopes and baselines
    return xr.Dataset({"total": total, "direct": direct, "indirect": indirect,
                       "indirect_total": total - direct, "share": indirect / total,
                       "a": a, "b": b, "direct_link": exposure_slope,
                       "total_link": exposure_slope + (a * b).sum("mediator")})


def _natural_effects(posterior: xr.Dataset, design: Design, outcome: str, level: str | None,
                     a: xr.DataArray, b: xr.DataArray
                     ) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Direct, indirect and total effects on a non-identity-link outcome by g-computation.

    Raising the exposure by one unit moves each (identity-link) mediator by its a path and
    keeps its residual, so on the outcome's linear predictor mediator m adds a_m b_m. Per
    campaign and draw, with mean() the inverse link:
      direct     = mean(eta + c) - mean(eta)                   (mediators as observed)
      indirect_m = mean(eta + c + a_m b_m) - mean(eta + c)     (m moved alone)
      total      = mean(eta + c + sum_m a_m b_m) - mean(eta)
    averaged over the campaigns. total = direct + the joint indirect effect exactly; the
    indirect effects of single mediators need not add up to the joint one.
    """
    spec = design.spec
    not_linear = [m for m in spec.mediators
                  if not family(design.equations[m].family).identity_link]
    if not_linear:
        raise SpecError(f"{spec.source}: mediation on the {design.equations[outcome].family} "
                        f"outcome {outcome} needs gaussian or student_t mediators; "
                        f"{', '.join(not_linear)} are not")
    family_name = design.equations[outcome].family
    direct_slope = slope(posterior, spec, outcome, spec.exposure, level)

    def contrasts(eta: xr.DataArray) -> xr.Dataset:
        shifted = eta + direct_slope
        moved = _mean(posterior, family_name, outcome, shifted)
        indirect = xr.concat(
            [_mean(posterior, family_name, outcome,
                   shifted + a.sel(mediator=m) * b.sel(mediator=m))
             - moved for m in spec.mediators],
            dim="mediator").assign_coords(mediator=list(spec.mediators))
        unmoved = _mean(posterior, family_name, outcome, eta)
        total = (_mean(posterior, family_name, outcome, shifted + (a * b).sum("mediator"))
                 - unmoved)
        return xr.Dataset({"direct": moved - unmoved, "indirect": indirect, "total": total})

    # a 0/1 exposure: from every campaign at 0 (its mediators at their values under 0)
    at_zero = direct_slope + (a * b).sum("mediator") if binary_exposure(design) else None
    averaged = _campaign_average(posterior, design, outcome, level, contrasts, at_zero)
    return averaged["direct"], averaged["indirect"], averaged["total"]


def _effects_at(posterior: xr.Dataset, design: Design, level: str | None) -> xr.Dataset:
    outcomes = design.spec.outcomes or (design.spec.outcome,)
    if len(outcomes) == 1:
        return _outcome_effects(posterior, design, outcomes[0], level)
    by_outcome = [_outcome_effects(posterior, design, o, level) for o in outcomes]
    return xr.concat(by_outcome, dim="outcome").assign_coords(outcome=list(outcomes))


def effect_draws(posterior: xr.Dataset, design: Design) -> xr.Dataset:
    """Every effect as draws with dims (chain, draw[, mediator][, moderator][, outcome])."""
    levels = moderator_levels(design)
    if not levels:
        return _effects_at(posterior, design, None)
    by_level = [_effects_at(posterior, design, level) for level in levels]
    return xr.concat(by_level, dim=design.spec.moderator).assign_coords(
        {design.spec.moderator: levels})


def contrast_draws(effects: xr.Dataset, moderator: str) -> xr.Dataset:
    """The first level minus each other level, for every effect; dim `contrast` labelled
    "first - other"."""
    levels = [str(v) for v in effects[moderator].values]
    first = effects.sel({moderator: levels[0]}, drop=True)
    parts = [first - effects.sel({moderator: other}, drop=True) for other in levels[1:]]
    labels = [f"{levels[0]} - {other}" for other in levels[1:]]
    contrasts = xr.concat(parts, dim="contrast").assign_coords(contrast=labels)
    # paths the spec shares across levels (b paths, usually) contrast to exactly zero
    shared = [name for name, values in contrasts.data_vars.items() if not values.any()]
    return contrasts.drop_vars(shared)


def _rows(values: xr.DataArray, rhat: xr.DataArray, ess: xr.DataArray,
          tail: xr.DataArray) -> list[dict]:
    """One row per cell of the non-sample dims: label columns, then the statistics."""
    dims = [d for d in values.dims if d not in SAMPLE_DIMS]
    rows = []
    for labels in itertools.product(*(values[d].values for d in dims)):
        pick = dict(zip(dims, labels, strict=True))
        draws = values.sel(pick).values.ravel()
        rows.append({**{d: str(v) for d, v in pick.items()},
                     "mean": float(draws.mean()),
                     "sd": float(draws.std(ddof=1)),
                     "ci_lower": float(np.quantile(draws, 0.025)),
                     "ci_upper": float(np.quantile(draws, 0.975)),
                     "r_hat": float(rhat.sel(pick)),
                     "ess_bulk": float(ess.sel(pick)),
                     # the interval's ends are tail quantiles: their ESS is the tail one
                     "ess_tail": float(tail.sel(pick)),
                     "p_positive": float((draws > 0).mean())})
    return rows


def _summary(draws: xr.Dataset, label: str) -> pd.DataFrame:
    rhat = az.rhat(draws)
    ess = az.ess(draws, method="bulk")
    tail = az.ess(draws, method="tail")
    rows = []
    for name in EFFECTS:
        if name in draws:
            rows += [{label: name, **row}
                     for row in _rows(draws[name], rhat[name], ess[name], tail[name])]
    frame = pd.DataFrame(rows)
    if "mediator" not in frame:
        frame["mediator"] = ""
    statistics = ["mean", "sd", "ci_lower", "ci_upper", "r_hat", "ess_bulk", "ess_tail",
                  "p_positive"]
    labels = [label, "mediator", *[c for c in frame if c not in (label, "mediator",
                                                                   *statistics)]]
    frame[labels] = frame[labels].fillna("")
    return frame[labels + statistics]


def summarise_effects(effects: xr.Dataset) -> pd.DataFrame:
    """One row per effect (and mediator, and moderator level): mean, sd, 95% equal-tailed
    interval, R-hat, bulk and tail ESS, P(> 0), and `defined` (`mark_undefined_shares`)."""
    return mark_undefined_shares(_summary(effects, "effect"))


UNDEFINED_SHARE = ("not defined: the total effect's 95% interval includes 0, so indirect / "
                   "total has no stable value (its draws run to both infinities)")


def mark_undefined_shares(effects: pd.DataFrame) -> pd.DataFrame:
    """`defined`: False for a share whose total effect (same outcome and moderator level) has
    a 95% interval that includes 0; True for every other row."""
    statistics = {"effect", "mediator", "mean", "sd", "ci_lower", "ci_upper", "r_hat",
                  "ess_bulk", "ess_tail", "p_positive", "defined"}
    qualifiers = [c for c in effects.columns if c not in statistics]

    def key(row: pd.Series) -> tuple:
        return tuple(str(row[q]) for q in qualifiers)

    spans_zero = {key(row): row["ci_lower"] <= 0 <= row["ci_upper"]
                  for _, row in effects[effects["effect"] == "total"].iterrows()}
    defined = [row["effect"] != "share" or not spans_zero[key(row)]
               for _, row in effects.iterrows()]
    return effects.assign(defined=defined)


def summarise_contrasts(contrasts: xr.Dataset) -> pd.DataFrame:
    """One row per effect, mediator and contrast: mean, sd, 95% interval, R-hat, bulk ESS,
    and p_greater, the posterior probability that the first level's effect is the larger."""
    frame = _summary(contrasts, "effect").rename(columns={"p_positive": "p_greater"})
    statistics = ["mean", "sd", "ci_lower", "ci_upper", "p_greater", "r_hat", "ess_bulk",
                  "ess_tail"]
    labels = [c for c in frame.columns if c not in (*statistics, "contrast")]
    return frame[[*labels, "contrast", *statistics]]
