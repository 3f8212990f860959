"""The multilevel data-generating process behind fundgap's default data, and its truth.

Campaigns sit in real (or generated) counties nested in prefectures. Four mediators depend on
development (a paths, by channel), the controls, county and prefecture random intercepts and
correlated, right-skewed residuals; log amount raised depends on development (direct path, by
channel), the mediators (b paths), the controls and its own intercepts. Parameters are data:
fundgap/simulation/development.toml.

Covariates are generated, written to files, and measured back with the same functions
`prepare` uses (factor scores, rater standardisation, donation windows), and the outcome is
generated from the measured mediators, so the truth refers exactly to what a fit sees.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from fundgap import __version__
from fundgap.factor import development_factor
from fundgap.prepare import (
    AGE_GROUPS,
    average_census,
    donation_capacities,
    emotional_ratings,
    log_reposts,
)
from fundgap.rules import COUNTY_CONTROLS, DEVELOPMENT_INDICATORS
from fundgap.simulation.observe import donation_counts, donation_stream, rater_scores
from fundgap.simulation.placement import place_campaigns, simulate_gdp, synthetic_counties
from fundgap.store import atomic_directory, frame_fingerprint, to_json, write_json

MEDIATORS = ("core_capacity", "derived_capacity", "verifier_count", "log_reposts")
OUTCOME = "log_amount_raised"
CHANNELS = ("acquaintance", "mixed")
DEFAULT_SEED = 20250
DEFAULT_N = 2057
NUMERIC_CONTROLS = ("target_amount_10k", "male", "ses_index", "recommended",
                    "emotional_rating", *COUNTY_CONTROLS)


def default_parameters() -> dict:
    """The default data-generating parameters (a fresh dict each call)."""
    text = resources.files("fundgap.simulation").joinpath("development.toml").read_text("utf-8")
    return tomllib.loads(text)


@dataclass
class Simulation:
    """A simulated data set in the contract, plus the truth that generated it."""

    campaigns: pd.DataFrame
    counties: pd.DataFrame
    donations: pd.DataFrame
    ratings: pd.DataFrame
    truth: dict
    intercepts: pd.DataFrame

    def write(self, folder: str | Path) -> Path:
        """Write it as a data folder (with its truth), atomically: `write_simulation`."""
        return write_simulation(self, folder)


def _control_matrix(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Numeric controls and level dummies, in the naming of simulation.toml."""
    columns = {}
    for name in names:
        if "[" in name:
            variable, level = name[:-1].split("[", 1)
            columns[name] = (table[variable].astype(str) == level).astype(float)
        else:
            columns[name] = table[name].astype(float)
    return pd.DataFrame(columns, index=table.index)


def _skewed(z: np.ndarray, shape: float) -> np.ndarray:
    """Mean 0, sd 1 transform of standard normals; shape > 0 gives a shifted lognormal."""
    if shape <= 0:
        return z
    raw = np.exp(shape * z)
    return (raw - np.exp(shape**2 / 2)) / np.sqrt((np.exp(shape**2) - 1) * np.exp(shape**2))


def _campaign_covariates(n: int, development: np.ndarray, sample: dict,
                         rng: np.random.Generator) -> pd.DataFrame:
    """Channel, gender, age, disease, target and SES for each campaign."""
    slope = sample["recommend_logit_development"]
    recommended = rng.random(n) < expit(logit(sample["mixed_share"]) + slope * development)
    child = rng.random(n) < sample["child_share"]
    adult_age = np.clip(np.round(rng.normal(sample["adult_age_mean"], sample["adult_age_sd"], n)),
                        18, 78)
    diseases = sample["disease_types"]
    weights = np.array(list(diseases.values()), dtype=float)
    target = np.exp(rng.normal(sample["target_10k_log_mean"], sample["target_10k_log_sd"], n))
    ses_noise = np.sqrt(sample["ses_sd"] ** 2 - sample["ses_development_slope"] ** 2)
    return pd.DataFrame({
        "channel": np.where(recommended, "mixed", "acquaintance"),
        "recommended": recommended.astype(int),
        "gender": np.where(rng.random(n) < sample["male_share"], "male", "female"),
        "age": np.where(child, rng.integers(0, 18, n), adult_age).astype(int),
        "disease_type": rng.choice(list(diseases), size=n, p=weights / weights.sum()),
        "target_amount_10k": np.round(np.clip(target, 2.0, 100.0), 1),
        "ses_index": np.round(sample["ses_development_slope"] * development
                              + rng.normal(0, ses_noise, n), 3),
    })


