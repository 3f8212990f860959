"""The one place a sampler is called: nutpie (default; its log density compiled by numba, or
by JAX with `nutpie-jax`, for a GPU), PyMC's NUTS, or numpyro (JAX).

Returns the InferenceData of the posterior and sample stats, plus the seconds spent
compiling and sampling. The same seed gives the same draws with the same backend.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import arviz as az
import pymc as pm
from pymc.model.transform.optimization import freeze_dims_and_data

from fundgap.defaults import BACKENDS, SAMPLER
from fundgap.errors import FundgapError
from fundgap.sampling.callbacks import loop_copy_callbacks
from fundgap.sampling.compile_cache import cache_dir, cached_functions, callbacks_dir, model_key
from fundgap.sampling.warm_start import WarmStart, laplace_start


@dataclass
class SampleResult:
    """Draws and what they cost."""

    idata: az.InferenceData
    backend: str
    compile_seconds: float
    sample_seconds: float
    # what the compile cache did: "hit", "stored", "in process", "off"
    # (fundgap.sampling.compile_cache)
    compile_cache: str = "off"
    # numpyro: where its chains started (fundgap.sampling.warm_start.WarmStart.record)
    warm_start: dict | None = None


# nutpie models compiled in this process, by structure: a batch of refits or a repeated
# fit compiles once and swaps the data in.
_COMPILED: dict[tuple, object] = {}
# one compilation at a time: fundgap.sampling.callbacks swaps nutpie's callback factories
# while it compiles, so fits in threads (fundgap.robustness) compile in turn, then sample
# side by side
_COMPILING = threading.Lock()


def _data_values(model: pm.Model) -> dict[str, object]:
    return {var.name: var.get_value() for var in model.data_vars}


def sample(model: pm.Model, backend: str = "nutpie", draws: int = 1000, tune: int = 1000,
           chains: int = 4, seed: int = 20250, progress: bool = True,
           structure: tuple | None = None, data_as_inputs: bool = False,
           keep_compiled: bool = False,
           target_accept: float = float(SAMPLER["target_accept"])) -> SampleResult:
    """Sample `model` with the chosen backend.

    With nutpie, a model with a `structure` (what fixes its graph, given fundgap's code) goes
    through the compile cache on disk (fundgap.sampling.compile_cache). It is compiled with its data
    frozen into the graph, which compiles several times faster (benchmarks/README.md) and
    samples faster, and a later process fitting the same model on
    the same data loads it. Where its data all enter as pm.Data (`data_as_inputs`), a model
    compiled earlier in this process for the same structure is reused with this model's
    data; and with `keep_compiled` it is compiled with the data as inputs and kept for later
    fits, in this process and on disk for any data of that layout. `target_accept` is the
    step size adaptation's target acceptance rate, the same for every backend.
    """
    if backend not in BACKENDS:
        raise FundgapError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    if backend in ("nutpie", "nutpie-jax"):
        import nutpie

        start = time.perf_counter()
        reusable = structure is not None and data_as_inputs
        with _COMPILING:
            if backend == "nutpie-jax":
                compiled, cache = _compile_jax(model), "off"
            elif reusable and structure in _COMPILED:
                compiled = _COMPILED[structure].with_data(**_data_values(model))
                cache = "in process"
            elif reusable and keep_compiled:
                compiled, cache = _compile(model, structure, frozen=False)
                _COMPILED[structure] = compiled
            else:
                compiled, cache = _compile(model, structure, frozen=True)
        compiled_at = time.perf_counter()
        with _noticing_interrupts() as interrupted, _ONE_BLAS_THREAD:
            idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                                  progress_bar=progress, save_warmup=False,
                                  target_accept=target_accept)
        if interrupted:
            raise KeyboardInterrupt("sampling was interrupted")
        _require_all_draws(idata, draws)
        return SampleResult(idata, backend, compiled_at - start,
                            time.perf_counter() - compiled_at, cache)
    if backend == "numpyro":
        _require_jax(backend, "numpyro")
    start = time.perf_counter()
    kwargs, warm_start = {}, None
    if backend == "numpyro":
        warm_start = laplace_start(model, chains, seed)
        kwargs = _jax_kwargs(chains, warm_start)
    with model:
        idata = pm.sample(draws=draws, tune=tune, chains=chains, random_seed=seed,
                          cores=min(chains, os.cpu_count() or 1), nuts_sampler=backend,
                          progressbar=progress, compute_convergence_checks=False,
                          target_accept=target_accept, **kwargs)
    _require_all_draws(idata, draws)
    # PyMC compiles inside pm.sample; its time is counted as sampling time (and the warm
    # start's, which it records apart).
    return SampleResult(idata, backend, 0.0, time.perf_counter() - start,
                        warm_start=warm_start and warm_start.record())


class _OneBlasThread:
    """While any fit in this process samples with nutpie, BLAS runs one thread per call.

    nutpie runs a thread per chain, and each gradient's matrix products would start
    OpenBLAS's own threads on the same cores, which spin against the chains' threads: many
    times slower than one thread for the correlated errors' kernel on large data
    (benchmarks/README.md, "one BLAS thread while sampling"). A count, not a plain context,
    because robustness variants sample two at a time in threads: the limit is lifted when
    the last one ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limit = None

    def __enter__(self) -> None:
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._users == 0:
                self._limit = threadpool_limits(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


_ONE_BLAS_THREAD = _OneBlasThread()


@contextlib.contextmanager
def _noticing_interrupts() -> Iterator[list[int]]:
    """Record a SIGINT or SIGTERM that arrives inside the block, then let it do what it did.

    nutpie swallows the KeyboardInterrupt and returns the draws so far, which may be all of
    them when the signal comes as the chains finish; the caller must still stop there.
    Yields a list that holds the signal numbers received (empty: none)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def notice(signum: int, frame: object) -> None:
        handler = previous[signum]
        if handler == signal.SIG_IGN:
            return
        received.append(signum)
        if callable(handler):
            handler(signum, frame)
        elif signum == signal.SIGTERM:      # the default: end the process, as without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        else:
            raise KeyboardInterrupt

    for signum in previous:
        signal.signal(signum, notice)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _require_all_draws(idata: az.InferenceData, draws: int) -> None:
    """Raise KeyboardInterrupt where the sampler returned fewer draws than asked for: nutpie
    answers Ctrl-C (or fundgap's SIGTERM handler) by returning the draws so far, and a fit
    must not go on to be written from them as if it were complete."""
    posterior = getattr(idata, "posterior", None)
    got = 0 if posterior is None else int(posterior.sizes.get("draw", 0))
    if got < draws:
        raise KeyboardInterrupt(f"sampling was interrupted after {got} of {draws} draws")


def _compile(model: pm.Model, structure: tuple | None, frozen: bool) -> tuple[object, str]:
    """Compile `model` with its data frozen into the graph, or as inputs; with a
    `structure`, through the compile cache on disk (keyed by the data's values when frozen,
    by their layout when not). Returns the compiled model and what the cache did."""
    import nutpie

    folder = cache_dir() if structure is not None else None
    key = None
    if folder is not None:
        key = model_key(model, structure, data_values=frozen)
    with (loop_copy_callbacks(cache_dir=folder and callbacks_dir(folder)) as ours,
          cached_functions(key, folder) as outcome):
        # numba caches our callbacks only; nutpie's own would be cached under a new key
        # in every process
        options = {"cache": True} if ours and folder is not None else {}
        compiled = nutpie.compile_pymc_model(freeze_dims_and_data(model) if frozen else model,
                                             **options)
    if not frozen and outcome["compile_cache"] == "hit":  # compiled with another's data
        compiled = compiled.with_data(**_data_values(model))
    return compiled, outcome["compile_cache"]


def _compile_jax(model: pm.Model) -> object:
    """nutpie's model with the log density and gradient written in JAX (on a GPU where JAX
    has one), its data frozen in. JAX compiles it at the first call, inside sampling.
    nutpie runs each chain in its own thread and calls the density once per leapfrog step,
    so chains are not vectorised as numpyro's are; its mass matrix adaptation, which
    learns from gradients as well as draws, needs far fewer steps while warming up (on the
    count-mediator model at 20,000 campaigns, benchmarks/README.md)."""
    import nutpie

    _require_jax("nutpie-jax", "jax")
    return nutpie.compile_pymc_model(freeze_dims_and_data(model), backend="jax",
                                     gradient_backend="jax")


def _require_jax(backend: str, module: str) -> None:
    """A clear error where a JAX backend's package is not installed."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise FundgapError(f"the {backend} backend needs {module}: "
                           "pip install 'fundgap[jax]'") from None
    register_jax_erfcx()


@functools.cache
def register_jax_erfcx() -> None:
    """Give PyTensor's JAX backend erfcx (the censored lognormal's tail uses it), which it
    has only through tensorflow-probability: exp(x^2) erfc(x), and the asymptotic series
    where exp(x^2) would overflow (relative error below 1e-10 there)."""
    import jax
    import jax.numpy as jnp
    from pytensor.link.jax.dispatch import jax_funcify
    from pytensor.scalar.math import Erfcx

    @jax_funcify.register(Erfcx)
    def _erfcx(op, **kwargs):
        def erfcx(x):
            large = x > 25.0
            near = jnp.where(large, 0.0, x)
            far = jnp.where(large, x, 25.0)
            inverse2 = 1.0 / far**2
            series = (1 - inverse2 * (0.5 - inverse2 * (0.75 - 1.875 * inverse2))) / (
                far * jnp.sqrt(jnp.pi))
            return jnp.where(large, series, jnp.exp(near * near) * jax.scipy.special.erfc(near))

        return erfcx


def _jax_kwargs(chains: int, warm_start: WarmStart) -> dict:
    """pm.sample's arguments for numpyro: the chains start where `warm_start` says (no
    jitter on top), with its inverse mass matrix; one chain per device where there are
    enough (PyMC makes 100 CPU devices), else all chains vectorised on one device, as on a
    single GPU."""
    import jax
    import pymc.sampling.jax  # noqa: F401  (sets the CPU device count before JAX starts)

    method = "parallel" if jax.local_device_count() >= chains else "vectorized"
    return {"initvals": warm_start.initial_points,
            "nuts_sampler_kwargs": {
                "chain_method": method, "jitter": False,
                "nuts_kwargs": {"inverse_mass_matrix": warm_start.inverse_mass_matrix}}}
