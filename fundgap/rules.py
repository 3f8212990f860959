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
