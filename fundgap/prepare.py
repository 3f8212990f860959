"""Derived variables, as the 2025 study built them: pure functions on frames.

`prepare(dataset)` returns the analysis-ready table (one row per campaign, the column names
of published_tables.yaml) and a JSON-ready dict of diagnostics (factor, census years used,
donation-stream rules, rating ICC). Each step is a small function that can be tested alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fundgap.contract import Dataset, load_dataset
from fundgap.factor import FactorMethod, development_factor
from fundgap.rules import (
    CENSUS_YEARS,
    COUNTY_CONTROLS,
    DEVELOPMENT_INDICATORS,
    EXTRA_COLUMNS,
    PREPARED_COLUMNS,
    SES_ITEM_PREFIX,
)
from fundgap.stream import CORE_WINDOW, DERIVED_AFTER, Coder, WindowSums

# Cut points of the age groups (the study controls for 年龄段 without printing its cuts).
AGE_GROUPS: tuple[tuple[str, int], ...] = (("0-17", 0), ("18-39", 18), ("40-59", 40), ("60+", 60))
ShortStreams = Literal["fallback", "missing"]

@dataclass(frozen=True)
class PrepareOptions:
    """Choices a user may make about derived variables; every one is recorded in the output.

    short_streams: what derived capacity is for a campaign with `derived_after` donations or
    fewer. "fallback" (default) uses the donations after the core window (seq > core_window)
    when there are any, else all donations (then derived equals core); the rule used is kept
    per campaign in `derived_capacity_rule`. "missing" leaves it missing, so models using it
    drop the campaign.
    """

    factor_method: FactorMethod = "pcf"
    short_streams: ShortStreams = "fallback"
    core_window: int = CORE_WINDOW
    derived_after: int = DERIVED_AFTER


@dataclass
class PreparedData:
    """The analysis-ready table and the diagnostics of how it was built."""

    table: pd.DataFrame
    diagnostics: dict = field(default_factory=dict)


# ---------------------------------------------------------------- county side


def average_census(counties: pd.DataFrame,
                   used: set[str] | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Mean of the 2010 and 2020 values of every indicator present, per county.

    A county with one year missing uses the other; the returned counts say for how many
    counties that happened, per indicator (among the `used` county codes when given).
    """
    in_use = counties["county_code"].isin(used) if used is not None else True
    averaged = counties[["county_code"]].copy()
    single_year: dict[str, int] = {}
    for name in (*DEVELOPMENT_INDICATORS, *COUNTY_CONTROLS):
        columns = [f"{name}_{year}" for year in CENSUS_YEARS]
        if not all(c in counties.columns for c in columns):
            continue
        values = counties[columns].astype(float)
        if values.isna().all().all():
            continue
        averaged[name] = values.mean(axis=1, skipna=True)
        single_year[name] = int(((values.notna().sum(axis=1) == 1) & in_use).sum())
    return averaged, single_year


def prefecture_measures(averaged: pd.DataFrame, hierarchy: pd.DataFrame,
                        names: Iterable[str] = (*DEVELOPMENT_INDICATORS, *COUNTY_CONTROLS)
                        ) -> pd.DataFrame:
    """County indicators and controls (`names`, those `averaged` has) taken up to
    prefectures, one row per prefecture_code.

    Every county of the prefecture in the county table counts, not only those with
    campaigns: population is summed; shares, ratios and indicators are population-weighted
    means over the counties that have them (unweighted where population is missing).
    """
    merged = averaged.merge(hierarchy[["county_code", "prefecture_code"]], on="county_code")
    weight = merged.get("population_millions", pd.Series(1.0, index=merged.index))
    weight = weight.fillna(1.0)
    out = {}
    for name in names:
        if name not in merged:
            continue
        if name == "population_millions":
            out[name] = merged.groupby("prefecture_code")[name].sum(min_count=1)
            continue
        present = merged[name].notna()
        weighted = (merged[name].fillna(0.0) * weight).groupby(merged["prefecture_code"]).sum()
        total = (weight * present).groupby(merged["prefecture_code"]).sum()
        out[name] = weighted / total.where(total > 0)
    return pd.DataFrame(out)


def _prefecture_factor(indicators: pd.DataFrame, prefecture: pd.Series,
                       options: PrepareOptions, notes: list[str]
                       ) -> tuple[pd.Series, dict | None]:
    """The development factor of prefecture indicators, or missing (with a note) when too
    few prefectures carry campaigns to extract one."""
    distinct = prefecture[indicators.notna().all(axis=1)].nunique()
    if distinct > indicators.shape[1] + 1:
        try:
            scores, factor = development_factor(indicators, method=options.factor_method,
                                                orient_by="mean_years_schooling")
            return scores, factor.to_dict()
        except (ValueError, np.linalg.LinAlgError):
            pass
    notes.append(f"prefecture_development left missing: {distinct} prefectures cannot "
                 f"support a factor of {indicators.shape[1]} indicators")
    return pd.Series(np.nan, index=indicators.index), None


