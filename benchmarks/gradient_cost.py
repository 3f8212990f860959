"""The cost of one leapfrog step: the JAX log density and gradient of the count-mediator model.

NUTS spends its time in gradients; sampling time is (gradients per iteration) x (cost of one).
This times the second factor for the model fundgap builds (benchmarks/count_mediator.py's
table and spec), for 4 chains at once as numpyro's vectorised chains evaluate it, in the
precision PyTensor is set to (PYTENSOR_FLAGS=floatX=float32 for float32):

    PYTENSOR_FLAGS=floatX=float64 python benchmarks/gradient_cost.py --size 1000000
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
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--form", default="auto", choices=("auto", "exact", "explicit"))
    parser.add_argument("--centring", default="auto")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fundgap-count"))
    args = parser.parse_args()

    import jax
    import pytensor
    from pymc.sampling.jax import get_jaxified_logp

    model, form, centred = count_model(args.size, args.work, args.form, args.centring)
    started = time.perf_counter()
    logp = get_jaxified_logp(model)
    rng = np.random.default_rng(0)
    point = model.initial_point()
    values = [np.asarray(point[v.name] + 0.1 * rng.standard_normal((args.chains,
                                                                    *point[v.name].shape)),
                         dtype=pytensor.config.floatX) for v in model.value_vars]
    gradient = jax.jit(jax.vmap(jax.value_and_grad(logp)))
    jax.block_until_ready(gradient(values))
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.repeats):
        out = gradient(values)
    jax.block_until_ready(out)
    per_gradient_ms = (time.perf_counter() - started) / args.repeats * 1e3
    free = sum(int(np.prod(v.shape[1:])) for v in values)
    print(pd.DataFrame([{
        "campaigns": f"{args.size:,}", "form": form, "centred": ",".join(centred) or "none",
        "precision": pytensor.config.floatX, "device": str(jax.devices()[0]),
        "free parameters": free, "chains": args.chains, "compile_s": round(compile_s, 1),
        "ms per gradient (all chains)": round(per_gradient_ms, 3),
        "logp finite": bool(np.isfinite(np.asarray(out[0])).all()),
    }]).to_markdown(index=False), flush=True)


if __name__ == "__main__":
    main()
