"""The Laplace form (fundgap.laplace): exact where the integrand is Gaussian, close to
quadrature where it is not, with the gradient of what it computes, and fits that recover
their truth and agree with the explicit form."""

from __future__ import annotations

import dataclasses

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats
from scipy.special import polygamma

from fundgap.bayesian import choose_form, fit_model
from fundgap.build import build_model
from fundgap.defaults import LAPLACE_AUTO
from fundgap.design import build_design
from fundgap.families import FAMILIES, digamma, family, trigamma
from fundgap.laplace import Levels, laplace_terms
from fundgap.spec import parse_spec

from conftest import GROUPED_COLUMNS, QUICK, grouped_spec_text, grouped_table

AUXILIARY = {"sigma": 0.7, "dispersion": 2.5, "precision": 12.0}
RESPONSES = {"gaussian": [-1.3, 0.2, 2.5], "poisson": [0, 3, 11],
             "negative_binomial": [0, 3, 11], "bernoulli": [0, 1, 1],
             "beta": [0.05, 0.5, 0.93], "censored_lognormal": [0.2, 0.7, 1.0]}


def _design(family_name: str, campaigns: int = 300, counties: int = 40, prefectures: int = 6,
            seed: int = 2, groups: str = "(1|prefecture) + (1|county)", **truth):
    table = grouped_table(family_name, campaigns, counties, prefectures, seed, **truth)
    spec = parse_spec(grouped_spec_text(family_name, groups), f"{family_name}.toml",
                      GROUPED_COLUMNS)
    return spec, table, build_design(spec, table)


