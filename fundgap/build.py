"""Where a formula becomes a PyMC model: every equation of a spec in one `pm.Model`.

For each equation:

    eta = alpha + sum_j beta_std_j * (x_j - mean_j) / sd_j
          + prefecture_sd * prefecture_z[prefecture] + county_sd * county_z[county]
    y ~ family(eta, ...)

with standard-normal z (non-centred: sparse counties put no funnel in the sampler's way) and
the data-scaled priors of fundgap/defaults.py. A group named in `centred` has its intercepts
drawn as Normal(0, sd) instead, and with both groups centred each county's level is drawn
around its prefecture's (`_nested_centred`): where levels hold many campaigns (hundreds per
county at platform scale) the data pin each intercept down and the non-centred z's would be
the funnel. A Gaussian equation named in `marginal` gets its county and prefecture
intercepts integrated out instead (fundgap.marginal): the sampler then sees only its
coefficients and variances; a non-Gaussian one named in `laplace` has them integrated out
by a nested Laplace approximation (fundgap.laplace). Group sds are folded where their
sign cannot matter (`_group_sds`). Coefficients in the predictors' own units and the
intercept are named Deterministics with dims, so every posterior variable reads as what it
holds.
"""

from __future__ import annotations

from collections.abc import Collection

import pymc as pm
import pytensor.tensor as pt

from fundgap import names
from fundgap.correlated import ERROR_EQUATION_DIM, JointMember, add_joint_likelihood
from fundgap.design import Design, EquationDesign, group_dim, term_dim
from fundgap.families import family
from fundgap.laplace import add_laplace_likelihood
from fundgap.lkj import error_pairs
from fundgap.marginal import add_marginal_likelihood


def _likelihood(equation: EquationDesign, eta: pt.TensorVariable,
                sigma_scale: pt.TensorVariable) -> None:
    """The equation's response given eta, with its family's own parameters (fundgap.families)."""
    record = family(equation.family)
    auxiliary = record.auxiliary_priors(equation.name, sigma_scale)
    # as pm.Data, so a model compiled with its data as inputs takes another response
    observed = pm.Data(f"y_{equation.name}", equation.y, dims="campaign")
    record.likelihood(equation.name, eta, auxiliary, observed, "campaign")


def _equation(design: Design, name: str, form: str, centred: Collection[str],
              iterations: int | None, compiled: bool, joint: dict[str, JointMember]) -> None:
    """Add one equation's parameters and likelihood to the model in context; an equation
    whose errors are correlated with others' leaves its likelihood to the block, its pieces
    in `joint`.

    Every number that comes from the data enters as pm.Data, so a compiled model whose
    equations are all marginal can be reused with another data set of the same structure.
    """
    equation = design.equations[name]
    scales = pm.Data(f"prior_{name}", equation.prior_scales())
    x_mean = pm.Data(f"x_mean_{name}", equation.x_mean, dims=term_dim(name))
    x_sd = pm.Data(f"x_sd_{name}", equation.x_sd, dims=term_dim(name))
    alpha = pm.Normal(names.alpha(name), scales[0], scales[1])
    beta_std = pm.Normal(names.beta_std(name), 0.0, scales[2], dims=term_dim(name))
    coefficients = pm.Deterministic(names.coefficients(name), beta_std / x_sd,
                                    dims=term_dim(name))
    pm.Deterministic(names.intercept(name), alpha - pt.dot(coefficients, x_mean))
    correlated = name in design.spec.correlated_errors
    if form == "exact":
        sds = _group_sds(equation, scales[4], folded=equation.groups)
        if correlated:
            joint[name] = JointMember(pt.concatenate([pt.atleast_1d(alpha), beta_std]), sds,
                                      scales[3])
            return
        add_marginal_likelihood(design, name, alpha, beta_std, sds,
                                pm.HalfNormal(names.sigma(name), scales[3]), compiled)
        return
    X = pm.Data(f"X_{name}", (equation.X - equation.x_mean) / equation.x_sd,
                dims=("campaign", term_dim(name)))
    if form == "laplace":
        sds = _group_sds(equation, scales[4], folded=equation.groups)
        auxiliary = family(equation.family).auxiliary_priors(name, scales[3])
        add_laplace_likelihood(design, name, alpha + pt.dot(X, beta_std), sds, auxiliary,
                               iterations)
        return
    nested_centred = len(equation.groups) == 2 and set(equation.groups) <= set(centred)
    sds = _group_sds(equation, scales[4], folded=[c for c in equation.groups
                                                  if c not in centred])
    if nested_centred:
        eta = pt.dot(X, beta_std) + _nested_centred(design, name, alpha, sds)
        if correlated:
            joint[name] = JointMember(eta, sds, scales[3])
            return
        _likelihood(equation, eta, scales[3])
        return
    eta = alpha + pt.dot(X, beta_std)
    for column in equation.groups:
        dim = group_dim(column)
        if column in centred:
            effect = pm.Normal(names.group_intercept(dim, name), 0.0, sds[dim], dims=dim)
        else:
            z = pm.Normal(names.group_z(dim, name), 0.0, 1.0, dims=dim)
            effect = pm.Deterministic(names.group_intercept(dim, name), sds[dim] * z, dims=dim)
        eta = eta + effect[design.index[column]]
    if correlated:
        joint[name] = JointMember(eta, sds, scales[3])
        return
    _likelihood(equation, eta, scales[3])


