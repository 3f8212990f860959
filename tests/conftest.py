"""Shared fixtures: a tiny hand-made data folder and small simulated ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fundgap.bayesian import FitSettings, fit_model
from fundgap.contract import load_dataset, read_table
from fundgap.prepare import prepare
from fundgap.simulation.development import simulate, write_simulation
from fundgap.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_COUNTIES = SHARED / "data" / "china_counties.csv"
PUBLISHED = SHARED / "spec" / "published_tables.yaml"
REGIONAL = REPO / "models" / "regional_mediation.toml"
RECOMMENDATION = REPO / "models" / "recommendation.toml"
# Two chains (two cores) with enough draws for the gate: group sds mix at about 0.3 ESS per draw.
# Each fit compiles its own frozen model (about 25 s; reusing one compiled with its data as
# inputs would cost about 220 s for the first fit), so the fixtures stay within the 10 minutes.
QUICK = FitSettings(draws=1500, tune=1000, chains=2, seed=11, progress=False)

COUNTY_VALUES = {
    # code: (schooling, non-agricultural, urbanisation, population, aged60, minority, srb)
    "110101": (12.0, 0.95, 0.98, 0.70, 0.20, 0.05, 1.05),
    "110102": (10.5, 0.80, 0.70, 0.40, 0.18, 0.02, 1.08),
    "110103": (9.0, 0.60, 0.45, 0.30, 0.16, 0.10, 1.10),
    "120101": (8.5, 0.55, 0.50, 0.50, 0.15, 0.30, 1.12),
    "120102": (7.5, 0.35, 0.30, 0.20, 0.14, 0.60, 1.15),
    "120103": (11.0, 0.70, 0.80, 0.90, 0.19, 0.01, 1.06),
}


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory: pytest.TempPathFactory):
    """The tests' own compile cache (fundgap.sampling.compile_cache), not the user's: fits of the
    same data within the session share it, and none is left behind."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUNDGAP_COMPILE_CACHE", str(tmp_path_factory.mktemp("compile_cache")))
        yield


def tiny_counties() -> pd.DataFrame:
    rows = []
    for code, values in COUNTY_VALUES.items():
        row = {"county_code": code, "county_name": f"县{code}",
               "prefecture_code": code[:4] + "00", "prefecture_name": f"市{code[:4]}",
               "province_code": code[:2] + "0000", "province_name": f"省{code[:2]}"}
        names = ("mean_years_schooling", "non_agricultural_share", "urbanisation_rate",
                 "population_millions", "aged60_share", "minority_share",
                 "sex_ratio_at_birth")
        for name, value in zip(names, values, strict=True):
            # 2010 a little lower, 2020 a little higher: the average is `value`
            shift = 0.02 * value if name != "sex_ratio_at_birth" else 0.0
            row[f"{name}_2010"] = round(value - shift / 2, 6)
            row[f"{name}_2020"] = round(value + shift / 2, 6)
        rows.append(row)
    return pd.DataFrame(rows)


def tiny_campaigns() -> pd.DataFrame:
    codes = ["110101", "110101", "110102", "110103", "120101", "120102", "120103", "120103"]
    n = len(codes)
    return pd.DataFrame({
        "campaign_id": [f"C{i}" for i in range(1, n + 1)],
        "county_code": codes,
        "channel": ["mixed", "acquaintance", "mixed", "mixed", "acquaintance", "mixed",
                    "mixed", "acquaintance"],
        "amount_raised": [50_000, 12_000, 300, 8_000, 20_000, 15_000, 40_000, 9_000],
        "target_amount": [200_000, 100_000, 50_000, 80_000, 300_000, 150_000, 250_000,
                          90_000],
        "donation_count": [350, 150, 5, 3, 3, 3, 3, 3],
        "verifier_count": [40, 10, 0, 25, 60, 12, 33, 8],
        "repost_count": [900, 120, 0, 400, 700, 220, 530, 90],
        "gender": ["male", "female", "male", "female", "male", "male", "female", "male"],
        "age": [5, 17, 18, 39, 40, 59, 60, 77],
        "disease_type": ["cancer", "leukaemia", "injury", "cancer", "kidney", "other",
                         "cancer", "cardiovascular"],
        "ses_index": [1.5, -2.0, 0.3, -0.7, 4.2, -3.1, 2.2, 0.0],
    })


def tiny_donations() -> pd.DataFrame:
    parts = [
        # C1: 350 donations of seq yuan: core = mean(1..100) / 100, derived = mean(301..350)
        pd.DataFrame({"campaign_id": "C1", "seq": np.arange(1, 351),
                      "amount": np.arange(1, 351, dtype=float)}),
        # C2: 150 donations, 10 yuan in the core window and 20 after it
        pd.DataFrame({"campaign_id": "C2", "seq": np.arange(1, 151),
                      "amount": np.where(np.arange(1, 151) <= 100, 10.0, 20.0)}),
        # C3: 5 donations of 1..5 yuan
        pd.DataFrame({"campaign_id": "C3", "seq": np.arange(1, 6),
                      "amount": np.arange(1, 6, dtype=float)}),
    ]
    for i in range(4, 9):
        parts.append(pd.DataFrame({"campaign_id": f"C{i}", "seq": [1, 2, 3],
                                   "amount": [50.0, 30.0, 10.0 * i]}))
    return pd.concat(parts, ignore_index=True)


