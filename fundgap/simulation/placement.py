"""Where simulated campaigns live: a county table (real or generated) and campaign placement.

A real table in the contract's format (../shared/data/china_counties.csv) is used as given,
plus a simulated GDP per capita, flagged as simulated, since no open county source exists.
Without one, `synthetic_counties` generates a plausible province > prefecture > county
hierarchy with census-like indicators for 2010 and 2020.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from fundgap.prepare import average_census
from fundgap.rules import CENSUS_YEARS, COUNTY_CONTROLS, DEVELOPMENT_INDICATORS

# Province code prefixes of mainland China (31 provincial units).
PROVINCE_PREFIXES = (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43,
                     44, 45, 46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65)
# Campaign pool per county is about POOL_PER_MILLION * population (millions) per 2,057
# campaigns: sampling without replacement from it reproduces the study's county occupancy
# (about 1,400 counties, 47% of campaigns alone in their county, 28% in pairs).
POOL_PER_MILLION = 6.0
STUDY_SIZE = 2057


def synthetic_counties(rng: np.random.Generator, mean_prefectures: float = 10.0,
                       mean_counties: float = 7.4) -> pd.DataFrame:
    """A generated county table in the contract's format (without GDP), about 2,850 rows."""
    rows = []
    for prefix in PROVINCE_PREFIXES:
        province_effect = rng.normal(0, 0.6)
        for j in range(1, min(1 + rng.poisson(mean_prefectures) + 1, 90)):
            prefecture_effect = province_effect + rng.normal(0, 0.5)
            for k in range(1, min(1 + rng.poisson(mean_counties) + 1, 99)):
                rows.append((f"{prefix}{j:02d}{k:02d}", f"{prefix}{j:02d}00", f"{prefix}0000",
                             prefecture_effect + rng.normal(0, 0.7)))
    frame = pd.DataFrame(rows, columns=["county_code", "prefecture_code", "province_code",
                                        "latent"])
    n = len(frame)
    latent = ((frame["latent"] - frame["latent"].mean()) / frame["latent"].std()).to_numpy()
    frame["county_name"] = "模拟县" + frame["county_code"]
    frame["prefecture_name"] = "模拟市" + frame["prefecture_code"]
    frame["province_name"] = "模拟省" + frame["province_code"]

    def noise(sd: float) -> np.ndarray:
        return rng.normal(0, sd, n)

    school_2020 = 9.07 + 1.1 * latent + noise(0.45)
    nonag_2020 = expit(1.2 + 1.0 * latent + noise(0.45))
    urban_2020 = expit(0.35 + 1.0 * latent + noise(0.4))
    pop_2020 = np.exp(-1.0 + noise(0.75))
    aged_2020 = np.clip(0.19 + 0.015 * latent + noise(0.05), 0.03, 0.40)
    heavy = rng.random(n) < 0.2
    minority = np.where(heavy, rng.beta(1.5, 2.0, n), rng.beta(0.5, 40.0, n))
    values = {
        "mean_years_schooling": (school_2020 - 0.27 + noise(0.3), school_2020),
        "non_agricultural_share": (expit(logit(nonag_2020) - 1.2 + noise(0.4)), nonag_2020),
        "urbanisation_rate": (expit(logit(urban_2020) - 0.5 + noise(0.3)), urban_2020),
        "population_millions": (pop_2020 * np.exp(0.02 + noise(0.1)), pop_2020),
        "aged60_share": (np.clip(aged_2020 - 0.06 + noise(0.015), 0.02, 0.35), aged_2020),
        "minority_share": (np.clip(minority + noise(0.01), 0, 1), np.clip(minority, 0, 1)),
        "sex_ratio_at_birth": (1.155 + noise(0.09), 1.10 + noise(0.06)),
    }
    for name, (v2010, v2020) in values.items():
        frame[f"{name}_2010"] = np.round(v2010, 5)
        frame[f"{name}_2020"] = np.round(v2020, 5)
    return frame.drop(columns="latent")


def simulate_gdp(counties: pd.DataFrame, rng: np.random.Generator,
                 gdp: dict) -> pd.DataFrame:
    """Add gdp_per_capita_2010/_2020 (yuan), generated from the other indicators of the same
    year and flagged in `gdp_per_capita_simulated`; missing where those indicators are.

    `gdp` holds the [gdp] keys of simulation.toml: log-level in 2020, log-change to 2010,
    weights on the standardised schooling, non-agricultural and urbanisation indicators, and
    the sd of a county effect shared by both years and of yearly noise.
    """
    out = counties.copy()
    county_effect = rng.normal(0, gdp["county_sd"], len(out))
    for year in CENSUS_YEARS:
        parts = [out[f"{name}_{year}"].astype(float) for name in DEVELOPMENT_INDICATORS[:3]]
        z = sum(w * (p - p.mean()) / p.std() for w, p in zip(gdp["weights"], parts,
                                                             strict=True))
        level = np.log(gdp["level_2020"]) + (gdp["log_change_2010"] if year == 2010 else 0.0)
        log_gdp = level + z + county_effect + rng.normal(0, gdp["year_sd"], len(out))
        out[f"gdp_per_capita_{year}"] = np.round(np.exp(log_gdp))
    out["gdp_per_capita_simulated"] = True
    return out


def usable_counties(counties: pd.DataFrame) -> pd.DataFrame:
    """Counties with every averaged indicator and control available and a population > 0."""
    averaged, _ = average_census(counties)
    needed = [c for c in (*DEVELOPMENT_INDICATORS, *COUNTY_CONTROLS) if c in averaged]
    ok = averaged[needed].notna().all(axis=1) & (averaged["population_millions"] > 0)
    return averaged[ok.to_numpy()].reset_index(drop=True)


def place_campaigns(counties: pd.DataFrame, n_campaigns: int,
                    rng: np.random.Generator) -> np.ndarray:
    """County code of each of `n_campaigns` campaigns.

    Each usable county holds a pool of potential campaigns in proportion to its population
    (at least one); campaigns are drawn from the pooled list without replacement, which
    spreads them more evenly than independent draws, as in the study's sample.
    """
    usable = usable_counties(counties)
    scale = POOL_PER_MILLION * n_campaigns / STUDY_SIZE
    pool = np.maximum(1, np.round(scale * usable["population_millions"].to_numpy())).astype(int)
    while pool.sum() < n_campaigns:
        pool *= 2
    slots = np.repeat(np.arange(len(usable)), pool)
    chosen = rng.choice(slots, size=n_campaigns, replace=False)
    return usable["county_code"].to_numpy()[chosen]
