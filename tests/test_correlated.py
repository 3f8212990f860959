"""Correlated mediator errors: the joint marginal equals a dense multivariate normal, the LKJ
construction has the LKJ density, the intercepts are drawn from their exact conditional, and
a fit recovers a known correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest
from scipy.stats import multivariate_normal

from fundgap import names
from fundgap.bayesian import FitSettings, fit_model
from fundgap.correlated import (
    correlation_table,
    draw_intercepts,
    joint_marginal_loglik,
    joint_statistics,
    offsets,
)
from fundgap.design import build_design, group_dim
from fundgap.errors import SpecError
from fundgap.lkj import correlation_cholesky
from fundgap.marginal import marginal_loglik, standardised_design, sufficient_statistics
from fundgap.spec import parse_spec

MEDIATORS = ("m1", "m2", "m3")
LEVELS = ["(1|prefecture) + (1|county)", "(1|county)", "(1|prefecture)", ""]


def spec_text(levels: str, correlated: list[str] | None = None, m2_family: str = "gaussian"
              ) -> str:
    plus = f" + {levels}" if levels else ""
    listed = ", ".join(f'"{m}"' for m in (MEDIATORS if correlated is None else correlated))
    return f'''name = "t"
exposure = "development"
outcome = "y"
mediators = ["m1", "m2", "m3"]
correlated_errors = [{listed}]
[equations.m1]
formula = "m1 ~ development + male{plus}"
[equations.m2]
formula = "m2 ~ development{plus}"
family = "{m2_family}"
[equations.m3]
formula = "m3 ~ development + male{plus}"
[equations.y]
formula = "y ~ development + m1 + m2 + m3{plus}"
'''


def tiny_design(levels: str, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    county = rng.integers(0, 15, n)
    table = pd.DataFrame({
        "campaign_id": [f"c{i}" for i in range(n)],
        "county_code": [f"{110000 + c}" for c in county],
        "prefecture_code": [f"{120000 + c // 4}" for c in county],
        "development": rng.standard_normal(n), "male": rng.integers(0, 2, n),
        **{m: rng.standard_normal(n) for m in (*MEDIATORS, "y")}})
    return build_design(parse_spec(spec_text(levels), columns=set(table.columns)), table)


def dense_loglik(design, thetas, sigma, tau_inner, tau_outer) -> float:
    """log N(y; mean, Sigma (x) I + T (x) [same inner] + W (x) [same outer]), stacked by
    equation."""
    n = design.rows
    mean = np.concatenate([standardised_design(design.equations[m]) @ t
                           for m, t in zip(MEDIATORS, thetas, strict=True)])
    y = np.concatenate([design.equations[m].y for m in MEDIATORS])
    covariance = np.kron(sigma, np.eye(n))
    groups = design.equations["m1"].groups
    for column, tau in zip(groups[::-1], (tau_inner, tau_outer), strict=False):
        same = design.index[column][:, None] == design.index[column][None, :]
        covariance += np.kron(np.diag(tau**2), same)
    return multivariate_normal(mean, covariance).logpdf(y)


def random_point(design, seed: int = 1):
    rng = np.random.default_rng(seed)
    thetas = [rng.standard_normal(len(design.equations[m].terms) + 1) for m in MEDIATORS]
    root = rng.standard_normal((3, 3))
    return thetas, root @ root.T + 0.5 * np.eye(3)


def joint_value(design, thetas, sigma, tau_inner, tau_outer) -> float:
    groups = design.equations["m1"].groups
    return float(joint_marginal_loglik(
        joint_statistics(design, MEDIATORS), [pt.as_tensor(t) for t in thetas],
        offsets(design, MEDIATORS), pt.as_tensor(np.linalg.cholesky(sigma)),
        pt.as_tensor(tau_inner) if groups else None,
        pt.as_tensor(tau_outer) if len(groups) == 2 else None).eval())


@pytest.mark.parametrize("levels", LEVELS)
def test_joint_marginal_equals_dense_normal(levels: str) -> None:
    design = tiny_design(levels)
    thetas, sigma = random_point(design)
    # a zero sd (a folded sd at its centre) included: the form takes it
    for tau_inner, tau_outer in [(np.array([0.5, 0.1, 0.8]), np.array([0.3, 0.9, 0.0])),
                                 (np.array([0.0, 1.5, 0.2]), np.array([1.1, 0.05, 0.4]))]:
        groups = design.equations["m1"].groups
        dense = dense_loglik(design, thetas, sigma, tau_inner if groups else None,
                             tau_outer if len(groups) == 2 else None)
        ours = joint_value(design, thetas, sigma, tau_inner, tau_outer)
        assert ours == pytest.approx(dense, abs=1e-8)


def test_uncorrelated_errors_give_the_sum_of_the_independent_marginals() -> None:
    design = tiny_design("(1|prefecture) + (1|county)")
    thetas, _ = random_point(design)
    sigmas, tau_inner, tau_outer = np.array([0.7, 1.2, 0.4]), np.array([0.3, 0.6, 0.1]), \
        np.array([0.5, 0.2, 0.9])
    independent = sum(marginal_loglik(sufficient_statistics(design, m), theta, s, ti, to)
                      for m, theta, s, ti, to in zip(MEDIATORS, thetas, sigmas, tau_inner,
                                                     tau_outer, strict=True))
    joint = joint_value(design, thetas, np.diag(sigmas**2), tau_inner, tau_outer)
    assert joint == pytest.approx(independent, abs=1e-9)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_the_cholesky_construction_has_the_lkj_density(size: int) -> None:
    """Its log density minus (eta - 1) log det R minus the log Jacobian of x -> the
    correlations (finite differences) is one constant over the space: the LKJ density."""
    eta = 2.0
    x = pt.vector("x")
    factor, log_density = correlation_cholesky(x, size, eta)
    correlation = factor @ factor.T
    rows, columns = np.triu_indices(size, 1)
    evaluate = pytensor.function([x], [factor, log_density, correlation[rows, columns]])
    rng = np.random.default_rng(0)
    offsets_seen = []
    for _ in range(6):
        point = rng.normal(0, 0.8, size * (size - 1) // 2)
        chol, density, _ = evaluate(point)
        assert np.allclose(np.sum(chol**2, axis=1), 1.0)        # unit rows: a correlation
        assert np.all(np.diag(chol) > 0)
        step = 1e-6
        jacobian = np.column_stack([
            (evaluate(point + step * e)[2] - evaluate(point - step * e)[2]) / (2 * step)
            for e in np.eye(len(point))])
        lkj = (eta - 1) * np.log(np.linalg.det(chol @ chol.T))
        offsets_seen.append(density - lkj - np.log(abs(np.linalg.det(jacobian))))
    assert np.ptp(offsets_seen) < 1e-6


@pytest.mark.parametrize("levels", LEVELS[:3])
def test_intercepts_are_drawn_from_their_exact_joint_conditional(levels: str) -> None:
    """Given fixed parameters, the draws' mean and covariance match the dense Gaussian
    conditional of every equation's county and prefecture intercepts given the responses."""
    design = tiny_design(levels, n=40, seed=3)
    groups = design.equations["m1"].groups
    thetas, sigma = random_point(design, seed=4)
    sds = {groups[-1]: np.array([0.5, 0.3, 0.8])}
    if len(groups) == 2:
        sds[groups[0]] = np.array([0.6, 0.4, 0.2])
    draws = 20_000
    drawn = draw_intercepts(design, MEDIATORS, [np.tile(t, (draws, 1)) for t in thetas],
                            np.tile(sigma, (draws, 1, 1)),
                            np.tile(sds[groups[-1]], (draws, 1)),
                            np.tile(sds[groups[0]], (draws, 1)) if len(groups) == 2 else None,
                            np.random.default_rng(5))
    # dense: latent intercepts (each group's, per equation), y = mean + A latent + e
    n = design.rows
    codes = [design.index[group] for group in groups]
    sizes = [int(code.max()) + 1 for code in codes]
    width = sum(sizes)
    loading = np.zeros((3 * n, 3 * width))
    prior = np.zeros(3 * width)
    for k in range(3):
        rows, first = np.arange(k * n, (k + 1) * n), k * width
        for group, code, size in zip(groups, codes, sizes, strict=True):
            loading[rows, first + code] = 1.0
            prior[first:first + size] = sds[group][k] ** 2
            first += size
    residual = np.concatenate([design.equations[m].y - standardised_design(
        design.equations[m]) @ t for m, t in zip(MEDIATORS, thetas, strict=True)])
    noise_precision = np.kron(np.linalg.inv(sigma), np.eye(n))
    precision = np.diag(1 / prior) + loading.T @ noise_precision @ loading
    covariance = np.linalg.inv(precision)
    mean = covariance @ loading.T @ noise_precision @ residual
    ours = np.concatenate([np.column_stack([drawn[m][group_dim(group)] for group in groups])
                           for m in MEDIATORS], axis=1)
    se = np.sqrt(np.diag(covariance) / draws)
    assert np.max(np.abs(ours.mean(axis=0) - mean) / se) < 5
    assert np.allclose(np.cov(ours, rowvar=False), covariance, atol=0.03 * covariance.max())