def tiny_ratings() -> pd.DataFrame:
    image_r1 = [8, 6, 4, 7, 5, 6, 9, 3]
    text_r1 = [7, 7, 5, 6, 4, 8, 9, 2]
    image_r2 = [6, 5, 2, 6, 3, 5, 8, 1]
    text_r2 = [5, 6, 3, 5, 2, 7, 8, 0]
    rows = []
    for rater, image, text in (("R1", image_r1, text_r1), ("R2", image_r2, text_r2)):
        for i in range(8):
            rows.append({"campaign_id": f"C{i + 1}", "rater_id": rater, "dimension": "image",
                         "score": image[i]})
            rows.append({"campaign_id": f"C{i + 1}", "rater_id": rater, "dimension": "text",
                         "score": text[i]})
    return pd.DataFrame(rows)


def write_tiny(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_campaigns().to_csv(folder / "campaigns.csv", index=False)
    tiny_counties().to_csv(folder / "counties.csv", index=False)
    tiny_donations().to_csv(folder / "donations.csv", index=False)
    tiny_ratings().to_csv(folder / "ratings.csv", index=False)
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A small valid data folder whose derived values can be computed by hand."""
    return write_tiny(tmp_path / "tiny")


def edit_cell(folder: Path, file: str, row: int, column: str, value: str) -> None:
    """Set one cell (row is 1-based, as in problem messages) of a CSV in a data folder."""
    path = folder / file
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row - 1, column] = value
    frame.to_csv(path, index=False)


@pytest.fixture(scope="session")
def small_simulation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated data set (generated counties) written to disk."""
    folder = tmp_path_factory.mktemp("sim") / "small"
    write_simulation(simulate(n_campaigns=400, seed=7), folder)
    return folder


@pytest.fixture(scope="session")
def default_simulation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default data set as `make demo` makes it (real counties where available)."""
    folder = tmp_path_factory.mktemp("sim") / "default"
    counties = read_table(REAL_COUNTIES, "counties") if REAL_COUNTIES.exists() else None
    source = REAL_COUNTIES.name if counties is not None else "generated"
    write_simulation(simulate(counties=counties, counties_source=source), folder)
    return folder


@pytest.fixture(scope="session")
def small_table(small_simulation: Path) -> pd.DataFrame:
    return prepare(load_dataset(small_simulation)).table


@pytest.fixture(scope="session")
def default_table(default_simulation: Path) -> pd.DataFrame:
    return prepare(load_dataset(default_simulation)).table


@pytest.fixture(scope="session")
def regional_fit(default_table: pd.DataFrame):
    """The study model on the default-sized data (with 400 campaigns in 2,800 counties nearly
    every county is seen once, and county and residual variance cannot be told apart)."""
    return fit_model(load_spec(REGIONAL), default_table, QUICK)




# Columns of the grouped tables below, for parse_spec.
GROUPED_COLUMNS = {"campaign_id", "county_code", "prefecture_code", "x", "y"}


def grouped_table(family: str, campaigns: int, counties: int, prefectures: int, seed: int,
                  intercept: float = 0.5, slope: float = 0.4, county_sd: float = 0.3,
                  prefecture_sd: float = 0.2, dispersion: float = 5.0,
                  precision: float = 20.0, sigma: float = 0.8) -> pd.DataFrame:
    """A table with one response `y` of `family` on one predictor `x`, with county and
    prefecture intercepts (counties assigned to prefectures in turn, campaigns to counties
    at random so some hold one campaign and others many): known truth for recovery."""
    rng = np.random.default_rng(seed)
    county = rng.integers(0, counties, campaigns)
    prefecture_of = np.arange(counties) % prefectures
    county_effect = rng.normal(0, county_sd, counties)
    prefecture_effect = rng.normal(0, prefecture_sd, prefectures)
    x = rng.normal(0, 1, campaigns)
    eta = (intercept + slope * x + county_effect[county]
           + prefecture_effect[prefecture_of[county]])
    if family == "gaussian":
        y = rng.normal(eta, sigma)
    elif family == "poisson":
        y = rng.poisson(np.exp(eta))
    elif family == "negative_binomial":
        mu = np.exp(eta)
        y = rng.negative_binomial(dispersion, dispersion / (dispersion + mu))
    elif family == "bernoulli":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    elif family == "beta":
        mean = 1 / (1 + np.exp(-eta))
        y = rng.beta(mean * precision, (1 - mean) * precision)
    elif family == "censored_lognormal":  # a share of a target, capped at 1
        y = np.minimum(np.exp(rng.normal(eta, sigma)), 1.0)
    else:
        raise ValueError(family)
    return pd.DataFrame({"campaign_id": [f"C{i}" for i in range(campaigns)],
                         "county_code": [f"{c:06d}" for c in county],
                         "prefecture_code": [f"P{p:04d}" for p in prefecture_of[county]],
                         "x": x, "y": y.astype(float)})


def grouped_spec_text(family: str, groups: str = "(1|prefecture) + (1|county)") -> str:
    """A one-equation spec of `y` on `x` for grouped_table."""
    return (f'name = "one_{family}"\nexposure = "x"\noutcome = "y"\n'
            f'[equations.y]\nformula = "y ~ x + {groups}"\nfamily = "{family}"\n')
