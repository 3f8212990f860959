"""The Laplace form against the explicit one on one grouped equation (tests/conftest.py's
grouped_table: 2,000 campaigns, 200 counties in 20 prefectures, one predictor): compile and
sampling seconds, divergences, and each reported parameter's mean, sd, bulk ESS and R-hat.

    .venv/bin/python benchmarks/laplace_forms.py [family]   (default negative_binomial)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import arviz as az
import nutpie

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fundgap.build import build_model
from fundgap.design import build_design
from fundgap.families import family
from fundgap.spec import parse_spec

from conftest import GROUPED_COLUMNS, grouped_spec_text, grouped_table


def main(family_name: str) -> None:
    table = grouped_table(family_name, 2000, 200, 20, 1)
    design = build_design(parse_spec(grouped_spec_text(family_name), "bench.toml",
                                     GROUPED_COLUMNS), table)
    names = ["coefficients_y", "intercept_y", "county_sd_y", "prefecture_sd_y",
             *(f"{a.name}_y" for a in family(family_name).auxiliary)]
    for form in ("laplace", "explicit"):
        started = time.perf_counter()
        compiled = nutpie.compile_pymc_model(
            build_model(design, laplace=("y",) if form == "laplace" else ()))
        compiled_at = time.perf_counter()
        idata = nutpie.sample(compiled, draws=500, tune=500, chains=2, seed=1,
                              progress_bar=False)
        sampled = time.perf_counter() - compiled_at
        summary = az.summary(idata, var_names=names)
        print(f"{form}: compile {compiled_at - started:.1f} s, sample {sampled:.1f} s, "
              f"{int(idata.sample_stats.diverging.sum())} divergences, min bulk ESS "
              f"{summary['ess_bulk'].min():.0f} ({summary['ess_bulk'].min() / sampled:.0f}/s)")
        print(summary[["mean", "sd", "ess_bulk", "r_hat"]].to_string())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "negative_binomial")
