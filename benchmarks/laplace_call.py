"""The cost of one call of the compiled Laplace kernel (`fundgap.laplace_kernel`), by family
and size: value, gradient and the mode search that precedes them.

A non-Gaussian equation's share of a gradient is this call; sampling is (calls per draw) x
(this). The data are simulated with counties nested in 341 prefectures (two campaigns for
three counties, as in the study's data, up to 2,800 counties, about as many as the
count-mediator table holds at 20,000 and more), at a point near the truth:

    python benchmarks/laplace_call.py --sizes 2057 20000 200000

Prints a Markdown table: campaigns, counties, family, Newton steps, ms per call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from fundgap.laplace_jets import FAMILY_CODES
from fundgap.laplace_kernel import MAX_ITERATIONS, MAX_STEP, TOLERANCE, laplace_marginal


def problem(size: int, name: str, seed: int = 1) -> tuple:
    """laplace_marginal's arguments for `size` simulated campaigns of family `name`."""
    rng = np.random.default_rng(seed)
    n_outer = 341
    n_inner = min(2800, max(n_outer, int(0.67 * size)))
    parent = np.sort(np.concatenate([np.arange(n_outer),
                                     rng.integers(0, n_outer, n_inner - n_outer)]))
    inner = np.sort(rng.integers(0, n_inner, size))
    tau_inner, tau_outer = 0.1, 0.15
    mean = {"negative_binomial": np.log(49.0), "poisson": np.log(5.0), "bernoulli": 1.0}[name]
    f = mean + 0.3 * rng.standard_normal(size)
    eta = (f + tau_inner * rng.standard_normal(n_inner)[inner]
           + tau_outer * rng.standard_normal(n_outer)[parent[inner]])
    aux = np.array([2.0]) if name == "negative_binomial" else np.zeros(0)
    if name == "negative_binomial":
        y = rng.negative_binomial(2.0, 2.0 / (2.0 + np.exp(eta)))
    elif name == "poisson":
        y = rng.poisson(np.exp(eta))
    else:
        y = rng.random(size) < 1 / (1 + np.exp(-eta))
    return (FAMILY_CODES[name], True, y.astype(float), f, tau_inner, tau_outer, aux, inner,
            parent, n_outer, MAX_ITERATIONS, TOLERANCE, MAX_STEP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2057, 20_000, 200_000])
    parser.add_argument("--families", nargs="+",
                        default=["negative_binomial", "poisson", "bernoulli"])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed per row")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for name in args.families:
            arguments = problem(size, name)
            steps = laplace_marginal(*arguments)[9]       # compiles or loads the kernel
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                laplace_marginal(*arguments)
                calls += 1
            rows.append({"campaigns": f"{size:,}", "counties": f"{len(arguments[8]):,}",
                         "family": name, "Newton steps": int(steps),
                         "ms per call": round(1e3 * (time.perf_counter() - started) / calls,
                                              3)})
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
