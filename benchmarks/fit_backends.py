"""Benchmark: the regional model on the default data, by model form and sampler backend.

Prints one row per (form, backend): compile and sampling seconds, whether the compiled model
came from the compile cache (fundgap.sampling.compile_cache; FUNDGAP_COMPILE_CACHE= switches it
off), wall seconds of the whole `fit_model`, minimum bulk ESS over every reported quantity,
that ESS per second of sampling, divergences, max R-hat and the peak memory of the process
that ran it (each run is a child process, its peak read by `os.wait4`). Run from the
repository root after `make demo`:

    .venv/bin/python benchmarks/fit_backends.py [--data fits/default/prepared.parquet]
        [--runs marginal:nutpie explicit:nutpie marginal:pymc ...] [--draws 1000 --chains 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from fundgap.bayesian import FitSettings, fit_model
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
    parser.add_argument("--one", action="store_true",
                        help="(internal) run the one --runs entry here, print it as JSON")
    args = parser.parse_args()

    if args.one:
        print(json.dumps(_run(args, args.runs[0])))
        return 0
    rows = []
    for run in args.runs:
        backend = run.split(":")[1]
        if backend == "numpyro" and importlib.util.find_spec("numpyro") is None:
            print(f"skipping {run}: numpyro is not installed", file=sys.stderr)
            continue
        command = [sys.executable, __file__, "--one", "--runs", run, "--data", args.data,
                   "--spec", args.spec, "--draws", str(args.draws), "--tune", str(args.tune),
                   "--chains", str(args.chains), "--seed", str(args.seed)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{run} failed")
        row = json.loads(output.strip().splitlines()[-1])
        row["peak_MiB"] = round(usage.ru_maxrss / 1024)   # ru_maxrss is in KiB
        rows.append(row)
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    print(f"\n{args.chains} chains x {args.draws} draws (+{args.tune} tuning), seed {args.seed}")
    print(pd.DataFrame(rows).to_markdown(index=False) if rows else "no runs")
    return 0


def _run(args: argparse.Namespace, run: str) -> dict:
    """One (form, backend) fit in this process, as a table row."""
    form, backend = run.split(":")
    table = read_prepared(Path(args.data)).table
    settings = FitSettings(draws=args.draws, tune=args.tune, chains=args.chains,
                           seed=args.seed, backend=backend, form=form, progress=False)
    d = fit_model(load_spec(args.spec), table, settings).diagnostics
    return {"form": form, "backend": backend,
            "compile_s": round(d["compile_seconds"], 1),
            "compile_cache": d.get("compile_cache", "off"),
            "sample_s": round(d["sample_seconds"], 1),
            "fit_wall_s": round(d["wall_seconds"], 1),
            "min_ess_bulk": round(d["min_ess_bulk"]),
            "ess_per_s": round(d["min_ess_bulk_per_second"], 1),
            "divergences": d["divergences"],
            "max_r_hat": round(d["max_r_hat"], 3),
            "passed": d["passed"],
            "worst": d["min_ess_quantity"]}


if __name__ == "__main__":
    sys.exit(main())
