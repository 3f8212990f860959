"""Benchmark: where the seconds of one `fundgap fit` command go.

Runs the command (`fundgap.cli.main`) in a child process, with timers around its steps:
importing, building the design and model, compiling and sampling, the intercept draws,
per-campaign draws, summaries, effects, shrinkage, writing the fit folder; the parent
times the whole child, so what is left is Python's start and exit. Prints a table with
one column per run.
Run from the repository root after `make demo`:

    .venv/bin/python benchmarks/fit_phases.py [--data fits/default/prepared.parquet]
        [--spec models/regional_mediation.toml] [--runs 3] [--compile-cache fresh]

With a fresh compile cache (the default) the first run compiles and stores the compiled
model, and the later ones load it (fundgap.sampling.compile_cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# fundgap.bayesian's steps, timed where fit_design calls them ("sample" compiles and samples),
# and the writing of the fit folder (fundgap.fitfolder)
STEPS = ("build_design", "build_model", "sample", "_add_intercepts", "_per_campaign_groups",
         "effect_draws", "summarise_effects", "parameter_summary", "shrinkage_table")
WRITE_STEPS = ("write_fit",)


def _child(spec: str, data: str, out: str) -> dict:
    started = time.perf_counter()
    import fundgap.bayesian as fit
    import fundgap.cli as cli
    import fundgap.fitfolder as fitfolder

    seconds = {"imports": time.perf_counter() - started}

    def timed(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            begun = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - begun
        return wrapper

    for module, steps in ((fit, STEPS), (fitfolder, WRITE_STEPS)):
        for name in steps:
            setattr(module, name, timed(module, name))
    code = cli.main(["fit", spec, "--data", data, "--out", out, "--quiet"])
    seconds["main"] = time.perf_counter() - started
    diagnostics = json.loads((Path(out) / "diagnostics.json").read_text())
    seconds.update({k: diagnostics[k] for k in ("compile_seconds", "compile_cache",
                                                "sample_seconds", "min_ess_bulk",
                                                "divergences")})
    seconds["exit_code"] = code
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fits/default/prepared.parquet")
    parser.add_argument("--spec", default="models/regional_mediation.toml")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile-cache", choices=("fresh", "off", "user"), default="fresh",
                        help="fresh: a new compile cache folder, filled by the first run "
                             "(the default); off: none; user: the user's own")
    parser.add_argument("--one", help="(internal) the fit folder of one timed child run")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_child(args.spec, args.data, args.one)))
        return 0
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        environment = dict(os.environ)
        if args.compile_cache != "user":
            environment["FUNDGAP_COMPILE_CACHE"] = (f"{scratch}/compile_cache"
                                                    if args.compile_cache == "fresh" else "")
        for run in range(args.runs):
            begun = time.perf_counter()
            child = subprocess.run([sys.executable, __file__, "--spec", args.spec, "--data",
                                    args.data, "--one", f"{scratch}/fit{run}"],
                                   capture_output=True, text=True, check=True,
                                   env=environment)
            wall = time.perf_counter() - begun
            row = json.loads(child.stdout.strip().splitlines()[-1])
            row["command_wall"] = wall
            row["start_and_exit"] = wall - row["main"]
            rows.append(row)
    print(pd.DataFrame(rows).round(2).T.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