def _random_points(model: pm.Model, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    start = model.initial_point()
    return [{k: v + rng.normal(0, 0.3, np.shape(v)) for k, v in start.items()}
            for _ in range(count)]


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.curvature])
def test_closed_form_curvature_is_the_derivative_of_the_log_density(name: str) -> None:
    record = family(name)
    eta = pt.vector("eta")
    auxiliary = {a.name: pt.as_tensor(AUXILIARY[a.name]) for a in record.auxiliary}
    y = np.array(RESPONSES[name], dtype=float)
    total = pt.sum(record.log_density(y, eta, auxiliary))
    first, weight = record.curvature(y, eta, auxiliary)
    autodiff_first = pytensor.grad(total, eta)
    autodiff_weight = -pytensor.grad(pt.sum(autodiff_first), eta)
    values = pytensor.function([eta], [first, weight, autodiff_first, autodiff_weight])(
        np.array([-0.4, 0.3, 1.1]))
    np.testing.assert_allclose(values[0], values[2], rtol=1e-9, atol=1e-12)
    # beta's weight uses fundgap's trigamma, PyTensor's autodiff its own: 1e-8 apart
    np.testing.assert_allclose(values[1], values[3], rtol=1e-7, atol=1e-12)
    if record.higher is not None:
        third, fourth = record.higher(y, eta, auxiliary)
        autodiff_third = -pytensor.grad(pt.sum(weight), eta)
        autodiff_fourth = pytensor.grad(pt.sum(autodiff_third), eta)
        values = pytensor.function([eta], [third, fourth, autodiff_third, autodiff_fourth])(
            np.array([-0.4, 0.3, 1.1]))
        np.testing.assert_allclose(values[0], values[2], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(values[1], values[3], rtol=1e-9, atol=1e-12)


def test_digamma_and_trigamma_in_elementary_operations_are_scipys() -> None:
    x = pt.as_tensor(np.concatenate([np.geomspace(1e-3, 1e4, 200), [0.5, 1.0, 6.0, 7.5]]))
    psi, psi_gradient, psi1 = pytensor.function([], [
        digamma(x), pytensor.grad(pt.sum(digamma(x)), x), trigamma(x)])()
    values = x.data
    np.testing.assert_allclose(psi, polygamma(0, values), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(psi_gradient, polygamma(1, values), rtol=1e-10)
    np.testing.assert_allclose(psi1, polygamma(1, values), rtol=1e-10)


def test_laplace_marginal_of_a_gaussian_equation_is_the_exact_marginal() -> None:
    _, _, design = _design("gaussian")
    exact = build_model(design, marginal=("y",))
    laplace = build_model(design, laplace=("y",))
    # the same free variables (coefficients, signed sds, sigma) with the same priors
    assert ({v.name for v in exact.value_vars} == {v.name for v in laplace.value_vars})
    exact_logp, laplace_logp = exact.compile_logp(), laplace.compile_logp()
    exact_gradient, laplace_gradient = exact.compile_dlogp(), laplace.compile_dlogp()
    for point in _random_points(exact, 5, seed=4):
        assert laplace_logp(point) == pytest.approx(exact_logp(point), abs=1e-8, rel=0)
        np.testing.assert_allclose(laplace_gradient(point), exact_gradient(point),
                                   rtol=1e-7, atol=1e-7)


def _grouped_counts(name: str, per_group: int, groups: int, seed: int):
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(groups), per_group)
    eta_fixed = 0.3 + rng.normal(0, 0.4, len(index))
    tau = 1.2 if name == "bernoulli" else 0.6
    eta = eta_fixed + tau * rng.normal(0, 1, groups)[index]
    if name == "poisson":
        y = rng.poisson(np.exp(eta))
    elif name == "bernoulli":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    else:  # censored_lognormal: shares of a target, a fifth of them capped at 1
        eta_fixed = eta_fixed - 0.7
        y = np.minimum(np.exp(rng.normal(eta - 0.7, CENSORED_SIGMA)), 1.0)
    return y, eta_fixed, index, tau


CENSORED_SIGMA = 0.5
_QUADRATURE_AUXILIARY = {"sigma": CENSORED_SIGMA}


def _quadrature(name: str, y, eta_fixed, index, tau, groups: int) -> float:
    """sum over groups of log int prod_i p(y_i | eta_i + tau z) N(z; 0, 1) dz, by the
    trapezoid rule on a fine grid (Gauss-Hermite nodes are too coarse for an integrand as
    peaked as thirty counts make it)."""
    z = np.linspace(-9, 9, 6001)
    total = 0.0
    for g in range(groups):
        rows = index == g
        eta = eta_fixed[rows][:, None] + tau * z[None, :]
        record = family(name)
        log_p = record.pointwise_log_likelihood(
            record.predictive(eta, _QUADRATURE_AUXILIARY), y[rows][:, None])
        log_integrand = log_p.sum(0) + stats.norm.logpdf(z)
        peak = log_integrand.max()
        total += peak + np.log(np.trapezoid(np.exp(log_integrand - peak), z))
    return total


def _laplace_value(name: str, y, eta_fixed, index, tau, groups: int, iterations=None,
                   correct: bool = True):
    auxiliary = {k: pt.as_tensor(v) for k, v in _QUADRATURE_AUXILIARY.items()
                 if k in {a.name for a in family(name).auxiliary}}
    terms = laplace_terms(name, y.astype(float), pt.as_tensor(eta_fixed), auxiliary,
                          Levels(index, groups), (pt.as_tensor(tau),), iterations, correct)
    return pytensor.function([], [terms.value, pt.max(pt.abs(terms.step[0]))])()


def _errors(name: str, per_group: int, correct: bool) -> float:
    """The approximation's error per group against quadrature, with its residual checked."""
    y, eta_fixed, index, tau = _grouped_counts(name, per_group, groups=25, seed=per_group)
    value, residual = _laplace_value(name, y, eta_fixed, index, tau, 25, correct=correct)
    assert residual < 1e-8
    return abs(float(value) - _quadrature(name, y, eta_fixed, index, tau, 25)) / 25


def test_poisson_laplace_matches_quadrature_within_its_expected_error() -> None:
    plain = {n: _errors("poisson", n, correct=False) for n in (2, 30, 300)}
    # per group, a few thousandths of a log unit where the likelihood is weak or middling,
    # and O(1 / information) once it dominates the prior: ten times the counts, about a
    # tenth of the error
    assert max(plain.values()) < 0.005
    assert plain[300] < plain[30] / 4
    # the second-order term takes the error down by one order of information more
    corrected = {n: _errors("poisson", n, correct=True) for n in (2, 30, 300)}
    assert all(corrected[n] < plain[n] / 10 for n in plain)


def test_second_order_term_corrects_laplace_for_singleton_binary_groups() -> None:
    # one or two campaigns per county, a binary response: the study's hardest case
    for per_group in (1, 2):
        plain, corrected = (_errors("bernoulli", per_group, c) for c in (False, True))
        assert corrected < plain / 3


def test_second_order_term_is_the_dense_expansion_for_nested_groups() -> None:
    # the O(counties) sums against the expansion's tensors written out in full
    rng = np.random.default_rng(0)
    counties, prefectures = 7, 3
    parent = np.array([0, 0, 0, 1, 1, 2, 2])
    index = np.concatenate([np.arange(counties), [0, 3, 3, 5]])
    y = rng.binomial(1, 0.4, len(index)).astype(float)
    eta_fixed = rng.normal(0, 0.5, len(index))
    taus = (1.1, -0.7)   # signed sds, as the sampler moves them
    levels = Levels(index, counties, parent, prefectures)
    corrected, plain = (laplace_terms("bernoulli", y, pt.as_tensor(eta_fixed), {}, levels,
                                      tuple(pt.as_tensor(t) for t in taus), correct=c)
                        for c in (True, False))
    term, z_county, z_prefecture = pytensor.function(
        [], [corrected.value - plain.value, *corrected.mode])()
    loadings = np.zeros((len(index), counties + prefectures))
    loadings[np.arange(len(index)), index] = taus[0]
    loadings[np.arange(len(index)), counties + parent[index]] = taus[1]
    p = 1 / (1 + np.exp(-(eta_fixed + loadings @ np.concatenate([z_county, z_prefecture]))))
    slope = p * (1 - p)
    covariance = np.linalg.inv(np.eye(counties + prefectures)
                               + loadings.T @ (slope[:, None] * loadings))
    g3 = np.einsum("i,ia,ib,ic->abc", -slope * (1 - 2 * p), *[loadings] * 3)
    g4 = np.einsum("i,ia,ib,ic,id->abcd", -slope * (1 - 6 * slope), *[loadings] * 4)
    # per prefecture (its counties and itself: independent blocks), each bounded as
    # laplace_kernel.bounded does
    blocks = []
    for prefecture in range(prefectures):
        keep = np.concatenate([np.flatnonzero(parent == prefecture), [counties + prefecture]])
        cov = covariance[np.ix_(keep, keep)]
        b3, b4 = g3[np.ix_(keep, keep, keep)], g4[np.ix_(keep, keep, keep, keep)]
        blocks.append(np.einsum("abcd,ab,cd", b4, cov, cov) / 8
                      + np.einsum("abc,def,ab,cd,ef", b3, b3, cov, cov, cov) / 8
                      + np.einsum("abc,def,ad,be,cf", b3, b3, cov, cov, cov) / 12)
    blocks = np.array(blocks)
    dense = np.einsum("abcd,ab,cd", g4, covariance, covariance) / 8 + np.einsum(
        "abc,def,ab,cd,ef", g3, g3, *[covariance] * 3) / 8 + np.einsum(
        "abc,def,ad,be,cf", g3, g3, *[covariance] * 3) / 12
    np.testing.assert_allclose(blocks.sum(), dense, rtol=1e-10)
    np.testing.assert_allclose(term, np.sum(blocks / np.sqrt(1 + blocks**2)), rtol=1e-10)


def test_censored_share_laplace_matches_quadrature() -> None:
    # Gaussian in the uncensored shares, log Phi in the capped ones (a third of them): a few
    # thousandths of a log unit per group, and the second-order term takes off most of it
    for per_group in (2, 30):
        plain, corrected = (_errors("censored_lognormal", per_group, c) for c in (False, True))
        assert plain < 5e-3
        assert corrected < plain / 3


def test_a_mode_search_cut_short_is_seen_in_its_residual() -> None:
    y, eta_fixed, index, tau = _grouped_counts("poisson", 30, groups=10, seed=1)
    _, converged = _laplace_value("poisson", y, eta_fixed, index, tau, 10)
    _, cut_short = _laplace_value("poisson", y, eta_fixed, index, tau, 10, iterations=1)
    assert converged < 1e-8 < 1e-3 < cut_short


def test_beta_mode_search_stays_newton_where_single_campaigns_curve_the_wrong_way() -> None:
    # shares near 0 and 1 in counties of one or two campaigns: a campaign's own weight
    # (-d2 log p / d eta2) is negative there, its county's sum with the prior's is not
    rng = np.random.default_rng(3)
    counties, prefectures = 400, 40
    index = np.concatenate([np.arange(counties), rng.integers(0, counties, 200)])
    share = rng.beta(0.6, 1.5, len(index))
    share[rng.random(len(index)) < 0.05] = 0.9997
    levels = Levels(index, counties, np.arange(counties) % prefectures, prefectures)
    terms = laplace_terms("beta", share, pt.as_tensor(np.full(len(index), -0.9)),
                          {"precision": pt.as_tensor(5.0)}, levels,
                          (pt.as_tensor(1.0), pt.as_tensor(0.5)))
    iterations, residual = pytensor.function(
        [], [terms.iterations, pt.max(pt.abs(terms.step[0]))])()
    assert residual < 1e-10
    assert iterations <= 12


@pytest.mark.parametrize("name", ["negative_binomial", "bernoulli", "beta",
                                  "censored_lognormal"])
def test_laplace_gradient_matches_finite_differences(name: str) -> None:
    _, _, design = _design(name, campaigns=200, counties=30, prefectures=5)
    model = build_model(design, laplace=("y",))
    logp, gradient = model.compile_logp(), model.compile_dlogp()
    point = _random_points(model, 1, seed=7)[0]
    analytic = gradient(point)
    numeric, h = [], 1e-5
    for variable in (v.name for v in model.value_vars):
        value = np.atleast_1d(np.asarray(point[variable], dtype=float))
        shape = np.shape(point[variable])
        for i in range(value.size):
            up, down = value.copy(), value.copy()
            up[i] += h
            down[i] -= h
            numeric.append((logp({**point, variable: up.reshape(shape)})
                            - logp({**point, variable: down.reshape(shape)})) / (2 * h))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-5)


