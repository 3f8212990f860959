"""The one place a sampler is called: nutpie (default), PyMC's NUTS, or numpyro (JAX).

Returns the InferenceData of the posterior and sample stats, plus the seconds spent
compiling and sampling. The same seed gives the same draws with the same backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import arviz as az
import pymc as pm

from fundgap.errors import FundgapError

BACKENDS = ("nutpie", "pymc", "numpyro")


@dataclass
class SampleResult:
    """Draws and what they cost."""

    idata: az.InferenceData
    backend: str
    compile_seconds: float
    sample_seconds: float


def sample(model: pm.Model, backend: str = "nutpie", draws: int = 1000, tune: int = 1000,
           chains: int = 4, seed: int = 20250, progress: bool = True) -> SampleResult:
    """Sample `model` with the chosen backend."""
    if backend not in BACKENDS:
        raise FundgapError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    if backend == "nutpie":
        import nutpie

        start = time.perf_counter()
        compiled = nutpie.compile_pymc_model(model)
        compiled_at = time.perf_counter()
        idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                              progress_bar=progress, save_warmup=False)
        return SampleResult(idata, backend, compiled_at - start,
                            time.perf_counter() - compiled_at)
    if backend == "numpyro":
        try:
            import numpyro  # noqa: F401
        except ImportError:
            raise FundgapError("the numpyro backend needs JAX and numpyro: "
                               "pip install 'fundgap[jax]'") from None
    start = time.perf_counter()
    with model:
        idata = pm.sample(draws=draws, tune=tune, chains=chains, random_seed=seed,
                          nuts_sampler=backend, progressbar=progress,
                          compute_convergence_checks=False)
    # PyMC compiles inside pm.sample; its time is counted as sampling time.
    return SampleResult(idata, backend, 0.0, time.perf_counter() - start)
