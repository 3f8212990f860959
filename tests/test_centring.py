"""Explicit intercepts: non-centred where groups are sparse, centred where data-rich."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fundgap.build import build_model
from fundgap.defaults import CENTRED_MIN_CAMPAIGNS
from fundgap.design import build_design
from fundgap.errors import FundgapError
from fundgap.fit import choose_centring
from fundgap.spec import parse_spec

SPEC = """
name = "c"
exposure = "development"
outcome = "verifier_count"
[equations.verifier_count]
formula = "verifier_count ~ development + (1|prefecture) + (1|county)"
family = "negative_binomial"
"""


def table(counties: int, per_county: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    n = counties * per_county
    county = np.repeat(np.arange(counties), per_county)
    return pd.DataFrame({"campaign_id": [f"c{i}" for i in range(n)],
                         "county_code": [f"{110100 + c * 100}" for c in county],
                         "prefecture_code": [f"{110000 + (c // 4) * 100}" for c in county],
                         "development": rng.standard_normal(n),
                         "verifier_count": rng.poisson(30, n)})


def design(counties: int, per_county: int):
    data = table(counties, per_county)
    return build_design(parse_spec(SPEC, columns=set(data.columns)), data)


def test_auto_centres_only_data_rich_groupings() -> None:
    sparse = design(40, 2)  # 2 campaigns per county, 8 per prefecture
    assert choose_centring(sparse, "auto") == ()
    rich = design(8, CENTRED_MIN_CAMPAIGNS // 2)  # counties below, prefectures above
    assert choose_centring(rich, "auto") == ("prefecture_code",)
    assert set(choose_centring(sparse, "centred")) == {"prefecture_code", "county_code"}
    assert choose_centring(rich, "noncentred") == ()
    with pytest.raises(FundgapError, match="unknown centring"):
        choose_centring(rich, "sideways")


def test_centred_intercepts_are_sampled_directly_with_the_same_names() -> None:
    rich = design(8, 30)
    noncentred = build_model(rich)
    centred = build_model(rich, centred=("prefecture_code", "county_code"))
    free = {v.name for v in centred.free_RVs}
    assert {"county_intercept_verifier_count", "prefecture_intercept_verifier_count"} <= free
    assert not any("_z_" in name for name in free)
    assert {"county_z_verifier_count", "county_intercept_verifier_count"} <= (
        {v.name for v in noncentred.free_RVs} | {v.name for v in noncentred.deterministics})
    # the same density up to the Jacobian of u = sd * z: log N(u | 0, sd) = log N(z | 0, 1)
    # - log sd per intercept (8 counties, 2 prefectures)
    point = centred.initial_point()
    rng = np.random.default_rng(1)
    point["county_intercept_verifier_count"] = rng.normal(0, 0.2, 8)
    point["prefecture_intercept_verifier_count"] = rng.normal(0, 0.2, 2)
    log_sd = {dim: float(point[f"{dim}_sd_verifier_count_log__"])
              for dim in ("county", "prefecture")}
    z_point = {k: v for k, v in point.items() if "_intercept_" not in k}
    for dim in ("county", "prefecture"):
        z_point[f"{dim}_z_verifier_count"] = (point[f"{dim}_intercept_verifier_count"]
                                              / np.exp(log_sd[dim]))
    difference = centred.compile_logp()(point) - noncentred.compile_logp()(z_point)
    assert difference == pytest.approx(-(8 * log_sd["county"] + 2 * log_sd["prefecture"]))