def test_forms_are_chosen_per_equation() -> None:
    _, _, design = _design("negative_binomial")
    assert choose_form(design, "laplace").equations == {"y": "laplace"}
    assert choose_form(design, "laplace").label == "laplace"
    # auto integrates by Laplace only the families in defaults.LAPLACE_AUTO
    expected = "laplace" if "negative_binomial" in LAPLACE_AUTO else "explicit"
    assert choose_form(design, "auto").equations == {"y": expected}
    assert choose_form(design, "explicit").equations == {"y": "explicit"}
    assert choose_form(design, "exact").equations == {"y": "explicit"}
    _, _, gaussian = _design("gaussian")
    assert choose_form(gaussian, "exact").equations == {"y": "exact"}
    assert choose_form(gaussian, "laplace").equations == {"y": "exact"}
    assert choose_form(gaussian, "auto").label == "marginal"


def test_negative_binomial_laplace_fit_recovers_truth_and_saves_intercepts() -> None:
    truth = {"intercept": 0.8, "slope": 0.4, "county_sd": 0.35, "prefecture_sd": 0.3,
             "dispersion": 4.0}
    spec, table, _ = _design("negative_binomial", campaigns=1500, counties=150,
                             prefectures=15, seed=5, **truth)
    # 2 x 1000 draws: at 2 x 500 the prefecture sd's tail ESS sat near the gate's 400
    # (272 with one rounding of the kernel's sums, above 400 with another)
    fit = fit_model(spec, table, dataclasses.replace(QUICK, draws=1000, tune=500,
                                                     form="laplace"))
    assert fit.diagnostics["equation_forms"] == {"y": "laplace"}
    assert fit.record["laplace"] == ["y"]
    assert fit.diagnostics["passed"], fit.diagnostics["reasons"]
    assert fit.diagnostics["laplace_max_residual"] < 1e-6
    summary = fit.summary
    for parameter, value in (("coefficients_y[x]", truth["slope"]),
                             ("county_sd_y", truth["county_sd"]),
                             ("prefecture_sd_y", truth["prefecture_sd"]),
                             ("dispersion_y", truth["dispersion"])):
        row = summary.loc[parameter]
        assert abs(row["mean"] - value) < 3 * row["sd"], parameter
    posterior = fit.idata.posterior
    # the same variables and dims as the explicit form: intercepts per level, no internals
    assert posterior["county_intercept_y"].dims == ("chain", "draw", "county")
    assert posterior["prefecture_intercept_y"].sizes["prefecture"] == 15
    assert not [v for v in posterior.data_vars if str(v).startswith("laplace_")]
    assert "y" in fit.idata.posterior_predictive


