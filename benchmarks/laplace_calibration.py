"""Calibration of the Laplace form against known truth, beside the explicit form on the same
data sets: one equation (negative binomial or Bernoulli) of `y` on two predictors with county
and prefecture intercepts, in the default data's layout (2,057 campaigns in 1,383 counties in
327 prefectures; 44% of campaigns alone in their county).

Each replicate draws its truth (intercept, slopes, county and prefecture sds, the family's
own parameter) from fixed ranges, then the intercepts and responses, and fits both forms
(2 chains x 500 draws). The compiled model is reused across replicates (its data enter as
pm.Data), so a replicate costs its sampling only. Rows go to a CSV as they finish, and a
rerun resumes where the last stopped. At the end it prints, per form and parameter, the
coverage of the 50% and 95% central intervals, a 10-bin rank histogram of the truth among
the draws (with its chi-square p-value), and, Laplace against explicit on the same data,
the worst difference of means in explicit posterior sds and the range of the sd ratio.

    .venv/bin/python benchmarks/laplace_calibration.py negative_binomial --replicates 100
    .venv/bin/python benchmarks/laplace_calibration.py bernoulli --replicates 100
    .venv/bin/python benchmarks/laplace_calibration.py censored_lognormal --replicates 100
    .venv/bin/python benchmarks/laplace_calibration.py bernoulli --report   (table only)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fundgap.build import build_model
from fundgap.design import build_design
from fundgap.families import family
from fundgap.sampling.sample import sample
from fundgap.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
LAYOUT = REPO / "data" / "default" / "campaigns.csv"
COLUMNS = {"campaign_id", "county_code", "prefecture_code", "x", "w", "y"}
# the truth's ranges per family: uniform on each
TRUTH = {
    "negative_binomial": {"intercept": (1.0, 3.0), "x": (-0.4, 0.4), "w": (-0.4, 0.4),
                          "county_sd": (0.1, 0.6), "prefecture_sd": (0.1, 0.5),
                          "dispersion": (1.0, 6.0)},
    "bernoulli": {"intercept": (-1.5, 0.5), "x": (-0.6, 0.6), "w": (-0.6, 0.6),
                  "county_sd": (0.2, 1.0), "prefecture_sd": (0.1, 0.6)},
    "poisson": {"intercept": (0.0, 2.0), "x": (-0.4, 0.4), "w": (-0.4, 0.4),
                "county_sd": (0.1, 0.6), "prefecture_sd": (0.1, 0.5)},
    # a share of a target capped at 1: from a few percent to about a third capped
    "censored_lognormal": {"intercept": (-1.5, -0.3), "x": (-0.4, 0.4), "w": (-0.4, 0.4),
                           "county_sd": (0.1, 0.6), "prefecture_sd": (0.1, 0.5),
                           "sigma": (0.4, 1.0)},
}
FORMS = ("laplace", "explicit")
DRAWS, TUNE, CHAINS = 500, 500, 2


def layout() -> pd.DataFrame:
    """The default data's counties and prefectures, with fixed predictors x (normal) and w
    (binary)."""
    if not LAYOUT.exists():
        raise SystemExit(f"{LAYOUT} is missing: run `fundgap simulate --out data/default` "
                         "first (README)")
    campaigns = pd.read_csv(LAYOUT, dtype={"county_code": str})
    rng = np.random.default_rng(0)
    return pd.DataFrame({"campaign_id": campaigns["campaign_id"],
                         "county_code": campaigns["county_code"],
                         "prefecture_code": campaigns["county_code"].str[:4] + "00",
                         "x": rng.normal(0, 1, len(campaigns)),
                         "w": rng.integers(0, 2, len(campaigns)).astype(float)})


def replicate(frame: pd.DataFrame, family_name: str, seed: int) -> tuple[pd.DataFrame, dict]:
    """One data set: the truth drawn from TRUTH, then the intercepts and the responses."""
    rng = np.random.default_rng([seed, 1])
    truth = {k: rng.uniform(*v) for k, v in TRUTH[family_name].items()}
    counties, county = np.unique(frame["county_code"], return_inverse=True)
    prefectures, prefecture = np.unique(frame["prefecture_code"], return_inverse=True)
    eta = (truth["intercept"] + truth["x"] * frame["x"].to_numpy()
           + truth["w"] * frame["w"].to_numpy()
           + rng.normal(0, truth["county_sd"], len(counties))[county]
           + rng.normal(0, truth["prefecture_sd"], len(prefectures))[prefecture])
    if family_name == "negative_binomial":
        mu, k = np.exp(eta), truth["dispersion"]
        y = rng.negative_binomial(k, k / (k + mu))
    elif family_name == "poisson":
        y = rng.poisson(np.exp(eta))
    elif family_name == "censored_lognormal":
        y = np.minimum(np.exp(rng.normal(eta, truth["sigma"])), 1.0)
    else:
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return frame.assign(y=y.astype(float)), truth


def spec_text(family_name: str) -> str:
    return ('name = "calibration"\nexposure = "x"\noutcome = "y"\n[equations.y]\n'
            f'formula = "y ~ x + w + (1|prefecture) + (1|county)"\nfamily = "{family_name}"\n')


def quantities(posterior, family_name: str) -> dict[str, np.ndarray]:
    """The parameters with a truth, as flat draws."""
    out = {"intercept": posterior["intercept_y"].values.ravel(),
           "county_sd": posterior["county_sd_y"].values.ravel(),
           "prefecture_sd": posterior["prefecture_sd_y"].values.ravel()}
    for term in ("x", "w"):
        out[term] = posterior["coefficients_y"].sel(term_y=term).values.ravel()
    for own in family(family_name).auxiliary:  # the family's own parameters
        out[own.name] = posterior[f"{own.name}_y"].values.ravel()
    return out


def fit_one(family_name: str, form: str, table: pd.DataFrame, seed: int):
    import arviz as az

    design = build_design(parse_spec(spec_text(family_name), "calibration.toml", COLUMNS),
                          table)
    model = build_model(design, laplace=("y",) if form == "laplace" else ())
    started = time.perf_counter()
    result = sample(model, draws=DRAWS, tune=TUNE, chains=CHAINS, seed=seed, progress=False,
                    structure=("calibration", family_name, form), data_as_inputs=True,
                    keep_compiled=True)
    wall = time.perf_counter() - started
    posterior = result.idata.posterior
    ess = az.ess(posterior[["intercept_y", "coefficients_y", "county_sd_y",
                            "prefecture_sd_y"]])
    min_ess = min(float(ess[v].min()) for v in ess.data_vars)
    return (quantities(posterior, family_name), wall,
            int(result.idata.sample_stats["diverging"].sum()), min_ess)


def run(family_name: str, replicates: int, out: Path, forms: tuple[str, ...]) -> None:
    frame = layout()
    done = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["replicate", "form"])
    finished = set(zip(done["replicate"], done["form"], strict=True))
    for seed in range(replicates):
        table, truth = replicate(frame, family_name, seed)
        for form in forms:
            if (seed, form) in finished:
                continue
            draws, wall, divergences, min_ess = fit_one(family_name, form, table, seed)
            rows = []
            for name, values in draws.items():
                lo95, lo50, hi50, hi95 = np.quantile(values, [0.025, 0.25, 0.75, 0.975])
                rows.append({"replicate": seed, "form": form, "parameter": name,
                             "truth": truth[name], "mean": values.mean(),
                             "sd": values.std(), "in50": lo50 <= truth[name] <= hi50,
                             "in95": lo95 <= truth[name] <= hi95,
                             "rank": float((values < truth[name]).mean()),
                             "seconds": wall, "divergences": divergences,
                             "min_ess": min_ess})
            pd.DataFrame(rows).to_csv(out, mode="a", header=not out.exists(), index=False)
            print(f"replicate {seed} {form}: {wall:.1f} s, {divergences} divergences, "
                  f"min ESS {min_ess:.0f}", flush=True)


def report(out: Path) -> None:
    rows = pd.read_csv(out)
    print(f"{rows['replicate'].nunique()} replicates")
    for form, part in rows.groupby("form"):
        print(f"\n{form}: median {part.groupby('replicate')['seconds'].first().median():.1f} s "
              f"per fit, {part.groupby('replicate')['divergences'].first().sum()} divergences "
              f"in all, median min ESS {part.groupby('replicate')['min_ess'].first().median():.0f}")
        table = []
        for name, group in part.groupby("parameter", sort=False):
            counts = np.histogram(group["rank"], bins=10, range=(0, 1))[0]
            table.append({"parameter": name, "n": len(group),
                          "cover50": group["in50"].mean(), "cover95": group["in95"].mean(),
                          "rank histogram": " ".join(map(str, counts)),
                          "chi2 p": stats.chisquare(counts).pvalue,
                          "bias/sd": ((group["mean"] - group["truth"]) / group["sd"]).mean()})
        print(pd.DataFrame(table).to_string(index=False, float_format="%.3f"))
    paired = rows.pivot_table(index=["replicate", "parameter"], columns="form",
                              values=["mean", "sd"]).dropna()
    if paired.empty:
        return
    shift = ((paired[("mean", "laplace")] - paired[("mean", "explicit")])
             / paired[("sd", "explicit")])
    ratio = paired[("sd", "laplace")] / paired[("sd", "explicit")]
    print("\nLaplace against explicit, same data (difference of means in explicit sds; "
          "sd ratio):")
    summary = pd.DataFrame({"mean shift": shift.groupby("parameter").mean(),
                            "worst |shift|": shift.abs().groupby("parameter").max(),
                            "sd ratio median": ratio.groupby("parameter").median(),
                            "sd ratio min": ratio.groupby("parameter").min(),
                            "sd ratio max": ratio.groupby("parameter").max()})
    print(summary.to_string(float_format="%.3f"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(TRUTH))
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None,
                        help="the rows' CSV (default benchmarks/results/calibration_FAMILY.csv)")
    parser.add_argument("--report", action="store_true", help="print the table only")
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    args = parser.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / f"calibration_{args.family}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.report:
        run(args.family, args.replicates, out, tuple(args.forms))
    report(out)


if __name__ == "__main__":
    main()