# ---------------------------------------------------------------- donation stream


def donation_capacities(donations: pd.DataFrame | Iterable[pd.DataFrame],
                        core_window: int = CORE_WINDOW, derived_after: int = DERIVED_AFTER,
                        short_streams: ShortStreams = "fallback") -> pd.DataFrame:
    """Core and derived network capacity per campaign, in 100 yuan, indexed by campaign_id
    (sorted), with its stream_length and derived_capacity_rule.

    Core: mean of donations with seq <= core_window. Derived: mean of donations with
    seq > derived_after; for shorter streams see PrepareOptions.short_streams. `donations`
    is a frame or its chunks (Dataset.donation_chunks(): a stream too large to hold): each
    window's sum and count per campaign are added up chunk by chunk.
    """
    chunks = [donations] if isinstance(donations, pd.DataFrame) else donations
    coder = Coder()
    sums = WindowSums(core_window, derived_after)
    for chunk in chunks:
        code = coder(chunk["campaign_id"])
        sums.add(code, chunk["seq"].to_numpy(dtype=float),
                 chunk["amount"].to_numpy(dtype=float), coder.ids)
    return capacities_from_sums(sums, short_streams)


def capacities_from_sums(sums: WindowSums, short_streams: ShortStreams = "fallback"
                         ) -> pd.DataFrame:
    """The capacities (as donation_capacities returns them) from a stream's window sums, of
    the campaigns that have donations."""
    present = np.flatnonzero(sums.counts["all"] > 0)
    ids = sums.ids[present]
    order = present[np.argsort(ids.to_numpy(dtype=str), kind="stable")]
    index = pd.Index(sums.ids[order].astype(str), name="campaign_id")

    def window_mean(window: str) -> pd.Series:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums.sums[window][order] / sums.counts[window][order]
        return pd.Series(np.where(sums.counts[window][order] > 0, mean, np.nan), index=index)

    core_window, derived_after = sums.core_window, sums.derived_after
    out = pd.DataFrame({"stream_length": sums.length[order]}, index=index)
    out["core_capacity"] = window_mean("core")
    after_derived = window_mean("after_derived")
    after_core = window_mean("after_core")
    everything = window_mean("all")
    out["derived_capacity"] = after_derived
    out["derived_capacity_rule"] = f"after_{derived_after}"
    short = out["derived_capacity"].isna()
    if short_streams == "fallback":
        use_after_core = short & after_core.reindex(out.index).notna()
        out.loc[use_after_core, "derived_capacity"] = after_core
        out.loc[use_after_core, "derived_capacity_rule"] = f"after_{core_window}"
        use_all = out["derived_capacity"].isna()
        out.loc[use_all, "derived_capacity"] = everything
        out.loc[use_all, "derived_capacity_rule"] = "all"
    elif short_streams == "missing":
        out.loc[short, "derived_capacity_rule"] = "missing"
    else:
        raise ValueError(f"unknown short_streams {short_streams!r}: use 'fallback' or 'missing'")
    return out


# ---------------------------------------------------------------- ratings


def standardise_within_rater(ratings: pd.DataFrame) -> pd.Series:
    """Each rater's scores on a dimension as z-scores (n - 1); a rater with no spread gets 0."""
    grouped = ratings.groupby(["rater_id", "dimension"])["score"]
    mean = grouped.transform("mean")
    sd = grouped.transform(lambda s: s.std(ddof=1))
    z = (ratings["score"] - mean) / sd
    return z.where(sd > 0, 0.0).rename("z")


def intraclass_correlation(groups: pd.Series, values: pd.Series) -> float:
    """One-way random-effects ICC(1) for unbalanced groups (raters differ across campaigns)."""
    frame = pd.DataFrame({"g": groups.to_numpy(), "v": values.to_numpy()}).dropna()
    sizes = frame.groupby("g")["v"].size()
    frame = frame[frame["g"].isin(sizes[sizes >= 2].index)]
    sizes = sizes[sizes >= 2]
    n_groups, n_total = len(sizes), len(frame)
    if n_groups < 2 or n_total <= n_groups:
        return float("nan")
    means = frame.groupby("g")["v"].mean()
    grand = frame["v"].mean()
    between = float((sizes * (means - grand) ** 2).sum() / (n_groups - 1))
    within = float(((frame["v"] - frame["g"].map(means)) ** 2).sum() / (n_total - n_groups))
    k0 = (n_total - float((sizes**2).sum()) / n_total) / (n_groups - 1)
    return (between - within) / (between + (k0 - 1) * within)


