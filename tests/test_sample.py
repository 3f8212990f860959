"""fundgap.sampling.sample and fundgap.sampling.warm_start: settings reach the sampler;
numpyro's chains start at the mode with the posterior's own scales."""

from __future__ import annotations

import sys

import numpy as np
import pymc as pm
import pytest

from fundgap.errors import FundgapError
from fundgap.sampling.sample import sample

N = 60
PRIOR_SD = 10.0
NOISE_SD = 0.5


def _regression(unknown_sigma: bool = False) -> tuple[pm.Model, np.ndarray, np.ndarray]:
    """A linear regression whose posterior (with the noise sd known) is exactly Gaussian:
    the model, and that posterior's mean and covariance of the two coefficients."""
    rng = np.random.default_rng(11)
    design = np.column_stack([np.ones(N), rng.normal(size=N)])
    y = design @ np.array([1.5, -0.7]) + rng.normal(0.0, NOISE_SD, size=N)
    with pm.Model(coords={"term": ["intercept", "slope"]}) as model:
        beta = pm.Normal("beta", 0.0, PRIOR_SD, dims="term")
        sigma = pm.HalfNormal("sigma", 1.0) if unknown_sigma else NOISE_SD
        pm.Normal("y", pm.math.dot(design, beta), sigma, observed=y)
    precision = design.T @ design / NOISE_SD**2 + np.eye(2) / PRIOR_SD**2
    covariance = np.linalg.inv(precision)
    return model, covariance @ design.T @ y / NOISE_SD**2, covariance


def test_target_accept_reaches_nutpie() -> None:
    model, _, _ = _regression(unknown_sigma=True)
    runs = {target: sample(model, draws=300, tune=300, chains=2, seed=3, progress=False,
                           target_accept=target).idata.sample_stats
            for target in (0.6, 0.95)}
    low, high = (float(runs[t]["step_size"].mean()) for t in (0.6, 0.95))
    assert high < 0.8 * low
    assert float(runs[0.95]["mean_tree_accept"].mean()) > 0.88
    assert float(runs[0.6]["mean_tree_accept"].mean()) < 0.8


def test_laplace_start_is_the_exact_posterior_of_a_gaussian_model() -> None:
    pytest.importorskip("jax")
    from fundgap.sampling.warm_start import laplace_start

    model, mean, covariance = _regression()
    start = laplace_start(model, chains=3, seed=7)
    assert start.converged and start.hessian == "positive definite"
    starts = np.array([point["beta"] for point in start.initial_points])
    assert starts.shape == (3, 2)
    # drawn from the Laplace approximation (here the posterior itself): apart, and within
    # a few posterior sds of its mean
    assert np.all(np.abs(starts - mean) < 5 * np.sqrt(np.diag(covariance)))
    assert len({tuple(row) for row in starts}) == 3
    np.testing.assert_allclose(start.inverse_mass_matrix, np.diag(covariance), rtol=1e-4)
    record = start.record()
    assert record["method"] == "laplace" and record["converged"] is True


def test_laplace_start_gives_constrained_values() -> None:
    pytest.importorskip("jax")
    from fundgap.sampling.warm_start import laplace_start

    model, _, _ = _regression(unknown_sigma=True)
    start = laplace_start(model, chains=2, seed=7)
    sigmas = [float(point["sigma"]) for point in start.initial_points]
    # sigma is sampled as log(sigma); the start is given as sigma itself, near the noise sd
    assert all(0.5 * NOISE_SD < s < 2 * NOISE_SD for s in sigmas)
    # numpyro's view: beta, then log(sigma), per chain
    assert start.unconstrained.shape == (2, 3)
    np.testing.assert_allclose(np.exp(start.unconstrained[:, 2]), sigmas, rtol=1e-6)
    assert start.inverse_mass_matrix.shape == (3,)
    assert np.all(start.inverse_mass_matrix > 0) and np.all(start.inverse_mass_matrix <= 1)


def test_laplace_start_leaves_a_folded_sd_off_its_saddle() -> None:
    """A folded county sd (sampled signed) has zero gradient at zero; with data that want a
    positive sd the mode search must start off it, or it stops on the saddle."""
    pytest.importorskip("jax")
    import pandas as pd

    from fundgap.build import build_model
    from fundgap.design import build_design
    from fundgap.sampling.warm_start import laplace_start
    from fundgap.spec import parse_spec

    rng = np.random.default_rng(5)
    county = np.repeat(np.arange(30), 10)
    table = pd.DataFrame({
        "campaign_id": [f"c{i}" for i in range(len(county))],
        "county_code": [f"{110000 + c}" for c in county],
        "prefecture_code": [f"{120000 + c // 5}" for c in county],
        "development": rng.standard_normal(len(county)),
        "log_amount_raised": rng.normal(0, 1.0, 30)[county] + rng.normal(0, 0.3, len(county)),
    })
    text = ('name = "t"\nexposure = "development"\noutcome = "log_amount_raised"\n'
            "[equations.log_amount_raised]\n"
            'formula = "log_amount_raised ~ development + (1|county)"')
    design = build_design(parse_spec(text, columns=set(table.columns)), table)
    model = build_model(design, marginal=["log_amount_raised"], compiled=False)  # JAX
    start = laplace_start(model, chains=3, seed=7)
    assert start.converged and start.hessian == "positive definite"
    sds = [abs(float(point["signed_county_sd_log_amount_raised"]))
           for point in start.initial_points]
    assert all(0.5 < sd < 2.0 for sd in sds)  # the truth is 1, the posterior sd about 0.13