def test_the_spec_names_what_is_wrong_with_correlated_errors() -> None:
    columns = {"development", "male", *MEDIATORS, "y", "county_code", "prefecture_code"}
    with pytest.raises(SpecError) as error:
        parse_spec(spec_text("(1|county)", ["m1", "y", "m1"], m2_family="poisson"),
                   columns=columns)
    message = str(error.value)
    assert "'y' is not a mediator" in message and "'m1' is named twice" in message
    with pytest.raises(SpecError, match="'m2' is poisson; correlated errors need gaussian"):
        parse_spec(spec_text("(1|county)", ["m1", "m2"], m2_family="poisson"),
                   columns=columns)
    with pytest.raises(SpecError, match="name two or more"):
        parse_spec(spec_text("(1|county)", ["m1"]), columns=columns)
    text = spec_text("(1|county)", ["m1", "m3"]).replace(
        'formula = "m3 ~ development + male + (1|county)"',
        'formula = "m3 ~ development + male + (1|prefecture)"')
    with pytest.raises(SpecError, match="the same \\(1\\|group\\) terms"):
        parse_spec(text, columns=columns)


def simulated_table(n: int = 1500, counties: int = 120, seed: int = 3) -> pd.DataFrame:
    """Two mediators with errors correlated 0.6 (sds 1 and 0.5) and independent county and
    prefecture intercepts (sds 0.4 and 0.3)."""
    rng = np.random.default_rng(seed)
    county = rng.integers(0, counties, n)
    prefecture = county // 6
    development = rng.standard_normal(n)
    county_level = rng.normal(0, 0.4, (counties, 2))
    prefecture_level = rng.normal(0, 0.3, (counties // 6 + 1, 2))
    sd = np.array([1.0, 0.5])
    errors = rng.multivariate_normal([0, 0], np.outer(sd, sd) * [[1, 0.6], [0.6, 1]], n)
    m1 = 0.5 * development + county_level[county, 0] + prefecture_level[prefecture, 0] \
        + errors[:, 0]
    m2 = -0.3 * development + county_level[county, 1] + prefecture_level[prefecture, 1] \
        + errors[:, 1]
    y = 0.2 * development + 0.4 * m1 + 0.6 * m2 + rng.normal(0, 0.5, counties)[county] \
        + rng.standard_normal(n)
    return pd.DataFrame({"campaign_id": [f"c{i}" for i in range(n)],
                         "county_code": county.astype(str),
                         "prefecture_code": prefecture.astype(str),
                         "development": development, "m1": m1, "m2": m2, "y": y})


TWO_MEDIATORS = '''name = "t"
exposure = "development"
outcome = "y"
mediators = ["m1", "m2"]
correlated_errors = ["m1", "m2"]
[equations.m1]
formula = "m1 ~ development + (1|prefecture) + (1|county)"
[equations.m2]
formula = "m2 ~ development + (1|prefecture) + (1|county)"
[equations.y]
formula = "y ~ development + m1 + m2 + (1|prefecture) + (1|county)"
'''


def test_a_fit_recovers_the_error_correlation_and_keeps_every_variable() -> None:
    table = simulated_table()
    spec = parse_spec(TWO_MEDIATORS, columns=set(table.columns))
    # 4 x 1000: at 4 x 400 the largest R-hat lay at 1.006-1.011 over seeds, on the gate's
    # bar, so any change of the arithmetic's rounding could fail it by chance
    result = fit_model(spec, table, FitSettings(draws=1000, tune=400, progress=False))
    assert result.diagnostics["passed"], result.diagnostics["reasons"]
    assert result.record["correlated_errors"] == ["m1", "m2"]
    summary = result.summary
    correlation = summary.loc[f"{names.ERROR_CORRELATION}[m1, m2]"]
    assert bool(correlation["reported"])
    assert abs(correlation["mean"] - 0.6) < 3 * correlation["sd"]
    for name, truth in [("sigma_m1", 1.0), ("sigma_m2", 0.5), ("county_sd_m1", 0.4),
                        ("county_sd_m2", 0.4)]:
        assert abs(summary.loc[name, "mean"] - truth) < 3 * summary.loc[name, "sd"], name
    posterior = result.idata.posterior
    for equation in ("m1", "m2"):
        for dim in ("county", "prefecture"):
            assert posterior[names.group_intercept(dim, equation)].dims == (
                "chain", "draw", dim)
    assert names.ERROR_CHOLESKY not in posterior
    a = result.effects.set_index(["effect", "mediator"]).loc["a"]
    assert abs(a.loc["m1", "mean"] - 0.5) < 3 * a.loc["m1", "sd"]
    # the frequentist figure beside it: the OLS residuals' correlation, as numpy has it
    residuals = [e.y - standardised_design(e) @ np.linalg.lstsq(
        standardised_design(e), e.y, rcond=None)[0]
        for e in (result.design.equations["m1"], result.design.equations["m2"])]
    ols = result.record["ols_error_correlation"]["m1, m2"]
    assert ols == pytest.approx(np.corrcoef(residuals)[0, 1], abs=1e-10)
    shown = correlation_table(result.summary, result.record)
    assert shown.to_dict("records") == [{
        "errors of": "m1, m2", "posterior mean": f"{correlation['mean']:.3f}",
        "95% interval": f"[{correlation['hdi_2.5%']:.3f}, {correlation['hdi_97.5%']:.3f}]",
        "R-hat": f"{correlation['r_hat']:.3f}",
        "bulk ESS": f"{correlation['ess_bulk']:,.0f}", "OLS residuals": f"{ols:.3f}"}]


@pytest.mark.parametrize("levels", LEVELS)
def test_the_compiled_kernel_equals_the_graph_in_value_and_gradient(levels: str) -> None:
    """fundgap.correlated_kernel's one operation against the PyTensor graph it replaces,
    through PyTensor's numba backend and through `perform`, at random points (mediators
    with different designs, so each block of coefficients is checked)."""
    from fundgap.correlated_kernel import JointGaussianMarginal

    design = tiny_design(levels)
    stats = joint_statistics(design, MEDIATORS)
    starts = offsets(design, MEDIATORS)
    groups = design.equations["m1"].groups
    theta, factor = pt.vector("theta"), pt.matrix("factor")
    tau_inner, tau_outer = pt.vector("tau_inner"), pt.vector("tau_outer")
    parts = [theta[starts[k]:starts[k + 1]] for k in range(3)]
    graph = joint_marginal_loglik(stats, parts, starts, factor,
                                  tau_inner if groups else None,
                                  tau_outer if len(groups) == 2 else None)
    op = JointGaussianMarginal(len(groups), tuple(starts))(
        theta, factor @ factor.T, tau_inner, tau_outer,
        *(getattr(stats, key) for key in JointGaussianMarginal.STATISTICS))[0]
    inputs = [theta, factor, tau_inner, tau_outer]

    def function(output, mode=None):
        return pytensor.function(inputs, [output, *pytensor.grad(
            output, inputs, disconnected_inputs="ignore")], on_unused_input="ignore",
            mode=mode)

    reference = function(graph)
    rng = np.random.default_rng(2)
    for mode in ("NUMBA", "FAST_COMPILE"):
        compiled = function(op, mode)
        for _ in range(3):
            point = [rng.standard_normal(starts[-1]),
                     np.tril(rng.standard_normal((3, 3))) + 2 * np.eye(3),
                     rng.normal(0, 0.7, 3), rng.normal(0, 0.7, 3)]
            for ours, expected in zip(compiled(*point), reference(*point), strict=True):
                np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10)


def test_a_compiled_model_is_reused_with_another_data_set() -> None:
    """A batch or simulation study keeps the compiled model (its data as pm.Data) and swaps
    the data: the second data set's draws equal those of a fit compiled for it alone."""
    first, second = simulated_table(seed=3), simulated_table(seed=4)
    spec = parse_spec(TWO_MEDIATORS, columns=set(first.columns))
    settings = FitSettings(draws=100, tune=100, chains=2, progress=False, reuse_compiled=True)
    fit_model(spec, first, settings)
    reused = fit_model(spec, second, settings)
    alone = fit_model(spec, second, FitSettings(draws=100, tune=100, chains=2,
                                                progress=False))
    assert reused.diagnostics["compile_cache"] == "in process"
    for name in ("error_correlation", "sigma_m1", "county_sd_m2"):
        np.testing.assert_allclose(reused.idata.posterior[name].values,
                                   alone.idata.posterior[name].values, rtol=1e-8)


def test_prior_draws_are_lkj_in_the_samplers_coordinates() -> None:
    """`lkj_unconstrained_draws` gives the sampler's unconstrained values of LKJ(2)
    correlations: mapped forward, each correlation's marginal is the LKJ one (a Beta(eta - 1
    + K/2) on (-1, 1), Kolmogorov-Smirnov), and the map forward inverts the draw's own
    construction (round trip to 1e-10)."""
    from scipy import stats

    from fundgap.lkj import LKJ_ETA, lkj_unconstrained_draws, unconstrained_values

    size = 3
    draws = lkj_unconstrained_draws(size, np.random.default_rng(7), (2000,))
    assert draws.shape == (2000, 3)
    x = pt.vector("x")
    factor, _ = correlation_cholesky(x, size)
    forward = pytensor.function([x], factor @ factor.T)
    correlations = np.array([forward(d)[np.triu_indices(size, 1)] for d in draws])
    shape = LKJ_ETA - 1 + size / 2
    for pair in range(3):
        assert stats.kstest((correlations[:, pair] + 1) / 2, stats.beta(shape, shape).cdf
                            ).pvalue > 0.001
    # the inverse: from a correlation to the values the construction maps back to it
    root = np.random.default_rng(8).standard_normal((4, 4))
    covariance = root @ root.T + 0.3 * np.eye(4)
    correlation = covariance / np.sqrt(np.outer(np.diag(covariance), np.diag(covariance)))
    y = pt.vector("y")
    factor4, _ = correlation_cholesky(y, 4)
    np.testing.assert_allclose(pytensor.function([y], factor4 @ factor4.T)(
        unconstrained_values(correlation)), correlation, atol=1e-10)
