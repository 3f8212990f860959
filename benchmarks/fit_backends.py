"""Benchmark: the regional model on the default data, by model form and sampler backend.

Prints one row per (form, backend): compile and sampling seconds, wall seconds of the whole
`fit_model`, minimum bulk ESS over every reported quantity, that ESS per second of sampling,
divergences and max R-hat. Run from the repository root after `make demo`:

    .venv/bin/python benchmarks/fit_backends.py [--data fits/default/prepared.parquet]
        [--runs marginal:nutpie explicit:nutpie marginal:pymc ...] [--draws 1000 --chains 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
from pathlib import Path

import pandas as pd

from fundgap.fit import FitSettings, fit_model
from fundgap.prepare import read_prepared
from fundgap.spec import load_spec

DEFAULT_RUNS = ("marginal:nutpie", "explicit:nutpie", "marginal:pymc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fits/default/prepared.parquet")
    parser.add_argument("--spec", default="models/regional_mediation.toml")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS),
                        help="form:backend pairs (forms: marginal, explicit; backends: "
                             "nutpie, pymc, numpyro)")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20250)
    args = parser.parse_args()

    table = read_prepared(Path(args.data)).table
    spec = load_spec(args.spec)
    rows = []
    for run in args.runs:
        form, backend = run.split(":")
        if backend == "numpyro" and importlib.util.find_spec("numpyro") is None:
            print(f"skipping {run}: numpyro is not installed", file=sys.stderr)
            continue
        settings = FitSettings(draws=args.draws, tune=args.tune, chains=args.chains,
                               seed=args.seed, backend=backend, form=form, progress=False)
        result = fit_model(spec, table, settings)
        d = result.diagnostics
        rows.append({
            "form": form, "backend": backend,
            "compile_s": round(d["compile_seconds"], 1),
            "sample_s": round(d["sample_seconds"], 1),
            "fit_wall_s": round(d["wall_seconds"], 1),
            "min_ess_bulk": round(d["min_ess_bulk"]),
            "ess_per_s": round(d["min_ess_bulk_per_second"], 1),
            "divergences": d["divergences"],
            "max_r_hat": round(d["max_r_hat"], 3),
            "passed": d["passed"],
            "worst": d["min_ess_quantity"],
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{len(table)} campaigns, {args.chains} chains x {args.draws} draws "
          f"(+{args.tune} tuning), seed {args.seed}; peak memory of this process "
          f"{peak:.0f} MiB")
    print(pd.DataFrame(rows).to_string(index=False) if rows else "no runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
