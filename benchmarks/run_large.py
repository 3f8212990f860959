"""`fundgap run` on a large data folder, as a new user would run it: wall time per task,
the whole command's wall time and peak memory (the kernel's resource usage of the child).

The data folder is simulated with fundgap's own process over the real county table
(../shared/data/china_counties.csv, or FUNDGAP_COUNTIES), with its donation stream as a
donations.csv (at 300,000 campaigns about 116 million rows, 2.2 GB of CSV, which fundgap
checks and sums in chunks: fundgap/stream.py); `--capacities` writes the capacities as
columns of campaigns.csv instead, which the contract also allows.

    .venv/bin/python benchmarks/run_large.py --campaigns 300000
    .venv/bin/python benchmarks/run_large.py --campaigns 300000 --capacities
    .venv/bin/python benchmarks/run_large.py --campaigns 300000 --models models

The default models are the Gaussian ones (regional and channel), which `fundgap run` fits
from sufficient statistics above 200,000 rows; the non-Gaussian specs (recommendation, SES)
fit from rows, whatever the size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COUNTIES = Path(os.environ.get("FUNDGAP_COUNTIES",
                               ROOT.parent / "shared" / "data" / "china_counties.csv"))
GAUSSIAN_SPECS = ("regional_mediation.toml", "channel_moderation.toml")


def make_folder(campaigns: int, seed: int, folder: Path, capacities: bool) -> Path:
    """A data folder of `campaigns` simulated campaigns, with their donation stream or (with
    `capacities`) capacity columns instead (reused when it is there)."""
    if (folder / "campaigns.csv").is_file():
        return folder
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    import fundgap
    from fundgap.prepare import donation_capacities

    data = fundgap.simulate(campaigns, seed=seed, counties=COUNTIES)
    folder.mkdir(parents=True, exist_ok=True)
    table = data.campaigns
    if capacities:
        measured = donation_capacities(data.donations)[["core_capacity", "derived_capacity"]]
        table = table.merge(measured, left_on="campaign_id", right_index=True)
    else:   # Arrow writes 100 million rows in seconds where pandas takes minutes
        pa_csv.write_csv(pa.Table.from_pandas(data.donations, preserve_index=False),
                         folder / "donations.csv")
    table.to_csv(folder / "campaigns.csv", index=False)
    data.counties.to_csv(folder / "counties.csv", index=False)
    data.ratings.to_csv(folder / "ratings.csv", index=False)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=20250)
    parser.add_argument("--models", help="a folder of specs (default: the Gaussian ones)")
    parser.add_argument("--capacities", action="store_true",
                        help="capacity columns in campaigns.csv instead of donations.csv")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fundgap-large"))
    args = parser.parse_args()
    work = Path(args.work)
    kind = "capacities" if args.capacities else "stream"
    data = make_folder(args.campaigns, args.seed, work / f"data{args.campaigns}_{kind}",
                       args.capacities)
    models = Path(args.models) if args.models else work / "models"
    if not args.models:
        models.mkdir(parents=True, exist_ok=True)
        for name in GAUSSIAN_SPECS:
            shutil.copy(ROOT / "models" / name, models / name)
    out = work / "fits"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "fundgap.cli", "run", "--data",
                                str(data), "--models", str(models), "--out", str(out),
                                "--quiet"], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    printed = process.stdout.read()
    print(printed)
    index = pd.read_parquet(out / "index.parquet")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print("| campaigns | fundgap run wall s | peak GB | exit | fits on disk MB |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {args.campaigns:,} | {wall:.1f} | {usage.ru_maxrss / 1024**2:.2f} | "
          f"{os.waitstatus_to_exitcode(status)} | {size / 1e6:.0f} |")
    print(index[["spec", "kind", "status", "wall_seconds", "min_ess_bulk"]].to_string(
        index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
