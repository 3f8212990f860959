"""The companion study's data-generating process (household SES, four outcomes) and its truth.

Campaigns, counties, covariates and raters are those of the default design
(`simulate.simulate_campaigns`). Then, per campaign, with s its SES index and c its channel:

    verifier_count, core_capacity = linear in s (slope by channel), controls, county and
        prefecture intercepts, correlated residuals, floors        (the offline network)
    text_rating                   = measured from the raters; independent of s
    eta_k = log mean (counts) or mean (log amount) of outcome k
          = mean_k + direct_k[c] s + sum_m b_km M_m + controls + intercepts
    repost_count, donation_count  ~ negative binomial(exp(eta_k), dispersion_k)
    log_amount_raised             = eta + residual sd * z
    target_completion             = min(amount / target, 1)       (written as amount, target)

The count and amount residuals share a Gaussian copula. The truth (truth.json) is what the
fitted model's g-computation estimates, computed from this process with its noise held fixed
(common random numbers): for each outcome and channel, the average change in the outcome's
expected value when SES rises by one point (total), with the mediators held at their values
(direct), and with one mediator moved alone (indirect). Parameters are data:
fundgap/simulation/ses.toml.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd
from scipy import stats

from fundgap.censored import censored_share_mean
from fundgap.prepare import donation_capacities
from fundgap.simulation.development import (
    CHANNELS,
    Simulation,
    _control_matrix,
    default_parameters,
    group_intercepts,
    simulate_campaigns,
    simulation_settings,
)
from fundgap.simulation.observe import donation_stream

MEDIATORS = ("verifier_count", "core_capacity", "text_rating")
GENERATED_MEDIATORS = ("verifier_count", "core_capacity")
COUNT_OUTCOMES = ("repost_count", "donation_count")
OUTCOMES = (*COUNT_OUTCOMES, "log_amount_raised", "target_completion")


def ses_parameters() -> dict:
    """The companion design's parameters, with the shared sections (sample, gdp, ratings)
    of the default design (a fresh dict each call)."""
    text = resources.files("fundgap.simulation").joinpath("ses.toml").read_text(
        "utf-8")
    shared = default_parameters()
    return {**{k: shared[k] for k in ("sample", "gdp", "ratings")}, **tomllib.loads(text)}


def completion_mean(eta: np.ndarray, sigma: float, target: np.ndarray) -> np.ndarray:
    """E[min(exp(eta + sigma z) / target, 1)] for z standard normal, in closed form (the
    censored_lognormal family's mean at eta - log target)."""
    return censored_share_mean(eta - np.log(target), sigma)


@dataclass
class _Process:
    """The process with its noise frozen: mediators and outcome means at any SES shift."""

    params: dict
    table: pd.DataFrame
    channel: np.ndarray                      # 0 acquaintance, 1 mixed
    mediator_base: dict[str, np.ndarray]     # everything but the SES shift and the floor
    mediator_centre: dict[str, float]
    outcome_base: dict[str, np.ndarray]      # everything but SES shift and mediator terms

    def mediators(self, shift: float, moved: tuple[str, ...] = GENERATED_MEDIATORS
                  ) -> dict[str, np.ndarray]:
        """Mediator values with SES raised by `shift` for those in `moved`."""
        values = {}
        for name in GENERATED_MEDIATORS:
            spec = self.params["mediators"][name]
            slope = np.asarray(spec["ses"])[self.channel] * (shift if name in moved else 0.0)
            value = np.maximum(self.mediator_base[name] + slope, spec["floor"])
            values[name] = np.round(value) if name == "verifier_count" else value
        values["text_rating"] = self.table["text_rating"].to_numpy()
        return values

    def linear_predictors(self, shift: float, mediators: dict[str, np.ndarray]
                          ) -> dict[str, np.ndarray]:
        etas = {}
        for name, base in self.outcome_base.items():
            spec = self.params["outcomes"][name]
            eta = base + np.asarray(spec["ses"])[self.channel] * shift
            etas[name] = eta + sum(spec["b"][m] * (mediators[m] - self.mediator_centre[m])
                                   for m in MEDIATORS)
        return etas

    def means(self, shift: float, mediators: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each outcome's expected value per campaign (on the scale a fit reports)."""
        etas = self.linear_predictors(shift, mediators)
        sigma = self.params["outcomes"]["log_amount_raised"]["residual_sd"]
        out = {name: np.exp(etas[name]) for name in COUNT_OUTCOMES}
        out["log_amount_raised"] = etas["log_amount_raised"]
        out["target_completion"] = completion_mean(etas["log_amount_raised"], sigma,
                                                   self.table["target_amount_10k"].to_numpy())
        return out


def _effects(process: _Process, rows: np.ndarray) -> dict:
    """Total, direct, indirect effects, a paths and shares per SES point over `rows`."""
    before = process.mediators(0.0)
    after = process.mediators(1.0)
    base = process.means(0.0, before)
    direct_means = process.means(1.0, before)
    total_means = process.means(1.0, after)
    alone = {m: process.means(1.0, {**before, m: after[m]}) for m in MEDIATORS}
    out = {}
    for outcome in OUTCOMES:
        total = float(np.mean(total_means[outcome][rows] - base[outcome][rows]))
        direct = float(np.mean(direct_means[outcome][rows] - base[outcome][rows]))
        indirect = {m: float(np.mean(alone[m][outcome][rows] - direct_means[outcome][rows]))
                    for m in MEDIATORS}
        out[outcome] = {"total": total, "direct": direct, "indirect": indirect,
                        "share": {m: v / total for m, v in indirect.items()},
                        "a": {m: float(np.mean(after[m][rows] - before[m][rows]))
                              for m in MEDIATORS}}
        # log(target completion) is log amount - log target below the cap, so its b paths
        # (a censored lognormal equation's) are the amount's
        source = "log_amount_raised" if outcome == "target_completion" else outcome
        out[outcome]["b"] = dict(process.params["outcomes"][source]["b"])
    return out


def simulate_ses(n_campaigns: int | None = None, seed: int | None = None,
                 counties: pd.DataFrame | None = None, parameters: dict | None = None,
                 counties_source: str = "generated") -> Simulation:
    """Simulate the companion design's data set (same contract as the default) + truth."""
    params = parameters or ses_parameters()
    n_campaigns = n_campaigns or int(params["n_campaigns"])
    seed = int(params["seed"]) if seed is None else seed
    streams = np.random.SeedSequence(seed).spawn(8)
    rng_h, rng_place, rng_cov, rng_rate, rng_re, rng_eps, rng_don, rng_gdp = (
        np.random.default_rng(s) for s in streams)
    settings = {**simulation_settings(n_campaigns, seed, counties, counties_source, params),
                "design": "ses"}
    table, counties, ratings, icc, _ = simulate_campaigns(
        n_campaigns, counties, params, rng_h, rng_place, rng_cov, rng_rate, rng_gdp)
    table["text_rating"] = table["text_rating"].fillna(0.0)
    channel = (table["channel"] == "mixed").to_numpy().astype(int)
    ses = table["ses_index"].to_numpy()
    ses_centred = ses - ses.mean()

    random_part, intercepts = group_intercepts(
        table, {**params["mediators"], **params["outcomes"]}, rng_re)

    def controls(spec: dict) -> np.ndarray:
        matrix = _control_matrix(table, list(spec["controls"]))
        return (matrix - matrix.mean()).to_numpy() @ np.array(list(spec["controls"].values()))

    copula = rng_eps.multivariate_normal(
        np.zeros(2), params["mediator_residual_correlation"]["matrix"], n_campaigns)
    mediator_base, residual_sd = {}, {}
    for j, name in enumerate(GENERATED_MEDIATORS):
        spec = params["mediators"][name]
        systematic = (spec["mean"] + np.asarray(spec["ses"])[channel] * ses_centred
                      + controls(spec) + random_part[name])
        residual_sd[name] = float(np.sqrt(max(spec["sd"] ** 2 - np.var(systematic),
                                              (0.3 * spec["sd"]) ** 2)))
        mediator_base[name] = systematic + residual_sd[name] * copula[:, j]

    outcome_noise = rng_eps.multivariate_normal(
        np.zeros(3), params["outcome_residual_correlation"]["matrix"], n_campaigns)
    outcome_base = {}
    for name, spec in params["outcomes"].items():
        centre = spec["log_mean"] if spec["family"] == "negative_binomial" else spec["mean"]
        outcome_base[name] = (centre + np.asarray(spec["ses"])[channel] * ses_centred
                              + controls(spec) + random_part[name])
    process = _Process(params, table, channel, mediator_base, {}, outcome_base)
    observed = process.mediators(0.0)
    process.mediator_centre = {m: float(np.mean(observed[m])) for m in MEDIATORS}
    etas = process.linear_predictors(0.0, observed)

    counts, clipped = {}, {}
    for j, name in enumerate(COUNT_OUTCOMES):
        dispersion = params["outcomes"][name]["dispersion"]
        mean = np.exp(etas[name])
        drawn = stats.nbinom.ppf(stats.norm.cdf(outcome_noise[:, j]), dispersion,
                                 dispersion / (dispersion + mean)).astype(int)
        clipped[name] = int((drawn < 1).sum())
        counts[name] = np.maximum(drawn, 1)   # a campaign with no donor has no stream
    sigma = params["outcomes"]["log_amount_raised"]["residual_sd"]
    amount = np.exp(etas["log_amount_raised"] + sigma * outcome_noise[:, 2]) * 1e4

    core = observed["core_capacity"]
    derived = np.maximum(core * params["stream"]["derived_ratio"] * np.exp(
        params["stream"]["derived_noise_sd"] * rng_don.standard_normal(n_campaigns)), 0.02)
    donations = donation_stream(table["campaign_id"].to_numpy(), counts["donation_count"],
                                core, derived, rng_don, cap=int(params["sample"]["stream_cap"]),
                                weight_sd=params["sample"]["donation_weight_sd"])
    measured = donation_capacities(donations).reindex(table["campaign_id"])

    campaigns = pd.DataFrame({
        "campaign_id": table["campaign_id"],
        "county_code": table["county_code"],
        "channel": table["channel"],
        "amount_raised": np.maximum(np.round(amount, 2), 0.01),
        "target_amount": np.round(table["target_amount_10k"] * 1e4, 2),
        "donation_count": counts["donation_count"],
        "verifier_count": observed["verifier_count"].astype(int),
        "repost_count": counts["repost_count"],
        "gender": table["gender"],
        "age": table["age"],
        "disease_type": table["disease_type"],
        "ses_index": table["ses_index"],
    })
    weights = {c: float(np.mean(channel == k)) for k, c in enumerate(CHANNELS)}
    effects = {c: _effects(process, np.flatnonzero(channel == k))
               for k, c in enumerate(CHANNELS)}
    effects["pooled"] = _effects(process, np.arange(n_campaigns))
    truth = {
        "simulated": True,
        "design": "ses",
        "description": "Simulated data from fundgap's companion (household SES) design; "
                       "not real campaigns.",
        "effects_per_ses_point": effects,
        "channel_weights": weights,
        "equations": _equation_truth(params, residual_sd),
        "core_capacity_measurement_error": float(np.max(np.abs(
            measured["core_capacity"].to_numpy() - core))),
        "count_floor_clipped": clipped,
        "rating_icc": icc,
        "parameters": params,
        "settings": settings,
        "notes": [
            "Effects are per point of the SES index, by channel and over all campaigns "
            "('pooled'), on each outcome's own scale: expected counts for repost_count and "
            "donation_count, log amount, and the expected share of the target.",
            "direct: SES raised with the mediators held; indirect: one mediator moved alone "
            "with SES raised; total = direct + the joint indirect effect (for the counts and "
            "completion the single indirect effects need not add up to it).",
            "Amount raised, donation count and the written donation stream come from "
            "separate equations with correlated residuals; they are not forced to add up.",
        ],
    }
    return Simulation(campaigns, counties, donations, ratings, truth, intercepts)


def _equation_truth(params: dict, residual_sd: dict[str, float]) -> dict:
    out = {}
    for name, spec in params["mediators"].items():
        out[name] = {"ses_index": dict(zip(CHANNELS, spec["ses"], strict=True)),
                     "coefficients": dict(spec["controls"]), "county_sd": spec["county_sd"],
                     "prefecture_sd": spec["prefecture_sd"],
                     "residual_sd": residual_sd[name]}
    for name, spec in params["outcomes"].items():
        out[name] = {"family": spec["family"],
                     "ses_index": dict(zip(CHANNELS, spec["ses"], strict=True)),
                     "b": dict(spec["b"]), "coefficients": dict(spec["controls"]),
                     "county_sd": spec["county_sd"], "prefecture_sd": spec["prefecture_sd"],
                     **({"dispersion": spec["dispersion"]} if "dispersion" in spec
                        else {"residual_sd": spec["residual_sd"]})}
    return out
