"""The regional model with a negative-binomial verifier count, at up to a million campaigns.

A count mediator cannot be integrated out: its county and prefecture intercepts stay in the
sampler, so every gradient touches every campaign. This is the work a JAX backend is for on
a GPU: `--backend nutpie-jax` (the default here: nutpie's sampler and adaptation, the log
density in JAX) or `numpyro` (vectorised chains, Stan-style windowed adaptation). The table
is simulated as in benchmarks/scaling.py, with the verifier count drawn from a negative
binomial (log link, dispersion 2); the spec is models/regional_mediation.toml with
`family = "negative_binomial"` on that equation.

Each run is `fundgap fit` in a child process with `--per-campaign skip`:

  form      auto     the four Gaussian equations marginalised, the count equation by Laplace
            exact    the four Gaussian equations marginalised, the count equation explicit
            explicit every equation explicit (about 14,000 county and prefecture z's)
  precision float64  or float32 (PYTENSOR_FLAGS=floatX=float32; JAX then runs in float32)

    python benchmarks/count_mediator.py --sizes 1000000 \\
        --runs auto:float64 auto:float32 --backend nutpie-jax

Prints a Markdown table (wall, sampling, min bulk ESS, ESS/s, leapfrog steps per draw,
divergences, R-hat, peak host and GPU memory, the count equation's development slope against
its truth) and appends each row as JSON to --results.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pymc as pm
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import COUNT, ROOT, _fit, simulated_table

from fundgap.bayesian import choose_centring, choose_form
from fundgap.build import build_model
from fundgap.defaults import BACKENDS, LAPLACE_FIXED_ITERATIONS
from fundgap.design import build_design
from fundgap.spec import load_spec

COUNT_EQUATION = "verifier_count"


def count_spec(path: Path) -> Path:
    """models/regional_mediation.toml with the verifier count as a negative binomial (and
    out of the correlated errors)."""
    text = (ROOT / "models" / "regional_mediation.toml").read_text()
    header = f"[equations.{COUNT_EQUATION}]\n"
    assert header in text
    # correlated errors join Gaussian equations only
    text = re.sub(r'^(correlated_errors = .*)"verifier_count",\s*', r"\1",
                  text.replace(header, header + 'family = "negative_binomial"\n'),
                  count=1, flags=re.M)
    assert re.search(r'^correlated_errors = .*"verifier_count"', text, re.M) is None
    path.write_text(text)
    return path


def count_model(size: int, work: Path, form: str = "auto",
                centring: str = "auto") -> tuple[pm.Model, str, tuple[str, ...]]:
    """The count-mediator model fundgap builds for `size` simulated campaigns (the table
    written to `work` unless already there) for a JAX backend (a Laplace mode in
    LAPLACE_FIXED_ITERATIONS Newton steps, JAX having no while loop): the model, its form and
    its centred groupings."""
    table, _ = simulated_table(size, work, count_mediator=True)
    design = build_design(load_spec(count_spec(work / "regional_count.toml")),
                          pd.read_parquet(table))
    forms = choose_form(design, form)
    centred = tuple(choose_centring(design, centring))
    return (build_model(design, forms.named("exact"), centred, forms.named("laplace"),
                        iterations=LAPLACE_FIXED_ITERATIONS, compiled=False), forms.label,
            centred)


class GpuMemory:
    """Peak GPU memory in use while a run lasts, polled by nvidia-smi (absent: None)."""

    def __enter__(self) -> GpuMemory:
        self.log = None
        if shutil.which("nvidia-smi"):
            self.log = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mib = None
        if self.log is not None:
            self.log.terminate()
            readings = [int(v) for v in self.log.stdout.read().split() if v.isdigit()]
            self.peak_mib = max(readings, default=None)


def _count_slope(out: Path) -> tuple[float, float]:
    """Posterior mean and sd of the count equation's development coefficient."""
    posterior = xr.open_dataset(out / "posterior.nc", group="posterior")
    slope = posterior[f"coefficients_{COUNT_EQUATION}"].sel(
        {f"term_{COUNT_EQUATION}": "development"})
    return float(slope.mean()), float(slope.std())


def _steps_per_draw(out: Path) -> float | None:
    """Mean leapfrog steps per kept draw, where the backend records them."""
    stats = xr.open_dataset(out / "posterior.nc", group="sample_stats")
    return round(float(stats["n_steps"].mean()), 1) if "n_steps" in stats else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--runs", nargs="+", default=["auto:float32", "auto:float64"],
                        help="FORM:PRECISION, FORM auto or explicit, PRECISION float32|64")
    parser.add_argument("--backend", default="nutpie-jax", choices=BACKENDS)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fundgap-count"))
    parser.add_argument("--results", type=Path, help="append each row here as JSON")
    parser.add_argument("--progress", action="store_true",
                        help="the sampler's progress bar in each fit's log")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        table, simulate_s = simulated_table(n, args.work, count_mediator=True)
        spec = count_spec(args.work / "regional_count.toml")
        for run in args.runs:
            form, precision = run.split(":")
            out = args.work / f"fit_{n}_{form}_{precision}_{args.backend}"
            with GpuMemory() as gpu:
                result = _fit(table, out, [
                    "--backend", args.backend, "--form", form, "--statistics", "never",
                    "--per-campaign", "skip", "--draws", str(args.draws),
                    "--tune", str(args.tune)], spec=spec,
                    env={"PYTENSOR_FLAGS": f"floatX={precision}",
                         "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, quiet=not args.progress)
            diagnostics = result["diagnostics"]
            slope_mean, slope_sd = _count_slope(out)
            row = {
                "campaigns": f"{n:,}", "form": form, "precision": precision,
                "backend": args.backend, "simulate_s": round(simulate_s, 1),
                "fit_wall_s": round(result["wall"], 1),
                "sample_s": round(diagnostics["sample_seconds"], 1),
                "min_bulk_ESS": round(diagnostics["min_ess_bulk"]),
                "ESS_per_s": round(diagnostics["min_ess_bulk"] / diagnostics["sample_seconds"],
                                   1),
                "steps_per_draw": _steps_per_draw(out),
                "divergences": diagnostics["divergences"],
                "max_R_hat": round(diagnostics["max_r_hat"], 3),
                "passed": diagnostics["passed"],
                "peak_host_GB": round(result["peak_gb"], 2),
                "peak_GPU_MiB": gpu.peak_mib,
                "count_slope (truth)": f"{slope_mean:.4f} ± {slope_sd:.4f} ({COUNT['a']})",
            }
            rows.append(row)
            print(pd.DataFrame([row]).to_markdown(index=False), flush=True)
            if args.results:
                with args.results.open("a") as results:
                    results.write(json.dumps(row) + "\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
