"""fundgap.sampling.compile_cache: a model compiled once is loaded, not compiled, by a later fit."""

from __future__ import annotations

import os

import numpy as np
import pymc as pm
import pytest

import fundgap.sampling.compile_cache as compile_cache
import fundgap.sampling.sample as sampling
from fundgap.build import build_model
from fundgap.design import build_design
from fundgap.sampling.callbacks import graph_key
from fundgap.sampling.sample import _compile, sample
from fundgap.spec import parse_spec

from conftest import GROUPED_COLUMNS, grouped_spec_text, grouped_table

STRUCTURE = ("test", "one equation")


def _model(shift: float = 0.0, group: np.ndarray | None = None) -> pm.Model:
    """A small model with data as pm.Data (as the marginalised form's), observed values
    and group indices as constants (as the explicit form's)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    group = np.repeat([0, 1], 20) if group is None else group
    with pm.Model(coords={"term": ["a", "b"], "group": [0, 1]}) as model:
        x_data = pm.Data("x", x)
        beta = pm.Normal("beta", 0.0, 1.0, dims="term")
        sigma = pm.HalfNormal("sigma", 1.0)
        effect = pm.Normal("effect", 0.0, 0.1, dims="group")
        pm.Deterministic("scaled", beta * 2.0, dims="term")
        pm.Normal("y_obs", beta[0] + beta[1] * x_data + effect[group], sigma,
                  observed=1.0 + 0.5 * x + rng.normal(0.0, 0.3, size=40) + shift)
    return model


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNDGAP_COMPILE_CACHE", str(tmp_path))
    return tmp_path


def _fit(model: pm.Model):
    return sample(model, draws=100, tune=100, chains=2, seed=5, progress=False,
                  structure=STRUCTURE)


def test_second_compile_is_loaded_with_the_same_draws(folder) -> None:
    first = _fit(_model())
    assert first.compile_cache == "stored"
    assert len(list(folder.glob("*.pkl"))) == 1
    assert list(compile_cache.callbacks_dir(folder).glob("*logp_callback*.nbc"))
    # a model built afresh, as a new process builds it
    compiled, outcome = _compile(_model(), STRUCTURE, frozen=True)
    assert outcome == "hit"
    assert compiled.compiled_logp_func.cache_hits  # numba loaded the callback too
    second = _fit(_model())
    assert second.compile_cache == "hit"
    for name in ("beta", "sigma", "scaled"):
        np.testing.assert_array_equal(first.idata.posterior[name].values,
                                      second.idata.posterior[name].values)


def test_a_log_density_pytensor_does_not_cache(folder) -> None:
    # PyTensor's numba backend gives no cache key to the negative binomial's log density:
    # its rewritten functions are still kept, its callbacks are not (numba's code for them
    # goes to a folder of this process's own)
    rng = np.random.default_rng(1)

    def counts() -> pm.Model:
        with pm.Model() as model:
            mu = pm.Normal("mu", 0.0, 1.0)
            alpha = pm.Exponential("alpha", 1.0)
            pm.NegativeBinomial("y", mu=pm.math.exp(mu), alpha=alpha,
                                observed=rng.poisson(3, 30))
        return model

    model = counts()
    compiled, outcome = _compile(model, STRUCTURE, frozen=True)
    assert outcome == "stored" and graph_key(compiled.logp_func.vm.jit_fn) is None
    first, second = _fit(model), _fit(model)
    assert (first.compile_cache, second.compile_cache) == ("hit", "hit")
    np.testing.assert_array_equal(first.idata.posterior["mu"].values,
                                  second.idata.posterior["mu"].values)
    assert not list(compile_cache.callbacks_dir(folder).glob("*logp_callback*"))


def _inputs_model(shift: float = 0.0) -> pm.Model:
    """Every number as pm.Data, as in the marginalised form."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    with pm.Model(coords={"term": ["a", "b"]}) as model:
        x_data = pm.Data("x", x)
        y_data = pm.Data("y", 1.0 + 0.5 * x + rng.normal(0.0, 0.3, size=40) + shift)
        beta = pm.Normal("beta", 0.0, 1.0, dims="term")
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y_obs", beta[0] + beta[1] * x_data, sigma, observed=y_data)
    return model


def test_data_as_inputs_serve_other_data_in_a_later_process(folder, monkeypatch) -> None:
    monkeypatch.setattr(sampling, "_COMPILED", {})

    def fit(model):
        return sample(model, draws=100, tune=100, chains=2, seed=5, progress=False,
                      structure=STRUCTURE, data_as_inputs=True, keep_compiled=True)

    assert fit(_inputs_model()).compile_cache == "stored"
    sampling._COMPILED.clear()  # as in a new process
    moved = fit(_inputs_model(shift=2.0))
    assert moved.compile_cache == "hit"
    assert compile_cache.model_key(_inputs_model(), STRUCTURE, data_values=False) == \
        compile_cache.model_key(_inputs_model(shift=2.0), STRUCTURE, data_values=False)
    # the loaded model sampled the new data: the same draws as one compiled for them
    sampling._COMPILED.clear()
    monkeypatch.setenv("FUNDGAP_COMPILE_CACHE", "")
    fresh = fit(_inputs_model(shift=2.0))
    assert fresh.compile_cache == "off"
    np.testing.assert_array_equal(moved.idata.posterior["beta"].values,
                                  fresh.idata.posterior["beta"].values)
    assert 2.8 < float(moved.idata.posterior["beta"].sel(term="a").mean()) < 3.2


