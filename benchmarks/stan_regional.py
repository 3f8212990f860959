"""The regional model in Stan (pystan), against fundgap's fit: speed and posterior agreement.

The five equations of models/regional_mediation.toml share no parameter (the mediators
enter the outcome equation as observed predictors, and residuals are independent), so the
joint posterior is the product of five single-equation posteriors. Each is written here in
Stan twice, with fundgap's priors and standardised design (fundgap.design, fundgap.build):

- explicit: non-centred county and prefecture intercepts, `normal_id_glm`;
- marginal: the intercepts integrated out, from the same sufficient statistics as
  fundgap.marginal (an independent implementation of its algebra in another language).

Each equation is sampled with 4 chains x 1000 draws after 1000 warm-up steps (Stan's
defaults), and the posterior of every coefficient and variance, and of each indirect effect
(a x b, on draws paired by index), is compared with fundgap's fit in
fits/default/regional_mediation (`make demo`). Prints Markdown tables.

    pip install 'fundgap[stan]'
    .venv/bin/python benchmarks/stan_regional.py [--fit fits/default/regional_mediation]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import stan

from fundgap.design import build_design
from fundgap.marginal import standardised_design, sufficient_statistics
from fundgap.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]

PRIORS = """
  alpha ~ normal(scales[1], scales[2]);
  beta_std ~ normal(0, scales[3]);
  sigma ~ normal(0, scales[4]);
  county_sd ~ normal(0, scales[5]);
  prefecture_sd ~ normal(0, scales[5]);
"""
PARAMETERS = """
  real alpha;
  vector[K] beta_std;
  real<lower=0> sigma;
  real<lower=0> county_sd;
  real<lower=0> prefecture_sd;
