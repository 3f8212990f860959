"""Where a formula becomes a PyMC model: the explicit (non-centred) joint form.

All equations of a spec go into one `pm.Model`. For each equation:

    eta = alpha + sum_j beta_std_j * (x_j - mean_j) / sd_j
          + prefecture_sd * prefecture_z[prefecture] + county_sd * county_z[county]
    y ~ family(eta, ...)

with standard-normal z (non-centred: sparse counties put no funnel in the sampler's way) and
the data-scaled priors of fundgap/defaults.py. Coefficients in the predictors' own units,
the intercept, and the county and prefecture intercepts are kept as named Deterministics
with dims, so every posterior variable reads as what it holds.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from scipy.special import logit

from fundgap.defaults import DIMS, PRIOR_SCALES
from fundgap.design import Design, EquationDesign

# group column of the prepared table -> the dimension of its intercepts
GROUP_DIMS = {f"{level}_code": DIMS[level] for level in ("county", "prefecture", "province")}


def response_scale(equation: EquationDesign) -> tuple[float, float]:
    """Location and scale of the response on the link scale (for the default priors)."""
    y = equation.y
    if equation.family == "lognormal":
        logged = np.log(y)
        return float(logged.mean()), float(logged.std() or 1.0)
    if equation.family == "negative_binomial":
        return float(np.log(max(y.mean(), 1e-3))), 1.0
    if equation.family == "bernoulli":
        share = float(np.clip(y.mean(), 0.01, 0.99))
        return float(logit(share)), 1.0
    return float(y.mean()), float(y.std() or 1.0)


def term_dim(equation: str) -> str:
    """The dimension name of an equation's coefficients."""
    return f"term_{equation}"


def coordinates(design: Design) -> dict[str, list]:
    """Named coordinates of every dimension the model uses."""
    coords: dict[str, list] = {
        "campaign": list(design.campaigns),
        "equation": list(design.equations),
    }
    for column, codes in design.levels.items():
        coords[GROUP_DIMS[column]] = list(codes)
    for name, equation in design.equations.items():
        coords[term_dim(name)] = list(equation.terms)
    return coords


def _likelihood(equation: EquationDesign, eta: pt.TensorVariable, scale: float,
                priors: dict[str, float]) -> None:
    name, family = equation.name, equation.family
    kwargs = {"observed": equation.y, "dims": "campaign"}
    if family in ("gaussian", "student_t", "lognormal"):
        sigma = pm.HalfNormal(f"sigma_{name}", priors["sigma_scale"] * scale)
        if family == "gaussian":
            pm.Normal(name, mu=eta, sigma=sigma, **kwargs)
        elif family == "student_t":
            nu = pm.Gamma(f"nu_{name}", alpha=2.0, beta=0.1)
            pm.StudentT(name, nu=nu, mu=eta, sigma=sigma, **kwargs)
        else:
            pm.LogNormal(name, mu=eta, sigma=sigma, **kwargs)
    elif family == "negative_binomial":
        dispersion = pm.Exponential(f"dispersion_{name}", 1.0)
        pm.NegativeBinomial(name, mu=pt.exp(eta), alpha=dispersion, **kwargs)
    elif family == "bernoulli":
        pm.Bernoulli(name, logit_p=eta, **kwargs)
    else:  # parse_spec admits only the families above
        raise ValueError(f"unknown family {family!r}")


def build_model(design: Design) -> pm.Model:
    """The joint explicit-form model of every equation in `design`."""
    coords = coordinates(design)
    with pm.Model(coords=coords) as model:
        for name, equation in design.equations.items():
            priors = {**PRIOR_SCALES, **equation.priors}
            location, scale = response_scale(equation)
            x_mean, x_sd = equation.x_mean, equation.x_sd
            X = pm.Data(f"X_{name}", (equation.X - x_mean) / x_sd,
                        dims=("campaign", term_dim(name)))
            alpha = pm.Normal(f"alpha_{name}", location, priors["intercept_scale"] * scale)
            beta_std = pm.Normal(f"beta_std_{name}", 0.0, priors["coefficient_scale"] * scale,
                                 dims=term_dim(name))
            eta = alpha + pt.dot(X, beta_std)
            coefficients = pm.Deterministic(f"coefficients_{name}", beta_std / x_sd,
                                            dims=term_dim(name))
            pm.Deterministic(f"intercept_{name}", alpha - pt.dot(coefficients, x_mean))
            for column in equation.groups:
                dim = GROUP_DIMS[column]
                sd = pm.HalfNormal(f"{dim}_sd_{name}", priors["group_sd_scale"] * scale)
                z = pm.Normal(f"{dim}_z_{name}", 0.0, 1.0, dims=dim)
                effect = pm.Deterministic(f"{dim}_intercept_{name}", sd * z, dims=dim)
                eta = eta + effect[design.index[column]]
            _likelihood(equation, eta, scale, priors)
    return model
