"""Scaling benchmark: the regional model on 2,057 to 3.4 million simulated campaigns.

Writes prepared tables (the columns models/regional_mediation.toml uses, mediators carried
directly: no donation streams) over the real county table, ../shared/data/china_counties.csv
(the 2,852 counties in 341 prefectures with complete 2020 census values; campaigns
placed by population), in chunks, then times
`fundgap fit` on each as a separate process and reads its peak memory from the kernel
(`os.wait4`'s resource usage of the child). Prints a Markdown table.

    .venv/bin/python benchmarks/scaling.py --sizes 2057 20000 200000 3400000

The data and fits go to --work (default /tmp/fundgap-scaling); a table is reused when its
size and seed match.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fundgap.prepare import prefecture_measures
from fundgap.rules import COUNTY_CONTROLS

ROOT = Path(__file__).resolve().parents[1]
# FUNDGAP_COUNTIES points elsewhere, e.g. on a machine without ../shared
COUNTIES = Path(os.environ.get("FUNDGAP_COUNTIES",
                               ROOT.parent / "shared" / "data" / "china_counties.csv"))
MEDIATORS = ("core_capacity", "derived_capacity", "verifier_count", "log_reposts")
# truth: mediator = mean + a * development + ...; outcome = ... + direct * d + b . mediators
TRUTH = {
    "a": {"core_capacity": 0.05, "derived_capacity": 0.03, "verifier_count": 2.0,
          "log_reposts": -0.10},
    "b": {"core_capacity": 0.30, "derived_capacity": 1.20, "verifier_count": -0.004,
          "log_reposts": 0.40},
    "direct": 0.04,
    "mean": {"core_capacity": 0.56, "derived_capacity": 0.29, "verifier_count": 49.0,
             "log_reposts": 6.6, "log_amount_raised": -1.0},
    "sd": {"core_capacity": 0.27, "derived_capacity": 0.11, "verifier_count": 38.0,
           "log_reposts": 0.8, "log_amount_raised": 0.6},
}
AGE_GROUPS = ["0-17", "18-39", "40-59", "60+"]
DISEASES = ["cancer", "leukaemia", "other", "injury", "cardiovascular", "kidney"]


def _counties() -> pd.DataFrame:
    counties = pd.read_csv(COUNTIES, dtype={"county_code": str, "prefecture_code": str,
                                            "province_code": str})
    needed = [c for c in counties.columns if c.endswith("_2020")]
    counties = counties.dropna(subset=needed).reset_index(drop=True)
    indicators = counties[["mean_years_schooling_2020", "non_agricultural_share_2020",
                           "urbanisation_rate_2020"]]
    score = ((indicators - indicators.mean()) / indicators.std()).mean(axis=1)
    counties["development"] = (score - score.mean()) / score.std()
    for name in ("population_millions", "aged60_share", "minority_share",
                 "sex_ratio_at_birth"):
        counties[name] = counties[f"{name}_2020"]
    return counties


# the verifier count as a count (negative binomial, log link) for the explicit-form runs:
# log mean = log(49) + 0.04 * development + ..., dispersion 2
COUNT = {"log_mean": float(np.log(49.0)), "a": 0.04, "dispersion": 2.0, "sd": 0.5}


def write_table(n: int, path: Path, seed: int = 2026, chunk: int = 500_000,
                count_mediator: bool = False) -> dict:
    """Simulate `n` campaigns into a prepared Parquet table at `path`, chunk by chunk;
    with `count_mediator` the verifier count is a negative-binomial count."""
    counties = _counties()
    rng = np.random.default_rng(seed)
    prefectures = np.sort(counties["prefecture_code"].unique())
    prefecture_of = np.searchsorted(prefectures, counties["prefecture_code"])
    equations = (*MEDIATORS, "log_amount_raised")
    intercepts = {e: 0.3 * TRUTH["sd"][e] * rng.standard_normal(len(counties))
                  + 0.2 * TRUTH["sd"][e] * rng.standard_normal(len(prefectures))[prefecture_of]
                  for e in equations}
    # taken up to prefectures as `fundgap prepare` takes them (population-weighted)
    up = prefecture_measures(counties[["county_code", "development", *COUNTY_CONTROLS]],
                             counties, ("development", *COUNTY_CONTROLS)).loc[prefectures]
    weights = counties["population_millions"].clip(lower=0.01).to_numpy()
    weights = weights / weights.sum()
    temporary = path.with_suffix(".partial")
    writer = None
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        county = rng.choice(len(counties), size=size, p=weights)
        d = counties["development"].to_numpy()[county]
        frame = pd.DataFrame({
            "campaign_id": [f"S{i:08d}" for i in range(start + 1, start + size + 1)],
            "county_code": counties["county_code"].to_numpy()[county],
            "prefecture_code": counties["prefecture_code"].to_numpy()[county],
            "development": d,
            "target_amount_10k": np.round(np.exp(rng.normal(3.0, 0.55, size)), 1),
            "male": (rng.random(size) < 0.6).astype(int),
            "ses_index": 1.4 * d + rng.normal(0, 4.4, size),
            "recommended": (rng.random(size) < 0.76).astype(int),
            "emotional_rating": rng.normal(0, 0.64, size),
            "age_group": rng.choice(AGE_GROUPS, size, p=[0.19, 0.29, 0.41, 0.11]),
            "disease_type": rng.choice(DISEASES, size, p=[0.42, 0.17, 0.15, 0.1, 0.09, 0.07]),
        })
        for name in ("population_millions", "aged60_share", "minority_share",
                     "sex_ratio_at_birth"):
            frame[name] = counties[name].to_numpy()[county]
        # the prefecture-level measures the spec's frequentist Table 4 rows use
        for name in ("development", *COUNTY_CONTROLS):
            frame[f"prefecture_{name}"] = up[name].to_numpy()[prefecture_of[county]]
        controls = (0.004 * (frame["target_amount_10k"] - 23) + 0.05 * frame["male"]
                    + 0.01 * frame["ses_index"] + 0.1 * frame["recommended"]
                    + 0.1 * frame["emotional_rating"]).to_numpy()
        for m in MEDIATORS:
            if count_mediator and m == "verifier_count":
                mean = np.exp(COUNT["log_mean"] + COUNT["a"] * d + 0.2 * controls
                              + intercepts[m][county] * COUNT["sd"] / TRUTH["sd"][m])
                alpha = COUNT["dispersion"]
                frame[m] = rng.negative_binomial(alpha, alpha / (alpha + mean))
                continue
            frame[m] = (TRUTH["mean"][m] + TRUTH["a"][m] * d + TRUTH["sd"][m] * 0.2 * controls
                        + intercepts[m][county] + 0.8 * TRUTH["sd"][m]
                        * rng.standard_normal(size))
        frame["log_amount_raised"] = (
            TRUTH["mean"]["log_amount_raised"] + TRUTH["direct"] * d + controls
            + sum(TRUTH["b"][m] * frame[m] for m in MEDIATORS)
            + intercepts["log_amount_raised"][county]
            + TRUTH["sd"]["log_amount_raised"] * rng.standard_normal(size))
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(temporary, table.schema)
        writer.write_table(table)
    writer.close()
    temporary.replace(path)
    truth = {"n": n, "seed": seed, **TRUTH,
             "indirect": {m: TRUTH["a"][m] * TRUTH["b"][m] for m in MEDIATORS}}
    if count_mediator:
        truth["count_mediator"] = COUNT
    path.with_suffix(".truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def simulated_table(n: int, work: Path, count_mediator: bool = False) -> tuple[Path, float]:
    """The simulated table of `n` campaigns in `work` (written unless already there), and
    the seconds that took."""
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"campaigns_{n}{'_count' if count_mediator else ''}.parquet"
    started = time.perf_counter()
    if not table.is_file():
        write_table(n, table, count_mediator=count_mediator)
    return table, time.perf_counter() - started


def _fit(table: Path, out: Path, extra: list[str],
         spec: Path = ROOT / "models" / "regional_mediation.toml",
         env: dict | None = None, quiet: bool = True) -> dict:
    """`fundgap fit` as a child process (this interpreter's): wall, peak memory, records."""
    command = [sys.executable, "-m", "fundgap.cli", "fit", str(spec), "--data", str(table),
               "--out", str(out), *(["--quiet"] if quiet else []), *extra]
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        sys.exit(f"fundgap fit failed on {table}: see {out.with_suffix('.log')}")
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    record = json.loads((out / "fit.json").read_text())
    effects = pd.read_csv(out / "effects.csv").set_index("effect")
    return {"wall": wall, "peak_gb": usage.ru_maxrss / 1024**2,  # ru_maxrss is in KiB
            "diagnostics": diagnostics, "record": record, "effects": effects}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[2057, 20_000, 200_000, 3_400_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fundgap-scaling"))
    parser.add_argument("--statistics", default="always", choices=("auto", "always", "never"))
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        table, simulate_s = simulated_table(n, args.work)
        result = _fit(table, args.work / f"fit_{n}", ["--statistics", args.statistics])
        diagnostics, record = result["diagnostics"], result["record"]
        total = result["effects"].loc["total", "mean"] if "total" in result["effects"].index \
            else float("nan")
        truth_total = TRUTH["direct"] + sum(TRUTH["a"][m] * TRUTH["b"][m] for m in MEDIATORS)
        rows.append({
            "campaigns": f"{n:,}", "counties": diagnostics.get("counties", ""),
            "data": record["data_form"], "simulate_s": round(simulate_s, 1),
            "fit_wall_s": round(result["wall"], 1),
            "compile_s": round(diagnostics["compile_seconds"], 1),
            "compile_cache": diagnostics.get("compile_cache", "off"),
            "sample_s": round(diagnostics["sample_seconds"], 1),
            "peak_GB": round(result["peak_gb"], 2),
            "min_bulk_ESS": round(diagnostics["min_ess_bulk"]),
            "divergences": diagnostics["divergences"],
            "max_R_hat": round(diagnostics["max_r_hat"], 3),
            "per_campaign": record["per_campaign"],
            "total_effect (truth)": f"{total:.4f} ({truth_total:.4f})",
        })
        print(pd.DataFrame(rows[-1:]).to_markdown(index=False), flush=True)
    print(pd.DataFrame(rows).drop(columns=["counties"]).to_markdown(index=False))


if __name__ == "__main__":
    main()