def test_laplace_intercept_draws_agree_with_the_explicit_posterior() -> None:
    spec, table, _ = _design("poisson", campaigns=400, counties=40, prefectures=8, seed=9,
                             intercept=1.0, county_sd=0.4, prefecture_sd=0.3)
    settings = dataclasses.replace(QUICK, draws=1000, tune=800)
    laplace = fit_model(spec, table, dataclasses.replace(settings, form="laplace"))
    explicit = fit_model(spec, table, dataclasses.replace(settings, form="explicit"))
    for variable in ("county_intercept_y", "prefecture_intercept_y"):
        approximate = laplace.idata.posterior[variable]
        reference = explicit.idata.posterior[variable]
        sd = reference.std(("chain", "draw")).values
        shift = np.abs(approximate.mean(("chain", "draw")).values
                       - reference.mean(("chain", "draw")).values) / sd
        ratio = approximate.std(("chain", "draw")).values / sd
        # Monte Carlo error of both means is about 0.1 sd at these draws
        assert shift.max() < 0.35, variable
        assert 0.8 < np.median(ratio) < 1.2, variable
    for parameter in ("coefficients_y[x]", "county_sd_y", "prefecture_sd_y"):
        a, b = laplace.summary.loc[parameter], explicit.summary.loc[parameter]
        assert abs(a["mean"] - b["mean"]) < 0.3 * b["sd"], parameter