def _intercepts(codes: pd.Series, sd: float, rng: np.random.Generator) -> pd.Series:
    levels = np.sort(codes.unique())
    return pd.Series(rng.normal(0, sd, len(levels)), index=levels)


def group_intercepts(table: pd.DataFrame, equations: dict[str, dict],
                     rng: np.random.Generator) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """County and prefecture intercepts of each equation (`county_sd`, `prefecture_sd` in its
    parameters), drawn in order: their sum per campaign, and the draws as truth_intercepts
    rows (level, code, equation, value)."""
    random_part, rows = {}, []
    for name, spec in equations.items():
        county = _intercepts(table["county_code"], spec["county_sd"], rng)
        prefecture = _intercepts(table["prefecture_code"], spec["prefecture_sd"], rng)
        random_part[name] = (table["county_code"].map(county).to_numpy()
                             + table["prefecture_code"].map(prefecture).to_numpy())
        for level, values in (("county", county), ("prefecture", prefecture)):
            rows.append(pd.DataFrame({"level": level, "code": values.index,
                                      "equation": name, "value": values.to_numpy()}))
    return random_part, pd.concat(rows, ignore_index=True)


def simulate_campaigns(n_campaigns: int, counties: pd.DataFrame | None, params: dict,
                       rng_h: np.random.Generator, rng_place: np.random.Generator,
                       rng_cov: np.random.Generator, rng_rate: np.random.Generator,
                       rng_gdp: np.random.Generator
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict, dict]:
    """What both designs share: counties (generated if None) with GDP, campaigns placed in
    them with development, covariates and SES, and two raters' scores measured back into
    image, text and emotional ratings. Returns (table, counties, ratings, rating ICCs,
    development factor)."""
    sample = params["sample"]
    if counties is None:
        counties = synthetic_counties(rng_h)
    counties = simulate_gdp(counties, rng_gdp, params["gdp"])
    table = pd.DataFrame({"campaign_id": [f"C{i:07d}" for i in range(1, n_campaigns + 1)],
                          "county_code": place_campaigns(counties, n_campaigns, rng_place)})
    averaged, _ = average_census(counties, set(table["county_code"]))
    hierarchy = counties[["county_code", "prefecture_code"]]
    table = table.merge(hierarchy, on="county_code").merge(averaged, on="county_code")
    development, factor = development_factor(table[list(DEVELOPMENT_INDICATORS)],
                                             orient_by="mean_years_schooling")
    table["development"] = development.to_numpy()
    d = table["development"].to_numpy()
    table = pd.concat([table, _campaign_covariates(n_campaigns, d, sample, rng_cov)], axis=1)
    age = table["age"].to_numpy()
    labels = [label for label, _ in AGE_GROUPS]
    table["age_group"] = np.array(labels)[np.searchsorted([low for _, low in AGE_GROUPS], age,
                                                          side="right") - 1]
    table["male"] = (table["gender"] == "male").astype(int)

    ratings = rater_scores(table["campaign_id"].to_numpy(), rng_rate,
                           tuple(params["ratings"]["campaigns_per_rater"]),
                           params["ratings"]["dimension_correlation"],
                           params["ratings"]["noise_sd"], params["ratings"]["severity_mean"],
                           params["ratings"]["severity_sd"],
                           tuple(params["ratings"]["scale_range"]))
    rated, icc = emotional_ratings(ratings)
    for column in ("text_rating", "emotional_rating"):
        table[column] = rated[column].reindex(table["campaign_id"]).to_numpy()
    return table, counties, ratings, icc, factor.to_dict()


