"""numpyro's warm-up on the count-mediator model: from PyMC's initial point, or from the mode.

fundgap's numpyro backend starts its chains from a Laplace approximation at the posterior
mode, with its marginal variances as the initial inverse mass matrix
(fundgap/sampling/warm_start.py).
This runs numpyro's NUTS on the same JAX potential both ways and counts leapfrog steps, in
warm-up (where the million-campaign fit spent its time on an H100) and in sampling:

  pymc     PyMC's initial point jittered by U(-1, 1) per chain, identity mass matrix (what
           `pm.sample(nuts_sampler="numpyro")` does by default)
  laplace  fundgap's warm start

    python benchmarks/warm_start.py --size 50000 --tune 300 --draws 200 --chains 2

The table and spec are benchmarks/count_mediator.py's (mixed form: the Gaussian equations
marginalised, the count explicit). Prints one row per start: seconds to find the start,
warm-up and sampling seconds (each including its JIT compilation), mean leapfrog steps per
iteration over the first quarter of warm-up, all of it and sampling, divergences, and the
minimum bulk ESS and maximum R-hat over the free parameters (unconstrained). Steps, not
seconds, are what carry over to a GPU: a fit's sampling time is its steps times the cost of
one gradient (benchmarks/gradient_cost.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from count_mediator import count_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--starts", nargs="+", default=["pymc", "laplace"],
                        choices=("pymc", "laplace"))
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20250)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fundgap-count"))
    args = parser.parse_args()

    import pymc.sampling.jax  # noqa: F401  (sets the CPU device count before JAX starts)

    model, form, centred = count_model(args.size, args.work)
    print(f"{args.size:,} campaigns, form {form}, centred: {', '.join(centred) or 'none'}",
          flush=True)
    rows = [run(model, start, args) for start in args.starts]
    print(pd.DataFrame(rows).to_markdown(index=False))


def run(model, start: str, args: argparse.Namespace) -> dict:
    """numpyro's NUTS on `model` from one kind of `start`; a table row."""
    import arviz as az
    import jax
    import jax.numpy as jnp
    import pytensor
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import MCMC, NUTS
    from pymc.sampling.jax import get_jaxified_logp

    from fundgap.sampling.warm_start import laplace_start

    dtype = pytensor.config.floatX
    point = model.initial_point()
    flat0, unravel = ravel_pytree([jnp.asarray(point[v.name], dtype=dtype)
                                   for v in model.value_vars])
    started = time.perf_counter()
    if start == "laplace":
        warm = laplace_start(model, args.chains, args.seed)
        flat_starts, inverse_mass = warm.unconstrained, jnp.asarray(warm.inverse_mass_matrix)
    else:
        rng = np.random.default_rng(args.seed)
        flat_starts = np.asarray(flat0) + rng.uniform(-1, 1, (args.chains, flat0.size))
        inverse_mass = None
    start_s = time.perf_counter() - started
    init = jax.vmap(unravel)(jnp.asarray(flat_starts, dtype=dtype))
    kernel = NUTS(potential_fn=get_jaxified_logp(model, negative_logp=False),
                  inverse_mass_matrix=inverse_mass, target_accept_prob=0.8)
    method = "parallel" if jax.local_device_count() >= args.chains else "vectorized"
    mcmc = MCMC(kernel, num_warmup=args.tune, num_samples=args.draws,
                num_chains=args.chains, chain_method=method, progress_bar=False)
    key = jax.random.PRNGKey(args.seed)
    started = time.perf_counter()
    mcmc.warmup(key, init_params=init, extra_fields=("num_steps",), collect_warmup=True)
    warmup_steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps", "diverging"))
    fields = mcmc.get_extra_fields(group_by_chain=True)
    samples = mcmc.get_samples(group_by_chain=True)
    sample_s = time.perf_counter() - started
    draws = {f"v{i}": np.asarray(value) for i, value in enumerate(samples)}
    summary = az.summary(az.from_dict(posterior=draws), kind="diagnostics")
    quarter = max(1, args.tune // 4)
    return {"start": start, "chains": args.chains, "start_s": round(start_s, 1),
            "warmup_s": round(warmup_s, 1), "sample_s": round(sample_s, 1),
            "steps/iter, first quarter of warm-up": round(float(
                warmup_steps[:, :quarter].mean()), 1),
            "steps/iter, warm-up": round(float(warmup_steps.mean()), 1),
            "steps/draw": round(float(np.asarray(fields["num_steps"]).mean()), 1),
            "divergences": int(np.asarray(fields["diverging"]).sum()),
            "min bulk ESS": round(float(summary["ess_bulk"].min())),
            "max R-hat": round(float(summary["r_hat"].max()), 3)}


if __name__ == "__main__":
    main()
