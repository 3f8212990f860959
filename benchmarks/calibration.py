"""Calibration of the joint models over many data sets from the project's own process.

Each replicate simulates a data set (`fundgap.simulation.development`, the default layout of
counties, a new seed), measures it back (`prepare`: the mediators and the development factor
as the study builds them) and fits models/regional_mediation.toml and
models/channel_moderation.toml at the default settings. The compiled models are reused
across replicates (their data enter as pm.Data), so a replicate costs its simulation, its
preparation and its sampling.

For every reported quantity with a known truth (truth.json) it records where the truth falls
among the posterior draws (the share of draws below it): the total, direct and indirect
effects and shares mediated (regional: pooled over channels; channel: per channel, and the
channel contrasts), and every equation's county and prefecture sds. Rows go to a CSV as
replicates finish, and a rerun resumes. The report gives, per kind of quantity, the coverage
of the central 50%, 80% and 95% intervals (a truth covered at level q where its share lies
within q/2 of one half), a 10-bin rank histogram with its chi-square p-value, and a figure
of the rank histograms.

    .venv/bin/python benchmarks/calibration.py --replicates 100
    .venv/bin/python benchmarks/calibration.py --report        (tables and figure only)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fundgap import names
from fundgap.bayesian import FitSettings, fit_model
from fundgap.contract import load_dataset, read_table
from fundgap.effects import contrast_draws, effect_draws
from fundgap.prepare import prepare
from fundgap.simulation.development import simulate, write_simulation
from fundgap.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
COUNTIES = REPO.parent / "shared" / "data" / "china_counties.csv"
OUT = REPO / "benchmarks" / "results" / "calibration.csv"
SPECS = {"regional": REPO / "models" / "regional_mediation.toml",
         "channel": REPO / "models" / "channel_moderation.toml"}
LEVELS = (0.5, 0.8, 0.95)
FIRST_SEED = 5000


def _share_below(draws: np.ndarray, truth: float) -> float:
    """Where the truth falls among the draws: the share below it (ties count half)."""
    draws = np.asarray(draws).ravel()
    return float(((draws < truth).sum() + 0.5 * (draws == truth).sum()) / draws.size)


def _effect_rows(effects, truth: dict, label: str, contrast: bool = False) -> list[dict]:
    """(kind, quantity, truth, share below) for total, direct and each indirect effect and
    share of one set of effect draws (already selected to a channel or contrast)."""
    rows = []
    for effect in ("total", "direct"):
        rows.append({"kind": f"{'contrast ' if contrast else ''}{effect}",
                     "quantity": f"{label} {effect}", "truth": truth[effect],
                     "share_below": _share_below(effects[effect].values, truth[effect])})
    for mediator, value in truth["indirect"].items():
        draws = effects["indirect"].sel(mediator=mediator).values
        rows.append({"kind": f"{'contrast ' if contrast else ''}indirect",
                     "quantity": f"{label} indirect {mediator}", "truth": value,
                     "share_below": _share_below(draws, value)})
        if not contrast and "share" in effects:
            share = truth["share"][mediator]
            rows.append({"kind": "share", "quantity": f"{label} share {mediator}",
                         "truth": share, "share_below": _share_below(
                             effects["share"].sel(mediator=mediator).values, share)})
    return rows


def _sd_rows(posterior, truth: dict, label: str) -> list[dict]:
    rows = []
    for equation, parameters in truth["parameters"]["equations"].items():
        for level in ("county", "prefecture"):
            name = names.group_sd(level, equation)
            if name in posterior and f"{level}_sd" in parameters:
                value = float(parameters[f"{level}_sd"])
                rows.append({"kind": f"{level} sd", "quantity": f"{label} {name}",
                             "truth": value,
                             "share_below": _share_below(posterior[name].values, value)})
    return rows


def _channel_truth(truth: dict, first: str, other: str) -> dict:
    """The truth of the contrast `first - other` of every effect."""
    a, b = truth[first], truth[other]
    return {"total": a["total"] - b["total"], "direct": a["direct"] - b["direct"],
            "indirect": {m: a["indirect"][m] - b["indirect"][m] for m in a["indirect"]}}


def replicate(seed: int, counties: pd.DataFrame | None, settings: FitSettings,
              scratch: Path) -> list[dict]:
    """Simulate, prepare and fit both specs on one data set; its rows."""
    folder = write_simulation(simulate(seed=seed, counties=counties), scratch / str(seed))
    truth = json.loads((folder / "truth.json").read_text("utf-8"))
    table = prepare(load_dataset(folder)).table
    by_channel = truth["effects_per_sd_development"]
    rows: list[dict] = []
    for label, path in SPECS.items():
        started = time.perf_counter()
        fit = fit_model(load_spec(path), table, settings)
        posterior = fit.idata.posterior
        draws = effect_draws(posterior, fit.design)
        spec = fit.spec
        found = []
        if spec.moderator is None:
            found += _effect_rows(draws, by_channel["pooled"], label)
        else:
            for level in draws[spec.moderator].values:
                found += _effect_rows(draws.sel({spec.moderator: level}),
                                      by_channel[str(level)], f"{label} {level}")
            contrasts = contrast_draws(draws, spec.moderator)
            for pair in contrasts["contrast"].values:
                first, other = (s.strip() for s in str(pair).split(" - "))
                found += _effect_rows(contrasts.sel(contrast=pair),
                                      _channel_truth(by_channel, first, other),
                                      f"{label} {pair}", contrast=True)
        found += _sd_rows(posterior, truth, label)
        d = fit.diagnostics
        for row in found:
            row.update({"replicate": seed, "spec": label, "passed": d["passed"],
                        "divergences": d["divergences"], "max_r_hat": d["max_r_hat"],
                        "min_ess_bulk": d["min_ess_bulk"],
                        "seconds": time.perf_counter() - started})
        rows += found
    return rows


def run(replicates: int, out: Path, settings: FitSettings) -> None:
    done = set(pd.read_csv(out)["replicate"]) if out.exists() else set()
    counties = read_table(COUNTIES, "counties") if COUNTIES.exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(FIRST_SEED, FIRST_SEED + replicates):
            if seed in done:
                continue
            started = time.perf_counter()
            rows = replicate(seed, counties, settings, Path(scratch))
            pd.DataFrame(rows).to_csv(out, mode="a", header=not out.exists(), index=False)
            print(f"replicate {seed}: {time.perf_counter() - started:.0f} s, "
                  f"{sum(r['passed'] for r in rows) / len(rows):.0%} of rows from passing fits",
                  flush=True)


def coverage_table(rows: pd.DataFrame, by: str = "kind") -> pd.DataFrame:
    """Per kind of quantity (or per quantity, `by`="quantity"): how many, the coverage at
    each level, the rank histogram and its chi-square p-value, and the mean share below
    (0.5 where unbiased)."""
    table = []
    for kind, group in rows.groupby(by, sort=False):
        distance = (group["share_below"] - 0.5).abs()
        counts = np.histogram(group["share_below"], bins=10, range=(0, 1))[0]
        table.append({by: kind, "quantities": len(group),
                      **{f"cover {level:.0%}": float((distance <= level / 2).mean())
                         for level in LEVELS},
                      "mean share below": float(group["share_below"].mean()),
                      "rank histogram": " ".join(map(str, counts)),
                      "chi2 p": float(stats.chisquare(counts).pvalue)})
    return pd.DataFrame(table)


def figure(rows: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(rows["kind"]))
    columns = 4
    fig, axes = plt.subplots(int(np.ceil(len(kinds) / columns)), columns,
                             figsize=(3.2 * columns, 2.4 * np.ceil(len(kinds) / columns)),
                             squeeze=False)
    for axis, kind in zip(axes.flat, kinds, strict=False):
        shares = rows.loc[rows["kind"] == kind, "share_below"]
        axis.hist(shares, bins=10, range=(0, 1), color="#4c72b0", edgecolor="white")
        axis.axhline(len(shares) / 10, color="black", linewidth=0.8, linestyle="--")
        axis.set_title(f"{kind} ({len(shares)})", fontsize=9)
        axis.set_xticks([0, 0.5, 1])
    for axis in list(axes.flat)[len(kinds):]:
        axis.axis("off")
    fig.suptitle("Where the truth falls among the posterior draws (uniform if calibrated)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(out: Path) -> None:
    rows = pd.read_csv(out)
    passing = rows[rows["passed"]]
    print(f"{rows['replicate'].nunique()} data sets; rows from fits that failed the gate: "
          f"{(~rows['passed']).sum()} (left out); max divergences "
          f"{int(rows['divergences'].max())}; median min bulk ESS "
          f"{rows.groupby(['replicate', 'spec'])['min_ess_bulk'].first().median():.0f}; "
          f"median seconds per fit "
          f"{rows.groupby(['replicate', 'spec'])['seconds'].first().median():.1f}")
    print(coverage_table(passing).to_markdown(index=False, floatfmt=".3f"))
    # each effect on its own (the sds, many per fit, stay pooled by level above)
    effects = passing[~passing["kind"].str.endswith(" sd")]
    by_quantity = coverage_table(effects, by="quantity")
    print(by_quantity.drop(columns=["rank histogram"]).sort_values("cover 95%")
          .to_markdown(index=False, floatfmt=".3f"))
    path = out.with_suffix(".png")
    figure(passing, path)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--report", action="store_true", help="tables only")
    args = parser.parse_args()
    if not args.report:
        settings = FitSettings(draws=args.draws, tune=args.tune, chains=args.chains,
                               progress=False, per_campaign="skip", reuse_compiled=True)
        run(args.replicates, args.out, settings)
    report(args.out)


if __name__ == "__main__":
    main()