def simulate(n_campaigns: int = DEFAULT_N, seed: int = DEFAULT_SEED,
             counties: pd.DataFrame | None = None, parameters: dict | None = None,
             counties_source: str = "generated") -> Simulation:
    """Simulate a data set in the contract (campaigns, counties, donations, ratings) + truth."""
    params = parameters or default_parameters()
    sample, paths, equations = params["sample"], params["paths"], params["equations"]
    streams = np.random.SeedSequence(seed).spawn(8)
    rng_h, rng_place, rng_cov, rng_rate, rng_re, rng_eps, rng_don, rng_gdp = (
        np.random.default_rng(s) for s in streams)

    settings = simulation_settings(n_campaigns, seed, counties, counties_source, params)
    table, counties, ratings, icc, factor = simulate_campaigns(
        n_campaigns, counties, params, rng_h, rng_place, rng_cov, rng_rate, rng_gdp)
    d = table["development"].to_numpy()

    channel = (table["channel"] == "mixed").to_numpy().astype(int)  # 0 acquaintance, 1 mixed
    random_part, intercepts = group_intercepts(
        table, {name: equations[name] for name in (*MEDIATORS, OUTCOME)}, rng_re)

    control_means: dict[str, dict[str, float]] = {}
    correlation = np.asarray(params["residual_correlation"]["matrix"], dtype=float)
    copula = rng_eps.multivariate_normal(np.zeros(len(MEDIATORS)), correlation, n_campaigns)
    latent_mediator, residual_sd, clipped = {}, {}, {}
    for j, name in enumerate(MEDIATORS):
        spec = equations[name]
        controls = _control_matrix(table, list(spec["controls"]))
        control_means[name] = controls.mean().to_dict()
        slope = np.asarray(paths["a"][name])[channel]
        systematic = (spec["mean"] + slope * d
                      + (controls - controls.mean()).to_numpy() @ np.array(
                          list(spec["controls"].values()))
                      + random_part[name])
        left = spec["sd"] ** 2 - np.var(systematic)
        residual_sd[name] = float(np.sqrt(max(left, (0.3 * spec["sd"]) ** 2)))
        value = systematic + residual_sd[name] * _skewed(copula[:, j], spec["skew"])
        if "floor" in spec:
            clipped[name] = int((value < spec["floor"]).sum())
            value = np.maximum(value, spec["floor"])
        latent_mediator[name] = value

    table["verifier_count"] = np.round(latent_mediator["verifier_count"]).astype(int)
    table["repost_count"] = np.maximum(
        np.round(np.exp(latent_mediator["log_reposts"]) - 1), 0).astype(int)
    table["log_reposts"] = log_reposts(table["repost_count"]).to_numpy()

    out = equations[OUTCOME]
    outcome_controls = _control_matrix(table, list(out["controls"]))
    control_means[OUTCOME] = outcome_controls.mean().to_dict()
    outcome_base = (out["mean"] + np.asarray(paths["direct"])[channel] * d
                    + (outcome_controls - outcome_controls.mean()).to_numpy()
                    @ np.array(list(out["controls"].values()))
                    + random_part[OUTCOME] + out["residual_sd"] * rng_eps.standard_normal(
                        n_campaigns))
    mediator_means = {m: float(np.mean(latent_mediator[m])) for m in MEDIATORS}

    def outcome(mediators: dict[str, np.ndarray]) -> np.ndarray:
        return outcome_base + sum(paths["b"][m] * (mediators[m] - mediator_means[m])
                                  for m in MEDIATORS)

    # Stream length follows from a preliminary amount; the capacities a fit sees are then
    # measured from the stream, and the outcome is generated from those measurements.
    preliminary = np.exp(outcome(latent_mediator)) * 1e4
    counts = donation_counts(preliminary, latent_mediator["core_capacity"],
                             latent_mediator["derived_capacity"])
    donations = donation_stream(table["campaign_id"].to_numpy(), counts,
                                latent_mediator["core_capacity"],
                                latent_mediator["derived_capacity"], rng_don,
                                cap=int(sample["stream_cap"]),
                                weight_sd=sample["donation_weight_sd"])
    measured = donation_capacities(donations).reindex(table["campaign_id"])
    table["core_capacity"] = measured["core_capacity"].to_numpy()
    table["derived_capacity"] = measured["derived_capacity"].to_numpy()
    observed = {m: table[m].to_numpy(dtype=float) for m in MEDIATORS}
    table["amount_raised"] = np.maximum(np.round(np.exp(outcome(observed)) * 1e4, 2), 0.01)
    table["donation_count"] = counts

    campaigns = pd.DataFrame({
        "campaign_id": table["campaign_id"],
        "county_code": table["county_code"],
        "channel": table["channel"],
        "amount_raised": table["amount_raised"],
        "target_amount": np.round(table["target_amount_10k"] * 1e4, 2),
        "donation_count": table["donation_count"],
        "verifier_count": table["verifier_count"],
        "repost_count": table["repost_count"],
        "gender": table["gender"],
        "age": table["age"],
        "disease_type": table["disease_type"],
        "ses_index": table["ses_index"],
    })
    truth = _truth(params, table, control_means, mediator_means, residual_sd, clipped,
                   measured["derived_capacity_rule"].value_counts().to_dict(), icc,
                   factor)
    truth["settings"] = settings
    return Simulation(campaigns, counties, donations, ratings, truth, intercepts)