def test_other_data_is_another_entry(folder) -> None:
    assert compile_cache.model_key(_model(), STRUCTURE) == compile_cache.model_key(
        _model(), STRUCTURE)
    assert compile_cache.model_key(_model(), STRUCTURE) != compile_cache.model_key(
        _model(shift=1e-9), STRUCTURE)
    assert compile_cache.model_key(_model(), STRUCTURE) != compile_cache.model_key(
        _model(), ("another structure",))
    swapped = np.repeat([1, 0], 20)
    assert compile_cache.model_key(_model(), STRUCTURE) != compile_cache.model_key(
        _model(group=swapped), STRUCTURE)
    first, moved = _fit(_model()), _fit(_model(shift=2.0))
    assert (first.compile_cache, moved.compile_cache) == ("stored", "stored")
    # the shifted data moved the intercept: the second fit did not reuse the first's graph
    shift = (moved.idata.posterior["beta"].sel(term="a").mean()
             - first.idata.posterior["beta"].sel(term="a").mean())
    assert 1.8 < float(shift) < 2.2


def test_a_broken_entry_is_compiled_again(folder) -> None:
    key = compile_cache.model_key(_model(), STRUCTURE)
    (folder / f"{key}.pkl").write_bytes(b"not a pickle")
    assert _fit(_model()).compile_cache == "stored"
    assert _fit(_model()).compile_cache == "hit"


def test_switched_off_or_without_a_key(folder, monkeypatch) -> None:
    assert sample(_model(), draws=50, tune=50, chains=1, progress=False).compile_cache == "off"
    monkeypatch.setenv("FUNDGAP_COMPILE_CACHE", "")
    assert compile_cache.cache_dir() is None
    assert _fit(_model()).compile_cache == "off"
    assert not list(folder.iterdir())


def test_a_folder_that_cannot_be_written_costs_only_time(tmp_path, monkeypatch) -> None:
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("FUNDGAP_COMPILE_CACHE", str(tmp_path / "a file" / "cache"))
    result = _fit(_model())
    assert result.compile_cache == "not stored (NotADirectoryError)"
    assert result.idata.posterior["beta"].sizes == {"chain": 2, "draw": 100, "term": 2}


def test_only_the_newest_entries_are_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(compile_cache, "MAX_ENTRIES", 2)
    for number in range(3):
        compile_cache._store(tmp_path / f"{number}.pkl", (number,))
        os.utime(tmp_path / f"{number}.pkl", (number + 1.0, number + 1.0))
    assert sorted(p.name for p in tmp_path.glob("*.pkl")) == ["1.pkl", "2.pkl"]
    assert compile_cache._load(tmp_path / "2.pkl") == (2,)
    # numba's callback files: an index and its data per key, two keys per model
    callbacks = compile_cache.callbacks_dir(tmp_path)
    callbacks.mkdir()
    for number in range(5):
        for suffix in ("nbi", "1.nbc"):
            file = callbacks / f"string.logp_callback-key{number}.py311.{suffix}"
            file.write_bytes(b"")
            os.utime(file, (number + 1.0, number + 1.0))
    compile_cache._prune(tmp_path)
    kept = sorted(p.name.split(".py")[0] for p in callbacks.iterdir())
    assert kept == [f"string.logp_callback-key{n}" for n in (1, 1, 2, 2, 3, 3, 4, 4)]


def test_installed_nutpie_is_supported() -> None:
    # otherwise every fit silently compiles afresh
    assert compile_cache.supported()


def test_a_laplace_model_is_loaded_with_the_same_draws_and_no_rewrite_reports(
        folder, caplog) -> None:
    # the mode search is a Scan whose unpickled inner graph PyTensor rewrites again as it
    # relinks it: with the state PyTensor's pickling drops restored, no rewrite fails, and
    # the loaded model samples as the fresh one
    def laplace_model() -> pm.Model:
        table = grouped_table("negative_binomial", 200, 30, 5, seed=2)
        spec = parse_spec(grouped_spec_text("negative_binomial"), "nb.toml", GROUPED_COLUMNS)
        return build_model(build_design(spec, table), laplace=("y",))

    def fit():
        return sample(laplace_model(), draws=50, tune=50, chains=1, seed=5, progress=False,
                      structure=("test", "laplace"))

    first = fit()
    assert first.compile_cache == "stored"
    with caplog.at_level("ERROR", logger="pytensor.graph.rewriting.basic"):
        second = fit()
    assert second.compile_cache == "hit"
    assert not [r for r in caplog.records if "Rewrite failure" in r.getMessage()]
    np.testing.assert_array_equal(first.idata.posterior["county_sd_y"].values,
                                  second.idata.posterior["county_sd_y"].values)
