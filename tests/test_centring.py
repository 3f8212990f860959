"""Explicit intercepts: non-centred where groups are sparse, centred where data-rich."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytest

from fundgap.bayesian import choose_centring
from fundgap.build import build_model
from fundgap.defaults import CENTRED_MIN_CAMPAIGNS
from fundgap.design import build_design
from fundgap.errors import FundgapError
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


def test_every_parameterisation_is_the_same_model() -> None:
    """Non-centred, centred county only, and nested centring (both groupings) give the same
    density at the same intercepts, up to the Jacobian of u = sd * z (log N(u | 0, sd) =
    log N(z | 0, 1) - log sd) and log 2 for each folded sd (the non-centred groups' sds are
    sampled signed, fundgap.build._group_sds), and save the intercepts under the same names."""
    rich = design(8, 30)  # 8 counties in 2 prefectures
    parent = rich.parent("county_code", "prefecture_code")
    noncentred = build_model(rich)
    county_only = build_model(rich, centred=("county_code",))
    nested = build_model(rich, centred=("prefecture_code", "county_code"))
    free = {v.name for v in nested.free_RVs}
    assert {"county_level_verifier_count", "prefecture_level_verifier_count"} <= free
    assert not any("_z_" in name or "_intercept_" in name for name in free)
    for model in (noncentred, county_only, nested):
        assert {"county_intercept_verifier_count", "prefecture_intercept_verifier_count"} <= (
            {v.name for v in model.free_RVs} | {v.name for v in model.deterministics})

    rng = np.random.default_rng(1)
    deviations = {"county": rng.normal(0, 0.2, 8), "prefecture": rng.normal(0, 0.2, 2)}
    sd = {"county": 0.3, "prefecture": 0.5}
    common = {k: v for k, v in noncentred.initial_point().items()
              if "_z_" not in k and "_sd_" not in k}
    signed = {dim: {f"signed_{dim}_sd_verifier_count": sd[dim]} for dim in sd}
    positive = {dim: {f"{dim}_sd_verifier_count_log__": np.log(sd[dim])} for dim in sd}
    z = {dim: {f"{dim}_z_verifier_count": deviations[dim] / sd[dim]} for dim in sd}
    z_point = common | signed["county"] | signed["prefecture"] | z["county"] | z["prefecture"]
    reference = noncentred.compile_logp(jacobian=False)(z_point)
    county_point = common | positive["county"] | signed["prefecture"] | z["prefecture"] | {
        "county_intercept_verifier_count": deviations["county"]}
    alpha = float(common["alpha_verifier_count"])
    levels = alpha + deviations["prefecture"]
    nested_point = common | positive["county"] | positive["prefecture"] | {
        "prefecture_level_verifier_count": levels,
        "county_level_verifier_count": levels[parent] + deviations["county"]}
    assert county_only.compile_logp(jacobian=False)(county_point) - reference == pytest.approx(
        np.log(2) - 8 * np.log(sd["county"]))
    assert nested.compile_logp(jacobian=False)(nested_point) - reference == pytest.approx(
        2 * np.log(2) - (8 * np.log(sd["county"]) + 2 * np.log(sd["prefecture"])))
    # and the saved deviations are the same numbers
    outputs = nested.replace_rvs_by_values([nested["county_intercept_verifier_count"],
                                            nested["prefecture_intercept_verifier_count"]])
    saved = pytensor.function(nested.value_vars, outputs, on_unused_input="ignore")(
        *[nested_point[v.name] for v in nested.value_vars])
    np.testing.assert_allclose(saved[0], deviations["county"])
    np.testing.assert_allclose(saved[1], deviations["prefecture"])
