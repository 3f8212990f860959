"""The input contract as data: one ColumnRule per column of each file.

These names are the contract with users and their scripts (../shared/spec/data_contract.md);
`contract.py` loads and checks data against them, and data/README.md documents them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "code", "number", "integer", "category"]
MISSING_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})
CENSUS_YEARS = (2010, 2020)
# The development indicators in the order the study lists them; GDP is optional.
DEVELOPMENT_INDICATORS = (
    "mean_years_schooling",
    "non_agricultural_share",
    "urbanisation_rate",
    "gdp_per_capita",
)
COUNTY_CONTROLS = ("population_millions", "aged60_share", "minority_share", "sex_ratio_at_birth")
SES_ITEM_PREFIX = "ses_item_"
SUPPLIED_BY = {"donations": "capacities", "ratings": "emotional rating"}


@dataclass(frozen=True)
class ColumnRule:
    """What one column must hold. Bounds are inclusive unless `strict`."""

    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    strict_low: bool = False
    categories: tuple[str, ...] = ()
    unique: bool = False
    unit: str = ""

    def describe_bounds(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.strict_low else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts)


def _census(name: str, low: float, high: float | None, strict: bool, unit: str,
            required: bool = True) -> list[ColumnRule]:
    return [
        ColumnRule(f"{name}_{year}", "number", required=required, nullable=True, low=low,
                   high=high, strict_low=strict, unit=unit)
        for year in CENSUS_YEARS
    ]


CAMPAIGN_RULES: tuple[ColumnRule, ...] = (
    ColumnRule("campaign_id", "text", unique=True),
    ColumnRule("county_code", "code"),
    ColumnRule("channel", "category", categories=("acquaintance", "mixed")),
    ColumnRule("amount_raised", "number", low=0, strict_low=True, unit="yuan"),
    ColumnRule("target_amount", "number", low=0, strict_low=True, unit="yuan"),
    ColumnRule("donation_count", "integer", low=0),
    ColumnRule("verifier_count", "integer", low=0),
    ColumnRule("repost_count", "integer", low=0),
    ColumnRule("gender", "category", categories=("male", "female")),
    ColumnRule("age", "integer", low=0, high=120, unit="years"),
    ColumnRule("disease_type", "text"),
    ColumnRule("ses_index", "number", required=False),
    ColumnRule("core_capacity", "number", required=False, low=0, strict_low=True,
               unit="100 yuan"),
    ColumnRule("derived_capacity", "number", required=False, low=0, strict_low=True,
               unit="100 yuan"),
    ColumnRule("emotional_rating", "number", required=False),
    # the two dimensions of the rating, where no ratings.csv gives the raters' scores
    ColumnRule("image_rating", "number", required=False, nullable=True),
    ColumnRule("text_rating", "number", required=False, nullable=True),
)

DONATION_RULES: tuple[ColumnRule, ...] = (
    ColumnRule("campaign_id", "text"),
    ColumnRule("seq", "integer", low=1),
    ColumnRule("amount", "number", low=0, strict_low=True, unit="yuan"),
)

RATING_RULES: tuple[ColumnRule, ...] = (
    ColumnRule("campaign_id", "text"),
    ColumnRule("rater_id", "text"),
    ColumnRule("dimension", "category", categories=("image", "text")),
    ColumnRule("score", "number", low=0, high=10),
)

COUNTY_RULES: tuple[ColumnRule, ...] = (
    ColumnRule("county_code", "code", unique=True),
    ColumnRule("county_name", "text"),
    ColumnRule("prefecture_code", "code"),
    ColumnRule("prefecture_name", "text"),
    ColumnRule("province_code", "code"),
    ColumnRule("province_name", "text"),
    *_census("mean_years_schooling", 0, 25, False, "years"),
    *_census("non_agricultural_share", 0, 1, False, "share 0-1"),
    *_census("urbanisation_rate", 0, 1, False, "share 0-1"),
    *_census("gdp_per_capita", 0, None, True, "yuan", required=False),
    *_census("population_millions", 0, None, True, "millions"),
    *_census("aged60_share", 0, 1, False, "share 0-1"),
    *_census("minority_share", 0, 1, False, "share 0-1"),
    *_census("sex_ratio_at_birth", 0, None, True, "boys per girl"),
)

TABLES: dict[str, tuple[tuple[ColumnRule, ...], bool]] = {
    # name: (rules, required file)
    "campaigns": (CAMPAIGN_RULES, True),
    "counties": (COUNTY_RULES, True),
    "donations": (DONATION_RULES, False),
    "ratings": (RATING_RULES, False),
}


# ---------------------------------------------------------------- the prepared table

# The contract of the prepared table: these names, in this order, then the extras.
PREPARED_COLUMNS: tuple[str, ...] = (
    "campaign_id", "county_code", "prefecture_code", "province_code", "channel",
    "recommended", "log_amount_raised", "development", "core_capacity", "derived_capacity",
    "verifier_count", "log_reposts", "ses_index", "target_amount_10k", "male", "age",
    "age_group", "disease_type", "emotional_rating", *COUNTY_CONTROLS,
    *DEVELOPMENT_INDICATORS,
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "amount_raised_10k", "target_completion", "repost_count", "donation_count",
    "image_rating", "text_rating",
    "derived_capacity_rule", "county_campaigns", "prefecture_campaigns", "county_name",
    "prefecture_name", "province_name",
    # Table 4's prefecture-level variant: development and county controls taken up a level
    "prefecture_development", *(f"prefecture_{name}" for name in COUNTY_CONTROLS),
)


# Where a prepared column comes from, for messages about data that lack it (the rest come
# from the column of the same name in campaigns.csv or counties.csv: data/README.md).
COLUMN_SOURCES = {
    "text_rating": "ratings.csv with text scores, or a text_rating column in campaigns.csv",
    "image_rating": "ratings.csv with image scores, or an image_rating column in "
                    "campaigns.csv",
    "emotional_rating": "ratings.csv, or an emotional_rating column in campaigns.csv",
    "core_capacity": "donations.csv, or a core_capacity column in campaigns.csv",
    "derived_capacity": "donations.csv, or a derived_capacity column in campaigns.csv",
    "ses_index": "ses_item_* columns or an ses_index column in campaigns.csv",
    "development": "the development indicators in counties.csv",
    "gdp_per_capita": "gdp_per_capita_2010/_2020 in counties.csv",
}


def column_source(column: str) -> str:
    """Where the prepared table's `column` comes from, in words."""
    return COLUMN_SOURCES.get(column, "a column of campaigns.csv or counties.csv; see "
                                      "data/README.md")
