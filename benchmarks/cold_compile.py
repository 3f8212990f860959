"""Benchmark: `fundgap fit` on a machine whose caches are empty, spec by spec.

Each spec is fitted in a child process with a fresh PyTensor compile folder (so numba
compiles every node of the model again) and fundgap's compile cache off; numba's cache of
fundgap's own kernels (beside the package) is kept, as it is once per machine. Prints one
row per spec: the command's wall time, the fit's compile, sampling and wall seconds, min
bulk ESS, max R-hat and whether it passed. `--code DIR` runs another checkout of fundgap
(e.g. a `git worktree` of an older commit) for a before/after table.
Run from the repository root after `make demo` (which writes data/default):

    .venv/bin/python benchmarks/cold_compile.py [--specs regional_mediation ses_gradient]
        [--data data/default] [--code DIR]
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

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def cold_fit(spec: str, data: Path, code: Path) -> dict:
    """One `fundgap fit` with empty PyTensor and compile caches; its row."""
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        env = {**os.environ, "PYTENSOR_FLAGS": f"base_compiledir={work / 'pytensor'}",
               "FUNDGAP_COMPILE_CACHE": ""}
        started = time.perf_counter()
        # run from `code`, so its fundgap is the one imported
        done = subprocess.run([sys.executable, "-m", "fundgap.cli", "fit",
                               str(ROOT / "models" / f"{spec}.toml"), "--data",
                               str(data.resolve()), "--out", str(work / "fit")],
                              cwd=code, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        row = {"spec": spec, "code": code.name, "command_s": round(wall, 1)}
        diagnostics = work / "fit" / "diagnostics.json"
        if not diagnostics.is_file():
            return {**row, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        d = json.loads(diagnostics.read_text("utf-8"))
        return {**row, "compile_s": round(d["compile_seconds"], 1),
                "sample_s": round(d["sample_seconds"], 1),
                "fit_wall_s": round(d["wall_seconds"], 1),
                "min_ess_bulk": round(d["min_ess_bulk"]), "max_r_hat": d["max_r_hat"],
                "passed": d["passed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="+", default=["regional_mediation", "ses_gradient"])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "default")
    parser.add_argument("--code", type=Path, default=ROOT,
                        help="the checkout of fundgap to run (default: this one)")
    args = parser.parse_args()
    rows = [cold_fit(spec, args.data, args.code.resolve()) for spec in args.specs]
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
