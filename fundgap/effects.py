"""Effects from the posterior, per draw: a and b paths, indirect, direct, total, shares.

Per unit of the exposure (development is scaled to sd 1, so per 1 sd). For a mediator with
an identity link the a path is its exposure coefficient; for a log or logit link it is the
g-computation contrast: the average predicted mediator with the exposure raised by one unit
minus at its observed value, over the campaigns, per draw. b paths are the outcome's
mediator coefficients, which needs an identity-link outcome (gaussian or student_t).
indirect = a * b, total = direct + sum of indirect, share = indirect / total.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit

from fundgap.design import Design
from fundgap.errors import SpecError
from fundgap.predictive import linear_predictor

IDENTITY_LINK = ("gaussian", "student_t")


def _a_path(posterior: xr.Dataset, design: Design, mediator: str) -> xr.DataArray:
    exposure = design.spec.exposure
    slope = posterior[f"coefficients_{mediator}"].sel({f"term_{mediator}": exposure}, drop=True)
    family = design.equations[mediator].family
    if family in IDENTITY_LINK:
        return slope
    eta = linear_predictor(posterior, design, mediator)
    if family == "bernoulli":
        contrast = expit(eta + slope) - expit(eta)
    else:  # log link: lognormal mean exp(eta + sigma^2/2), negative binomial exp(eta)
        level = np.exp(eta)
        if family == "lognormal":
            level = level * np.exp(posterior[f"sigma_{mediator}"] ** 2 / 2)
        contrast = level * (np.exp(slope) - 1)
    return contrast.mean("campaign")


def effect_draws(posterior: xr.Dataset, design: Design) -> xr.Dataset:
    """Every effect as draws with dims (chain, draw[, mediator])."""
    spec = design.spec
    if design.equations[spec.outcome].family not in IDENTITY_LINK:
        raise SpecError(f"{spec.source}: the mediation decomposition needs a gaussian or "
                        f"student_t outcome; {spec.outcome} is "
                        f"{design.equations[spec.outcome].family}")
    term = f"term_{spec.outcome}"
    outcome = posterior[f"coefficients_{spec.outcome}"]
    direct = outcome.sel({term: spec.exposure}, drop=True)
    mediators = list(spec.mediators)
    if not mediators:
        return xr.Dataset({"total": direct, "direct": direct})
    a = xr.concat([_a_path(posterior, design, m) for m in mediators], dim="mediator")
    b = outcome.sel({term: mediators}).rename({term: "mediator"})
    a = a.assign_coords(mediator=mediators)
    b = b.assign_coords(mediator=mediators)
    indirect = a * b
    total = direct + indirect.sum("mediator")
    return xr.Dataset({"total": total, "direct": direct, "indirect": indirect,
                       "share": indirect / total, "a": a, "b": b})


def summarise_effects(effects: xr.Dataset) -> pd.DataFrame:
    """One row per effect: mean, sd, 95% equal-tailed interval, R-hat, bulk ESS, P(> 0)."""
    rows = []
    rhat = az.rhat(effects)
    ess = az.ess(effects, method="bulk")
    for name in ("total", "direct", "indirect", "share", "a", "b"):
        if name not in effects:
            continue
        values = effects[name]
        mediators = values["mediator"].values if "mediator" in values.dims else [None]
        for mediator in mediators:
            pick = {"mediator": mediator} if mediator is not None else {}
            draws = values.sel(pick).values.ravel()
            rows.append({
                "effect": name,
                "mediator": mediator or "",
                "mean": float(draws.mean()),
                "sd": float(draws.std(ddof=1)),
                "ci_lower": float(np.quantile(draws, 0.025)),
                "ci_upper": float(np.quantile(draws, 0.975)),
                "r_hat": float(rhat[name].sel(pick)),
                "ess_bulk": float(ess[name].sel(pick)),
                "p_positive": float((draws > 0).mean()),
            })
    return pd.DataFrame(rows)