def emotional_ratings(ratings: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Image, text and overall emotional rating per campaign, and the ICC of each dimension.

    Scores are standardised within rater (and dimension), averaged over raters per
    dimension, and the overall rating is the mean of the dimensions a campaign has.
    """
    frame = ratings.assign(z=standardise_within_rater(ratings))
    per_dimension = frame.pivot_table(index="campaign_id", columns="dimension", values="z",
                                      aggfunc="mean")
    out = pd.DataFrame(index=per_dimension.index)
    for dimension in ("image", "text"):
        out[f"{dimension}_rating"] = per_dimension.get(dimension, np.nan)
    out["emotional_rating"] = out[["image_rating", "text_rating"]].mean(axis=1, skipna=True)
    icc = {
        dimension: intraclass_correlation(part["campaign_id"], part["z"])
        for dimension, part in frame.groupby("dimension")
    }
    return out, icc


# ---------------------------------------------------------------- campaign side


def target_completion(amount: pd.Series, target: pd.Series) -> pd.Series:
    """Share of the target raised, capped at 1: the platform closes a campaign that reaches
    its target, so the few above it (late transfers) count as complete."""
    return np.minimum(amount.astype(float) / target.astype(float), 1.0)


def log_reposts(count: pd.Series) -> pd.Series:
    """log(1 + reposts): defined at zero, and within 1/count of log(count) elsewhere."""
    return np.log1p(count.astype(float))


def age_group(age: pd.Series) -> pd.Series:
    """Age in years to the groups of AGE_GROUPS, as an ordered categorical."""
    labels = [label for label, _ in AGE_GROUPS]
    edges = [low for _, low in AGE_GROUPS] + [np.inf]
    return pd.cut(age.astype(float), bins=edges, labels=labels, right=False).astype(
        pd.CategoricalDtype(labels, ordered=True))


def ses_from_items(campaigns: pd.DataFrame) -> pd.Series:
    """The study's SES index: the sum of standardised indicators (columns ses_item_*)."""
    items = campaigns[[c for c in campaigns.columns if c.startswith(SES_ITEM_PREFIX)]]
    items = items.apply(pd.to_numeric, errors="coerce")
    return ((items - items.mean()) / items.std(ddof=1)).sum(axis=1, min_count=1)


# ---------------------------------------------------------------- the whole table


def prepare(dataset: Dataset, options: PrepareOptions | None = None) -> PreparedData:
    """Validated data folder -> analysis-ready table and diagnostics."""
    options = options or PrepareOptions()
    campaigns = dataset.campaigns.copy()
    notes: list[str] = []

    averaged, single_year = average_census(dataset.counties, set(campaigns["county_code"]))
    hierarchy = dataset.counties[["county_code", "county_name", "prefecture_code",
                                  "prefecture_name", "province_code", "province_name"]]
    table = campaigns[["campaign_id", "county_code", "channel"]].merge(
        hierarchy, on="county_code", how="left").merge(averaged, on="county_code", how="left")

    table["recommended"] = (campaigns["channel"] == "mixed").astype(int).to_numpy()
    table["amount_raised_10k"] = campaigns["amount_raised"].to_numpy() / 1e4
    table["log_amount_raised"] = np.log(table["amount_raised_10k"])
    table["target_amount_10k"] = campaigns["target_amount"].to_numpy() / 1e4
    table["target_completion"] = target_completion(table["amount_raised_10k"],
                                                   table["target_amount_10k"])
    table["verifier_count"] = campaigns["verifier_count"].astype(int).to_numpy()
    table["repost_count"] = campaigns["repost_count"].astype(int).to_numpy()
    table["log_reposts"] = log_reposts(table["repost_count"])
    table["donation_count"] = campaigns["donation_count"].astype(int).to_numpy()
    table["male"] = (campaigns["gender"] == "male").astype(int).to_numpy()
    table["age"] = campaigns["age"].astype(int).to_numpy()
    table["age_group"] = age_group(table["age"]).to_numpy()
    table["disease_type"] = campaigns["disease_type"].to_numpy()

    if "ses_index" in campaigns and campaigns["ses_index"].notna().all():
        table["ses_index"] = campaigns["ses_index"].astype(float).to_numpy()
    else:
        table["ses_index"] = ses_from_items(campaigns).to_numpy()
        notes.append(f"ses_index computed as the sum of standardised {SES_ITEM_PREFIX}* columns")

    capacity_rules: dict[str, int] = {}
    if dataset.has_donations:
        sums = dataset.donation_sums
        if sums is not None and (sums.core_window, sums.derived_after) == (
                options.core_window, options.derived_after):
            # summed as the contract checked the stream: not read again
            capacities = capacities_from_sums(sums, options.short_streams)
        else:
            capacities = donation_capacities(dataset.donation_chunks(), options.core_window,
                                             options.derived_after, options.short_streams)
        aligned = capacities.reindex(campaigns["campaign_id"])
        for column in ("core_capacity", "derived_capacity", "derived_capacity_rule"):
            table[column] = aligned[column].to_numpy()
        capacity_rules = aligned["derived_capacity_rule"].value_counts().to_dict()
        if {"core_capacity", "derived_capacity"} & set(campaigns.columns):
            notes.append("capacity columns in campaigns were ignored: computed from donations")
    else:
        table["core_capacity"] = campaigns["core_capacity"].astype(float).to_numpy()
        table["derived_capacity"] = campaigns["derived_capacity"].astype(float).to_numpy()
        table["derived_capacity_rule"] = "given"

    icc: dict[str, float] = {}
    if dataset.ratings is not None:
        rated, icc = emotional_ratings(dataset.ratings)
        aligned = rated.reindex(campaigns["campaign_id"])
        for column in ("image_rating", "text_rating", "emotional_rating"):
            table[column] = aligned[column].to_numpy()
        given = [c for c in ("emotional_rating", "image_rating", "text_rating")
                 if c in campaigns.columns]
        if given:
            notes.append(f"{', '.join(given)} in campaigns ignored: computed from ratings")
    else:
        table["emotional_rating"] = campaigns["emotional_rating"].astype(float).to_numpy()
        for column in ("image_rating", "text_rating"):
            table[column] = (campaigns[column].astype(float).to_numpy()
                             if column in campaigns.columns else np.nan)

    indicators = [name for name in DEVELOPMENT_INDICATORS if name in table.columns]
    if "gdp_per_capita" not in indicators:
        table["gdp_per_capita"] = np.nan
        notes.append("no gdp_per_capita in counties: the development factor uses "
                     f"{len(indicators)} indicators ({', '.join(indicators)})")
    table["development"], factor = development_factor(
        table[indicators], method=options.factor_method, orient_by="mean_years_schooling")

    prefectures = prefecture_measures(averaged, hierarchy).reindex(table["prefecture_code"])
    for name in COUNTY_CONTROLS:
        table[f"prefecture_{name}"] = (prefectures[name].to_numpy() if name in prefectures
                                       else np.nan)
    table["prefecture_development"], prefecture_factor = _prefecture_factor(
        pd.DataFrame(prefectures[indicators].to_numpy(), columns=indicators,
                     index=table.index), table["prefecture_code"], options, notes)

    table["county_campaigns"] = table.groupby("county_code")["campaign_id"].transform("size")
    table["prefecture_campaigns"] = table.groupby("prefecture_code")["campaign_id"].transform(
        "size")
    table = table[[*PREPARED_COLUMNS, *EXTRA_COLUMNS]]
    # text columns as pandas' string dtype, which a prepared table read back from Parquet or
    # CSV has: a table prepared now and one read back then have the same fingerprint
    table = table.astype({c: "str" for c in table.columns if table[c].dtype == object})

    counties_used = table["county_code"].nunique()
    diagnostics = {
        "n_campaigns": len(table),
        "n_counties": int(counties_used),
        "n_prefectures": int(table["prefecture_code"].nunique()),
        "n_provinces": int(table["province_code"].nunique()),
        "options": asdict(options),
        "development_factor": factor.to_dict(),
        "prefecture_development_factor": prefecture_factor,
        "gdp_per_capita_in_factor": "gdp_per_capita" in indicators,
        "census_single_year_counties": single_year,
        "derived_capacity_rules": {str(k): int(v) for k, v in capacity_rules.items()},
        "rating_icc": icc,
        "log_reposts": "log(1 + repost_count)",
        "target_completion": "min(amount_raised / target_amount, 1)",
        "age_groups": [label for label, _ in AGE_GROUPS],
        "notes": notes,
    }
    return PreparedData(table.reset_index(drop=True), diagnostics)


CODE_COLUMNS = ("campaign_id", "county_code", "prefecture_code", "province_code")


def prepare_folder(folder: str | Path, options: PrepareOptions | None = None
                   ) -> PreparedData:
    """A data folder validated (load_dataset, summing the donations' windows of `options`
    as it checks them) and prepared; raises DataContractError listing every problem."""
    options = options or PrepareOptions()
    return prepare(load_dataset(folder, (options.core_window, options.derived_after)),
                   options)


def read_prepared(path: str | Path) -> PreparedData:
    """Read a prepared table written by `fundgap prepare` (CSV or Parquet) and its
    diagnostics JSON beside it, if there is one."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, dtype={c: str for c in CODE_COLUMNS})
    sidecar = path.with_name(f"{path.stem}.diagnostics.json")
    diagnostics = json.loads(sidecar.read_text("utf-8")) if sidecar.is_file() else {}
    return PreparedData(table, diagnostics)