"""

EXPLICIT = """
data {
  int<lower=1> N; int<lower=0> K; int<lower=1> C; int<lower=1> P;
  matrix[N, K] Z; vector[N] y;
  array[N] int<lower=1, upper=C> county;
  array[C] int<lower=1, upper=P> parent;
  vector[5] scales;
}
parameters {
  PARAMETERS
  vector[C] county_z;
  vector[P] prefecture_z;
}
model {
  PRIORS
  county_z ~ std_normal();
  prefecture_z ~ std_normal();
  {
    vector[C] county_effect = county_sd * county_z + prefecture_sd * prefecture_z[parent];
    y ~ normal_id_glm(Z, alpha + county_effect[county], beta_std, sigma);
  }
}
""".replace("PARAMETERS", PARAMETERS).replace("PRIORS", PRIORS)

MARGINAL = """
data {
  int<lower=1> N; int<lower=0> K; int<lower=1> C; int<lower=1> P; int<lower=1> G;
  matrix[K + 1, K + 1] ZtZ; vector[K + 1] Zty; real yty;
  vector[C] inner_n; matrix[C, K + 1] inner_Z; vector[C] inner_y;
  array[C] int<lower=1, upper=P> parent;
  vector[G] size_values; vector[G] size_counts;
  vector[5] scales;
}
parameters {
  PARAMETERS
}
model {
  PRIORS
  {
    vector[K + 1] theta = append_row(alpha, beta_std);
    real s2 = square(sigma);
    real c2 = square(county_sd);
    real p2 = square(prefecture_sd);
    vector[C] sums = inner_y - inner_Z * theta;
    vector[C] w = inv(s2 + c2 * inner_n);
    vector[P] outer_n = rep_vector(0, P);
    vector[P] outer_s = rep_vector(0, P);
    for (c in 1:C) {
      outer_n[parent[c]] += inner_n[c] * w[c];
      outer_s[parent[c]] += sums[c] * w[c];
    }
    real logdet = N * log(s2) + dot_product(size_counts, log1p(size_values * c2 / s2))
                  + sum(log1p(p2 * outer_n));
    real quad = (yty - 2 * dot_product(theta, Zty) + quad_form(ZtZ, theta)) / s2
                - c2 * dot_product(w, square(sums)) / s2
                - sum(p2 * square(outer_s) ./ (1 + p2 * outer_n));
    target += -0.5 * (logdet + quad);
  }
}
""".replace("PARAMETERS", PARAMETERS).replace("PRIORS", PRIORS)


def _data(design, name: str, form: str) -> dict:
    equation = design.equations[name]
    county, prefecture = equation.groups[-1], equation.groups[0]
    parent = design.parent(county, prefecture) + 1
    common = {"N": len(equation.y), "K": len(equation.terms),
              "C": len(design.levels[county]), "P": len(design.levels[prefecture]),
              "parent": parent.tolist(), "scales": equation.prior_scales().tolist()}
    if form == "explicit":
        return {**common, "Z": standardised_design(equation)[:, 1:], "y": equation.y,
                "county": (design.index[county] + 1).tolist()}
    stats = sufficient_statistics(design, name)
    return {**common, "G": len(stats.size_values), "ZtZ": stats.ZtZ, "Zty": stats.Zty,
            "yty": stats.yty, "inner_n": stats.inner_n, "inner_Z": stats.inner_Z,
            "inner_y": stats.inner_y, "size_values": stats.size_values,
            "size_counts": stats.size_counts}


STAN_PARAMETERS = ["alpha", "beta_std", "sigma", "county_sd", "prefecture_sd"]


def _stan_draws(fit, name: str, terms: list[str]) -> tuple[dict[str, np.ndarray], float]:
    """Stan's draws in fundgap's names, each (chain, draw), and their minimum bulk ESS."""
    posterior = az.from_pystan(posterior=fit).posterior[STAN_PARAMETERS]
    out = {f"{var}_{name}": posterior[var].values
           for var in ("alpha", "sigma", "county_sd", "prefecture_sd")}
    beta = posterior["beta_std"].values               # (chain, draw, K)
    for j, term in enumerate(terms):
        out[f"beta_std_{name}[{term}]"] = beta[..., j]
    ess = float(az.ess(posterior).to_array().min())
    return out, ess


def run(fit_folder: Path, forms: list[str], chains: int, draws: int, seed: int) -> None:
    spec = load_spec(ROOT / "models" / "regional_mediation.toml")
    posterior = az.from_netcdf(fit_folder / "posterior.nc").posterior
    table = pd.read_parquet(fit_folder.parent / "prepared.parquet")
    design = build_design(spec, table)
    fundgap_diag = pd.read_json(fit_folder / "diagnostics.json", typ="series")
    timing = [{"engine": "fundgap (nutpie, marginal, joint)",
               "compile_s": round(fundgap_diag["compile_seconds"], 1),
               "sample_s": round(fundgap_diag["sample_seconds"], 1),
               "min_bulk_ESS": round(fundgap_diag["min_ess_bulk"]),
               "ESS_per_s": round(fundgap_diag["min_ess_bulk"]
                                  / fundgap_diag["sample_seconds"], 1),
               "divergences": int(fundgap_diag["divergences"])}]
    for form in forms:
        program = EXPLICIT if form == "explicit" else MARGINAL
        started = time.perf_counter()
        draws_by_name, divergences, sample_s, compile_s, ess = {}, 0, 0.0, 0.0, np.inf
        for name in design.equations:
            data = _data(design, name, form)
            for attempt in range(3):
                built = time.perf_counter()
                model = stan.build(program, data=data, random_seed=seed + attempt)
                compile_s += time.perf_counter() - built
                sampled = time.perf_counter()
                try:
                    fit = model.sample(num_chains=chains, num_samples=draws,
                                       num_warmup=draws)
                except RuntimeError as error:
                    # httpstan 4.13's progress logger can fail on a warm-up message
                    # ("pop from empty list"); the run is repeated with the next seed
                    print(f"{name}: Stan run failed ({str(error)[:80]}), again with seed "
                          f"{seed + attempt + 1}", flush=True)
                    continue
                finally:
                    sample_s += time.perf_counter() - sampled
                break
            divergences += int(fit["divergent__"].sum())
            named, equation_ess = _stan_draws(fit, name, design.equations[name].terms)
            draws_by_name.update(named)
            ess = min(ess, equation_ess)
        stan_posterior = draws_by_name
        timing.append({"engine": f"Stan (pystan, {form}, per equation)",
                       "compile_s": round(compile_s, 1), "sample_s": round(sample_s, 1),
                       "min_bulk_ESS": round(ess), "ESS_per_s": round(ess / sample_s, 1),
                       "divergences": divergences})
        print(f"Stan {form}: {time.perf_counter() - started:.0f} s in all", flush=True)
        print(_agreement(posterior, stan_posterior, design, form).to_markdown(
            index=False, floatfmt=".4f"), flush=True)
    print(pd.DataFrame(timing).to_markdown(index=False))


def _agreement(posterior, stan_posterior: dict, design, form: str) -> pd.DataFrame:
    """Per parameter: fundgap's and Stan's mean and sd, the difference of means in
    fundgap's posterior sds, and the sd ratio; summarised over all parameters, with the
    indirect effects a x b."""
    rows = []
    ours = {}
    for name, equation in design.equations.items():
        for var in ("alpha", "sigma", "county_sd", "prefecture_sd"):
            ours[f"{var}_{name}"] = posterior[f"{var}_{name}"].values.ravel()
        beta = posterior[f"beta_std_{name}"]
        for term in equation.terms:
            ours[f"beta_std_{name}[{term}]"] = beta.sel({f"term_{name}": term}).values.ravel()
    outcome = design.spec.outcome
    exposure = design.spec.exposure
    for mediator in design.spec.mediators:
        for store in (ours, stan_posterior):
            # a x b in the predictors' units: beta_std / sd of the predictor
            a = np.ravel(store[f"beta_std_{mediator}[{exposure}]"]) / _sd(design, mediator,
                                                                          exposure)
            b = np.ravel(store[f"beta_std_{outcome}[{mediator}]"]) / _sd(design, outcome,
                                                                         mediator)
            store[f"indirect[{mediator}]"] = a * b
    for key, mine in ours.items():
        theirs = np.ravel(stan_posterior[key])
        rows.append({"parameter": key, "fundgap_mean": mine.mean(), "stan_mean": theirs.mean(),
                     "z_difference": (theirs.mean() - mine.mean()) / mine.std(),
                     "sd_ratio": theirs.std() / mine.std()})
    frame = pd.DataFrame(rows)
    worst = frame.iloc[frame["z_difference"].abs().argsort()[::-1][:6]]
    summary = pd.DataFrame([{
        "parameter": f"all {len(frame)} ({form})",
        "fundgap_mean": np.nan, "stan_mean": np.nan,
        "z_difference": frame["z_difference"].abs().max(),
        "sd_ratio": frame["sd_ratio"].sub(1).abs().max() + 1}])
    indirect = frame[frame["parameter"].str.startswith("indirect")]
    return pd.concat([summary, indirect, worst]).drop_duplicates("parameter")


def _sd(design, equation: str, term: str) -> float:
    e = design.equations[equation]
    return float(e.x_sd[e.terms.index(term)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=Path, default=ROOT / "fits" / "default" /
                        "regional_mediation")
    parser.add_argument("--forms", nargs="+", default=["marginal", "explicit"],
                        choices=("marginal", "explicit"))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20250)
    args = parser.parse_args()
    run(args.fit, args.forms, args.chains, args.draws, args.seed)


if __name__ == "__main__":
    main()