def channel_effects(paths: dict, weights: dict[str, float]) -> dict:
    """Total, direct, indirect effects and shares per 1 sd of development: by channel and
    pooled over channels with the given weights (b paths are common to both channels)."""
    effects = {}
    for k, channel in enumerate(CHANNELS):
        a = {m: paths["a"][m][k] for m in MEDIATORS}
        effects[channel] = _decompose(a, paths["b"], paths["direct"][k])
    pooled_a = {m: sum(weights[c] * paths["a"][m][k] for k, c in enumerate(CHANNELS))
                for m in MEDIATORS}
    pooled_direct = sum(weights[c] * paths["direct"][k] for k, c in enumerate(CHANNELS))
    effects["pooled"] = _decompose(pooled_a, paths["b"], pooled_direct)
    return effects


def _decompose(a: dict, b: dict, direct: float) -> dict:
    indirect = {m: a[m] * b[m] for m in MEDIATORS}
    total = direct + sum(indirect.values())
    return {"a": a, "b": dict(b), "direct": direct, "indirect": indirect, "total": total,
            "share": {m: indirect[m] / total for m in MEDIATORS}}


def _truth(params: dict, table: pd.DataFrame, control_means: dict, mediator_means: dict,
           residual_sd: dict, clipped: dict, rules: dict, icc: dict, factor: dict) -> dict:
    equations = params["equations"]
    mixed = float(table["recommended"].mean())
    weights = {"acquaintance": 1 - mixed, "mixed": mixed}
    equations_truth = {}
    for name in (*MEDIATORS, OUTCOME):
        spec = equations[name]
        coefficients = dict(spec["controls"])
        intercept = spec["mean"] - sum(coefficients[k] * control_means[name][k]
                                       for k in coefficients)
        if name == OUTCOME:
            intercept -= sum(params["paths"]["b"][m] * mediator_means[m] for m in MEDIATORS)
            coefficients.update(params["paths"]["b"])
            slopes = params["paths"]["direct"]
        else:
            slopes = params["paths"]["a"][name]
        equations_truth[name] = {
            "intercept": intercept,
            "development": dict(zip(CHANNELS, slopes, strict=True)),
            "development_pooled": sum(weights[c] * s for c, s in zip(CHANNELS, slopes,
                                                                     strict=True)),
            "coefficients": coefficients,
            "county_sd": spec["county_sd"],
            "prefecture_sd": spec["prefecture_sd"],
            "residual_sd": residual_sd.get(name, spec.get("residual_sd")),
            "residual_skew": spec["skew"],
        }
    return {
        "simulated": True,
        "description": "Simulated data from fundgap's multilevel data-generating process; "
                       "not real campaigns.",
        "effects_per_sd_development": channel_effects(params["paths"], weights),
        "channel_weights": weights,
        # recommended is drawn first, from development alone (no county effects): the
        # logit of recommended on development only recovers these
        "recommendation": {
            "logit_intercept": float(np.log(params["sample"]["mixed_share"]
                                            / (1 - params["sample"]["mixed_share"]))),
            "logit_development": params["sample"]["recommend_logit_development"],
        },
        "equations": equations_truth,
        "mediator_residual_correlation": params["residual_correlation"]["matrix"],
        "floor_clipped": clipped,
        "derived_capacity_rules": {str(k): int(v) for k, v in rules.items()},
        "rating_icc": icc,
        "development_factor": factor,
        "parameters": params,
        "notes": [
            "Effects are per 1 sd of the prepared development factor, conditional on the "
            "controls; 'pooled' averages the channels with their sample shares.",
            "Mediator values are those prepare() measures from the written files; the outcome "
            "is generated from them. Where a floor was hit or a donation stream was too short "
            "(see floor_clipped and derived_capacity_rules) the mediator equations hold only "
            "approximately.",
        ],
    }


