"""A data summary of a prepared table: counts, county occupancy, Table-1 descriptives."""

from __future__ import annotations

import pandas as pd

# Table 1 of the study, in the prepared table's names.
DESCRIPTIVE_COLUMNS = (
    "amount_raised_10k", "log_amount_raised", "development", "core_capacity",
    "derived_capacity", "verifier_count", "log_reposts", "ses_index", "target_amount_10k",
    "emotional_rating", "recommended", "male", "age", "population_millions", "aged60_share",
    "minority_share", "sex_ratio_at_birth",
)


def occupancy(table: pd.DataFrame) -> dict[str, float]:
    """How many campaigns share a county: counts of counties and shares of campaigns.

    The study's "47.1% seen once, 27.6% twice" are shares of campaigns (they agree with
    Table 4's n = 1088 for counties seen at least twice and n = 520 for three times).
    """
    per_county = table.groupby("county_code").size()
    n = len(table)
    return {
        "n_counties": len(per_county),
        "counties_seen_once": int((per_county == 1).sum()),
        "counties_seen_twice": int((per_county == 2).sum()),
        "counties_seen_3plus": int((per_county >= 3).sum()),
        "counties_seen_more_than_5": int((per_county > 5).sum()),
        "share_campaigns_in_counties_seen_once": float(per_county[per_county == 1].sum() / n),
        "share_campaigns_in_counties_seen_twice": float(per_county[per_county == 2].sum() / n),
        "share_counties_seen_once": float((per_county == 1).mean()),
        "campaigns_in_counties_seen_2plus": int(per_county[per_county >= 2].sum()),
        "campaigns_in_counties_seen_3plus": int(per_county[per_county >= 3].sum()),
    }


def descriptives(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, min and max of the study's Table 1 variables."""
    columns = [c for c in DESCRIPTIVE_COLUMNS if c in table.columns]
    stats = table[columns].astype(float).agg(["mean", "std", "min", "max"]).T
    return stats.rename(columns={"std": "sd"})


def summary_text(table: pd.DataFrame, diagnostics: dict) -> str:
    """A plain-text summary for the terminal."""
    occ = occupancy(table)
    factor = diagnostics.get("development_factor", {})
    channels = table["channel"].value_counts()
    lines = [
        f"{len(table)} campaigns in {occ['n_counties']} counties, "
        f"{table['prefecture_code'].nunique()} prefectures, "
        f"{table['province_code'].nunique()} provinces",
        f"channels: {channels.get('mixed', 0)} mixed, {channels.get('acquaintance', 0)} "
        "acquaintance only",
        f"county occupancy: {occ['counties_seen_once']} counties seen once "
        f"({occ['share_counties_seen_once']:.1%} of counties, "
        f"{occ['share_campaigns_in_counties_seen_once']:.1%} of campaigns), "
        f"{occ['counties_seen_twice']} twice "
        f"({occ['share_campaigns_in_counties_seen_twice']:.1%}), "
        f"{occ['counties_seen_3plus']} three times or more; "
        f"{occ['counties_seen_more_than_5']} more than five times",
    ]
    if factor:
        loadings = factor["loadings"].values()
        lines.append(
            f"development factor ({len(factor['indicators'])} indicators, {factor['method']}): "
            f"{factor['variance_explained']:.1%} of variance, loadings "
            f"{min(loadings):.2f}-{max(loadings):.2f}, KMO {factor['kmo']:.2f}, Bartlett "
            f"chi2({factor['bartlett_df']}) = {factor['bartlett_chi2']:.0f}, "
            + ("p < 0.001" if factor["bartlett_p"] < 0.001 else f"p = {factor['bartlett_p']:.3f}"))
    if diagnostics.get("rating_icc"):
        icc = ", ".join(f"{k} {v:.3f}" for k, v in diagnostics["rating_icc"].items())
        lines.append(f"rating ICC(1): {icc}")
    if diagnostics.get("derived_capacity_rules"):
        rules = ", ".join(f"{k}: {v}" for k, v in
                          sorted(diagnostics["derived_capacity_rules"].items()))
        lines.append(f"derived capacity windows: {rules}")
    lines.extend(f"note: {note}" for note in diagnostics.get("notes", []))
    lines.append("")
    lines.append(descriptives(table).to_string(float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)