def _group_sds(equation: EquationDesign, scale: pt.TensorVariable,
               folded: Collection[str]) -> dict[str, pt.TensorVariable]:
    """Each group's sd, HalfNormal(scale) a priori, saved as `{dim}_sd_{name}`. Returns
    {dim: the sd the likelihood uses}.

    The sds of the groups in `folded` are folded: the sampler moves a signed sd with a
    Normal(0, scale) prior and the saved sd is its absolute value, so the prior is the same
    HalfNormal. Where the likelihood sees a group's sd only through its square (the marginal
    form) or its product with standard-normal z's (non-centred intercepts, where the sign
    swaps with the z's), the posterior of the signed sd is smooth and symmetric about zero:
    an sd near zero no longer leaves a long tail towards log(0) for the sampler to crawl
    along. On the default data, min bulk ESS of the marginal form went from 1016 to 2323
    (the county sd of the outcome from the slowest quantity to 3900), and the recommendation
    logit no longer diverges at target_accept 0.8 (benchmarks/README.md). Centred intercepts
    need a positive sd, so their groups are not folded.
    """
    sds = {}
    for column in equation.groups:
        dim = group_dim(column)
        saved = names.group_sd(dim, equation.name)
        if column in folded:
            sds[dim] = pm.Normal(names.folded_sd(dim, equation.name), 0.0, scale)
            pm.Deterministic(saved, pt.abs(sds[dim]))
        else:
            sds[dim] = pm.HalfNormal(saved, scale)
    return sds


def _nested_centred(design: Design, name: str, alpha: pt.TensorVariable,
                    sds: dict[str, pt.TensorVariable]) -> pt.TensorVariable:
    """County and prefecture levels centred hierarchically: each prefecture's level around
    the equation's intercept, each county's around its prefecture's (Gelfand, Sahu and
    Carlin 1995). With hundreds of campaigns per county, centring both around zero leaves a
    ridge (the intercept against the mean of the intercepts) that no diagonal mass matrix
    aligns; nested, each level is pinned by its own data. The intercepts are saved as the
    same deviations as in the other parameterisations. Returns the level per campaign."""
    outer, inner = design.equations[name].groups
    outer_dim, inner_dim = group_dim(outer), group_dim(inner)
    parent = design.parent(inner, outer)
    outer_level = pm.Normal(names.group_level(outer_dim, name), alpha, sds[outer_dim],
                            dims=outer_dim)
    inner_level = pm.Normal(names.group_level(inner_dim, name), outer_level[parent],
                            sds[inner_dim], dims=inner_dim)
    pm.Deterministic(names.group_intercept(outer_dim, name), outer_level - alpha, dims=outer_dim)
    pm.Deterministic(names.group_intercept(inner_dim, name), inner_level - outer_level[parent],
                     dims=inner_dim)
    return inner_level[design.index[inner]]


def build_model(design: Design, marginal: Collection[str] = (),
                centred: Collection[str] = (), laplace: Collection[str] = (),
                iterations: int | None = None, compiled: bool = True) -> pm.Model:
    """The joint model of every equation in `design`; the equations named in `marginal`
    (Gaussian ones) with their intercepts integrated out exactly, those in `laplace` by the
    Laplace approximation (its mode found in `iterations` Newton steps, or by a while loop
    where None), the others explicit, with the intercepts of the group columns in `centred`
    centred and the rest non-centred. `compiled` puts each integrated equation in as one
    compiled operation (numba and PyMC backends); JAX backends need `compiled=False`, the
    PyTensor graphs they can trace."""
    coords = design.coordinates()
    if set(marginal) >= set(design.equations):
        # nothing per campaign or per level is left in the graph: drop those coordinates,
        # so the compiled model does not depend on them
        coords = {k: v for k, v in coords.items()
                  if k not in (*map(group_dim, design.levels), "campaign")}
    correlated = design.spec.correlated_errors
    if correlated:
        coords[names.ERROR_PAIR_DIM] = error_pairs(correlated)
        coords[ERROR_EQUATION_DIM] = list(correlated)
    joint: dict[str, JointMember] = {}
    with pm.Model(coords=coords, check_bounds=False) as model:
        for name in design.equations:
            form = ("exact" if name in marginal else "laplace" if name in laplace
                    else "explicit")
            _equation(design, name, form, centred, iterations, compiled, joint)
        if joint:
            add_joint_likelihood(design, correlated, joint, exact=correlated[0] in marginal,
                                 compiled=compiled)
    return model
