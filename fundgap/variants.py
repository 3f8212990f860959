"""Table 4's variants by name and what each changes: data only, so that a spec's
[robustness] table is checked (fundgap.spec) without loading the models that fit them
(fundgap.robustness).
"""

from __future__ import annotations

SUBSETS = {"counties_seen_2plus": "county_campaigns >= 2",
           "counties_seen_3plus": "county_campaigns >= 3"}
POOLING = {"county_in_prefecture": ("prefecture_code", "county_code"),
           "prefecture_only": ("prefecture_code",),
           "county_only": ("county_code",),
           "complete_pooling": ()}
# Controls left out of every equation: `recommended` (the platform's recommendation) comes
# after the mediators (Table 7 models it on verifier count and core capacity), so holding it
# fixed blocks the part of development's effect that runs through being recommended; the
# variant without it shows the effects with that part in.
DROPPED_CONTROLS = {"without_recommended": "recommended"}
# every variant, in the order they are shown (the spec as written first)
SPEC_AS_WRITTEN = "county_in_prefecture"
VARIANTS = (SPEC_AS_WRITTEN, *SUBSETS, *[p for p in POOLING if p != SPEC_AS_WRITTEN],
            *DROPPED_CONTROLS)
