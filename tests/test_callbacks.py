"""fundgap.sampling.callbacks: nutpie's C callbacks with a loop copy give the same draws as
nutpie's."""

from __future__ import annotations

import numpy as np
import nutpie
import pymc as pm
from pymc.model.transform.optimization import freeze_dims_and_data

import fundgap.sampling.callbacks as callbacks


def _model() -> pm.Model:
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    with pm.Model(coords={"term": ["a", "b"]}) as model:
        beta = pm.Normal("beta", 0.0, 1.0, dims="term")
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Deterministic("scaled", beta * 2.0, dims="term")
        pm.Normal("y", beta[0] + beta[1] * x, sigma, observed=1.0 + 0.5 * x
                  + rng.normal(0.0, 0.3, size=40))
    return freeze_dims_and_data(model)


def _draws(loop_copy: bool):
    with callbacks.loop_copy_callbacks(loop_copy) as used:
        compiled = nutpie.compile_pymc_model(_model())
    idata = nutpie.sample(compiled, draws=100, tune=100, chains=2, seed=5, progress_bar=False)
    return used, idata


def test_installed_nutpie_is_supported() -> None:
    # otherwise every fit silently pays nutpie's slower compile
    assert callbacks.supported()


def test_loop_copy_gives_nutpies_draws() -> None:
    used, ours = _draws(True)
    stock_used, stock = _draws(False)
    assert used and not stock_used
    for name in ("beta", "sigma", "scaled"):
        np.testing.assert_array_equal(ours.posterior[name].values, stock.posterior[name].values)
    np.testing.assert_array_equal(ours.sample_stats["logp"].values,
                                  stock.sample_stats["logp"].values)


def test_factories_are_restored() -> None:
    module = callbacks._module()
    before = module._make_c_logp_func, module._make_c_expand_func
    with callbacks.loop_copy_callbacks():
        assert module._make_c_logp_func is callbacks._logp_callback
    assert (module._make_c_logp_func, module._make_c_expand_func) == before