@pytest.mark.parametrize("backend", ["numpyro", "nutpie-jax"])
def test_jax_backends_sample_the_exact_posterior(backend: str) -> None:
    pytest.importorskip("numpyro" if backend == "numpyro" else "jax")
    model, mean, covariance = _regression()
    result = sample(model, backend=backend, draws=500, tune=300, chains=2, seed=5,
                    progress=False)
    draws = result.idata.posterior["beta"].values.reshape(-1, 2)
    sds = np.sqrt(np.diag(covariance))
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 0.2 * sds)
    np.testing.assert_allclose(draws.std(axis=0), sds, rtol=0.15)
    assert int(result.idata.sample_stats["diverging"].sum()) == 0
    if backend == "numpyro":
        assert result.warm_start["converged"] is True


def test_nutpie_jax_gives_the_same_draws_for_the_same_seed() -> None:
    pytest.importorskip("jax")
    model, _, _ = _regression(unknown_sigma=True)
    first, second = (sample(model, backend="nutpie-jax", draws=50, tune=50, chains=2, seed=9,
                            progress=False).idata.posterior for _ in range(2))
    np.testing.assert_array_equal(first["beta"].values, second["beta"].values)


@pytest.mark.parametrize(("backend", "missing"), [("numpyro", "numpyro"),
                                                   ("nutpie-jax", "jax")])
def test_a_jax_backend_without_its_package_says_what_to_install(backend: str, missing: str,
                                                                 monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import` then raises ImportError
    model, _, _ = _regression()
    with pytest.raises(FundgapError, match=rf"the {backend} backend needs {missing}: "
                                           r"pip install 'fundgap\[jax\]'"):
        sample(model, backend=backend, draws=10, tune=10, chains=1, progress=False)


def test_jax_backends_have_erfcx_for_the_censored_lognormal() -> None:
    # PyTensor's JAX backend has erfcx only through tensorflow-probability
    pytest.importorskip("jax")
    import pytensor
    import pytensor.tensor as pt
    from scipy.special import erfcx

    from fundgap.sampling.sample import register_jax_erfcx

    register_jax_erfcx()
    x = pt.dvector("x")
    values = np.concatenate([np.linspace(-5, 5, 101), np.geomspace(1, 1e4, 50)])
    got = pytensor.function([x], pt.erfcx(x), mode="JAX")(values)
    np.testing.assert_allclose(got, erfcx(values), rtol=1e-10)


def _sample_through(monkeypatch, nutpie_sample) -> None:
    """sample() of a one-variable model, 2 x 100 draws, with nutpie.sample replaced by
    `nutpie_sample` and nothing compiled."""
    import nutpie

    import fundgap.sampling.sample as sample_module

    monkeypatch.setattr(nutpie, "sample", nutpie_sample)
    monkeypatch.setattr(sample_module, "_compile",
                        lambda model, structure, frozen: (object(), "off"))
    with pm.Model() as model:
        pm.Normal("x")
    sample_module.sample(model, draws=100, tune=10, chains=2, progress=False)


def test_an_interrupted_nutpie_run_is_not_taken_for_a_fit(monkeypatch) -> None:
    """nutpie answers Ctrl-C by returning the draws so far; sample() raises
    KeyboardInterrupt instead of handing them on as a complete fit."""
    import arviz as az

    partial = az.from_dict(posterior={"x": np.zeros((2, 40))})
    with pytest.raises(KeyboardInterrupt, match="after 40 of 100 draws"):
        _sample_through(monkeypatch, lambda *args, **kwargs: partial)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_as_the_chains_finish_still_stops_the_fit(monkeypatch, signum: str) -> None:
    """The signal arrives after the last draw: nutpie swallows the KeyboardInterrupt and
    returns every draw, and sample() must still stop rather than write the fit."""
    import contextlib
    import os
    import signal

    import arviz as az

    complete = az.from_dict(posterior={"x": np.zeros((2, 100))})

    def finishing(*args, **kwargs):
        with contextlib.suppress(KeyboardInterrupt):     # as nutpie does
            os.kill(os.getpid(), getattr(signal, signum))   # handled before kill returns
        return complete

    def command_line_handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt    # what fundgap.cli installs for SIGTERM

    terminate = signal.signal(signal.SIGTERM, command_line_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match="interrupted"):
            _sample_through(monkeypatch, finishing)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, terminate)


def test_blas_runs_one_thread_while_any_fit_samples() -> None:
    """nutpie's chain threads each call BLAS; OpenBLAS's own threads on top of them slow a
    gradient many times over. The limit holds while any of two concurrent fits samples and
    is lifted when the last one ends."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from fundgap.sampling.sample import _OneBlasThread

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    one = _OneBlasThread()
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        with one:
            assert blas_threads() == {1}
            with one:          # a second fit starts sampling
                assert blas_threads() == {1}
            assert blas_threads() == {1}   # the first still samples
        assert blas_threads() == {2}