README_TEXT = """# Simulated data (not real campaigns)

Written by `fundgap simulate` (fundgap {version}), seed {seed}, {n} campaigns, counties:
{source}. Every campaign, donation and rating here is simulated from fundgap's
multilevel data-generating process; `truth.json` holds every true parameter and the true
total, direct and indirect effects per 1 sd of development, by channel and pooled;
`truth_intercepts.csv` the drawn county and prefecture intercepts. GDP per capita in
counties.csv is simulated from the other indicators (column gdp_per_capita_simulated).
The donation stream is cut at {cap} donations per campaign; donation_count is the full count.
"""


README_SES_TEXT = """# Simulated companion-study data (not real campaigns)

Written by `fundgap simulate --design ses` (fundgap {version}), seed {seed}, {n} campaigns,
counties: {source}. The household SES design of the 2022 study: SES drives the offline
network (verifier_count, core capacity from donations.csv) and four outcomes (repost_count,
donation_count, amount_raised and, through target_amount, target completion); text quality
(the text dimension of ratings.csv) raises the outcomes without depending on SES.
`truth.json` holds every parameter and the true effects per SES point by channel
(`effects_per_ses_point`); `truth_intercepts.csv` the drawn county and prefecture intercepts.
The donation stream is cut at {cap} donations per campaign; donation_count is the full count.
"""


def write_simulation(simulation: Simulation, folder: str | Path) -> Path:
    """Write the data set, truth and a README into `folder`, atomically."""
    folder = Path(folder)
    settings = simulation.truth["settings"]
    with atomic_directory(folder) as temporary:
        for name in ("campaigns", "counties", "donations", "ratings"):
            getattr(simulation, name).to_csv(temporary / f"{name}.csv", index=False,
                                             lineterminator="\n")
        simulation.intercepts.to_csv(temporary / "truth_intercepts.csv", index=False,
                                     lineterminator="\n")
        write_json(simulation.truth, temporary / "truth.json")
        readme = README_SES_TEXT if simulation.truth.get("design") == "ses" else README_TEXT
        (temporary / "README.md").write_text(readme.format(
            version=settings["fundgap_version"], seed=settings["seed"],
            n=settings["n_campaigns"], source=settings["counties_source"],
            cap=simulation.truth["parameters"]["sample"]["stream_cap"]), encoding="utf-8")
    return folder


def simulation_settings(n_campaigns: int, seed: int, counties: pd.DataFrame | None,
                        counties_source: str, parameters: dict | None = None) -> dict:
    """What decides a simulated data set: compared by `--reuse` before simulating again."""
    params = parameters or default_parameters()
    return {"seed": seed, "n_campaigns": n_campaigns, "counties_source": counties_source,
            "counties_fingerprint": None if counties is None else frame_fingerprint(counties),
            "parameters_fingerprint": hashlib.sha256(to_json(params).encode()).hexdigest(),
            "fundgap_version": __version__}


def reusable(folder: str | Path, settings: dict) -> bool:
    """True when `folder` holds a complete simulation made with the same settings."""
    path = Path(folder) / "truth.json"
    if not path.is_file():
        return False
    recorded = json.loads(path.read_text("utf-8")).get("settings", {})
    return to_json(recorded) == to_json(settings)
