"""The marginalised likelihood equals a dense multivariate normal; intercept draws follow
the exact conditional posterior."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

from fundgap.design import build_design
from fundgap.marginal import (
    draw_intercepts,
    marginal_loglik,
    standardised_design,
    sufficient_statistics,
)
from fundgap.spec import parse_spec


def tiny_design(levels: str, n: int = 70, seed: int = 0):
    rng = np.random.default_rng(seed)
    county = rng.integers(0, 18, n)
    table = pd.DataFrame({
        "campaign_id": [f"c{i}" for i in range(n)],
        "county_code": [f"{110000 + c}" for c in county],
        "prefecture_code": [f"{120000 + c // 5}" for c in county],
        "development": rng.standard_normal(n),
        "male": rng.integers(0, 2, n),
        "log_amount_raised": rng.standard_normal(n),
    })
    text = ('name = "t"\nexposure = "development"\noutcome = "log_amount_raised"\n'
            "[equations.log_amount_raised]\n"
            f'formula = "log_amount_raised ~ development + male {"+ " if levels else ""}{levels}"')
    design = build_design(parse_spec(text, columns=set(table.columns)), table)
    return design, design.equations["log_amount_raised"]


def dense_covariance(design, sigma, tau_county, tau_prefecture):
    n = len(design.table)
    county = design.index.get("county_code")
    prefecture = design.index.get("prefecture_code")
    covariance = sigma**2 * np.eye(n)
    if county is not None:
        covariance += tau_county**2 * (county[:, None] == county[None, :])
    if prefecture is not None:
        covariance += tau_prefecture**2 * (prefecture[:, None] == prefecture[None, :])
    return covariance


@pytest.mark.parametrize("levels", ["(1|prefecture) + (1|county)", "(1|county)",
                                    "(1|prefecture)", ""])
def test_marginal_loglik_equals_dense_normal(levels: str) -> None:
    design, equation = tiny_design(levels)
    stats = sufficient_statistics(design, "log_amount_raised")
    Z = standardised_design(equation)
    for theta, sigma, tau_c, tau_p in [([0.3, -0.2, 0.1], 0.7, 0.5, 0.4),
                                       ([-1.0, 0.5, 0.0], 1.3, 0.05, 2.0)]:
        theta = np.asarray(theta)
        nested = len(equation.groups) == 2
        tau_inner = (tau_p if levels == "(1|prefecture)" else tau_c) if levels else None
        covariance = dense_covariance(design, sigma, tau_c if "county" in levels else 0.0,
                                      tau_p if "prefecture" in levels else 0.0)
        dense = multivariate_normal(Z @ theta, covariance).logpdf(equation.y)
        ours = marginal_loglik(stats, theta, sigma, tau_inner, tau_p if nested else None)
        assert ours == pytest.approx(dense, abs=1e-8)


def test_pytensor_graph_equals_numpy() -> None:
    import pytensor.tensor as pt

    design, _ = tiny_design("(1|prefecture) + (1|county)")
    stats = sufficient_statistics(design, "log_amount_raised")
    theta = pt.vector("theta")
    graph = marginal_loglik(stats, theta, pt.constant(0.8), pt.constant(0.3), pt.constant(0.6))
    value = graph.eval({theta: np.array([0.1, 0.2, -0.3])})
    assert value == pytest.approx(marginal_loglik(stats, np.array([0.1, 0.2, -0.3]), 0.8, 0.3,
                                                  0.6), abs=1e-10)


@pytest.mark.parametrize("levels", ["(1|prefecture) + (1|county)", "(1|county)", ""])
def test_compiled_operation_equals_the_graph(levels: str) -> None:
    """The one-operation form (fundgap.marginal_kernel) and the graph give the same log
    density and gradient, at signed sds too, through PyTensor's numba backend and through
    the Op's Python `perform` (the PyMC backend's path)."""
    import pytensor

    from fundgap.build import build_model

    design, _ = tiny_design(levels)
    models = {compiled: build_model(design, marginal=["log_amount_raised"], compiled=compiled)
              for compiled in (True, False)}
    assert any("GaussianMarginal" in str(node.op)
               for node in pytensor.graph.traversal.applys_between(
                   models[True].value_vars, [models[True].logp()]))
    results = {}
    for compiled, model in models.items():
        logp = model.logp()
        inputs = model.value_vars
        for mode in ("NUMBA", "FAST_COMPILE"):
            function = pytensor.function(inputs, [logp, *pytensor.grad(logp, inputs)],
                                         mode=mode)
            rng = np.random.default_rng(5)
            start = model.initial_point()
            points = [[start[v.name] + rng.normal(size=np.shape(start[v.name]))
                       for v in inputs] for _ in range(3)]
            results[compiled, mode] = [function(*point) for point in points]
    reference = results[False, "NUMBA"]
    for key, values in results.items():
        for got, expected in zip(values, reference, strict=True):
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-9, err_msg=str(key))


def test_intercept_draws_follow_the_exact_conditional() -> None:
    """Mean and covariance of many draws against the dense Gaussian conditional of
    (prefecture, county) intercepts given y."""
    design, equation = tiny_design("(1|prefecture) + (1|county)", n=40, seed=3)
    theta, sigma, tau_c, tau_p = np.array([0.2, 0.4, -0.1]), 0.6, 0.5, 0.7
    county, prefecture = design.index["county_code"], design.index["prefecture_code"]
    n_c, n_p = len(design.levels["county_code"]), len(design.levels["prefecture_code"])
    # dense: u = (prefecture, county) ~ N(0, D); y - Z theta = W u + e
    W = np.zeros((len(county), n_p + n_c))
    W[np.arange(len(county)), prefecture] = 1
    W[np.arange(len(county)), n_p + county] = 1
    prior_precision = np.diag([1 / tau_p**2] * n_p + [1 / tau_c**2] * n_c)
    precision = prior_precision + W.T @ W / sigma**2
    covariance = np.linalg.inv(precision)
    residual = equation.y - standardised_design(equation) @ theta
    mean = covariance @ W.T @ residual / sigma**2

    draws = 40_000
    out = draw_intercepts(design, "log_amount_raised", np.tile(theta, (draws, 1)),
                          np.full(draws, sigma), np.full(draws, tau_c), np.full(draws, tau_p),
                          np.random.default_rng(1))
    sample = np.hstack([out["prefecture"], out["county"]])
    standard_error = np.sqrt(np.diag(covariance) / draws)
    assert np.all(np.abs(sample.mean(axis=0) - mean) < 5 * standard_error)
    assert np.cov(sample, rowvar=False) == pytest.approx(covariance, abs=0.02)


@pytest.mark.parametrize("form", ["marginal", "explicit"])
def test_folded_sds_give_the_halfnormal_posterior(form: str, monkeypatch) -> None:
    """Group sds are sampled signed (Normal prior) and saved as their absolute values. The
    log density equals that of the same model with HalfNormal sds at the absolute values
    (the non-centred z's with the sd's sign), up to log 2 per sd: the posterior is the same,
    whatever the signs."""
    from fundgap import build

    name = "log_amount_raised"
    design, _ = tiny_design("(1|prefecture) + (1|county)")
    marginal = [name] if form == "marginal" else []
    folded = build.build_model(design, marginal=marginal)
    unfolded_sds = build._group_sds
    monkeypatch.setattr(build, "_group_sds",
                        lambda equation, scale, folded: unfolded_sds(equation, scale, ()))
    halfnormal = build.build_model(design, marginal=marginal)
    assert {v.name for v in halfnormal.free_RVs} & {f"county_sd_{name}",
                                                     f"prefecture_sd_{name}"}
    folded_logp = folded.compile_logp(jacobian=False)
    halfnormal_logp = halfnormal.compile_logp(jacobian=False)
    rng = np.random.default_rng(3)
    for _ in range(4):
        point = {f"alpha_{name}": rng.normal(), f"beta_std_{name}": rng.normal(size=2),
                 f"sigma_{name}_log__": rng.normal(scale=0.5)}
        reference = dict(point)
        for dim in ("county", "prefecture"):
            sd, sign = abs(rng.normal(scale=0.5)), rng.choice([-1.0, 1.0])
            point[f"signed_{dim}_sd_{name}"] = sign * sd
            reference[f"{dim}_sd_{name}_log__"] = np.log(sd)
            if form == "explicit":
                z = rng.normal(size=len(design.levels[f"{dim}_code"]))
                point[f"{dim}_z_{name}"], reference[f"{dim}_z_{name}"] = z, sign * z
        assert folded_logp(point) == pytest.approx(halfnormal_logp(reference) - 2 * np.log(2),
                                                   abs=1e-9)
    # the saved sd is the absolute value of the signed one
    saved = folded[f"county_sd_{name}"].eval({folded[f"signed_county_sd_{name}"]: -0.7})
    assert saved == pytest.approx(0.7)
