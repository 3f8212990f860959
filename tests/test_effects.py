"""Effects from posterior draws, on hand-made posteriors: products, sums, g-computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fundgap.design import build_design
from fundgap.effects import effect_draws, summarise_effects
from fundgap.errors import SpecError
from fundgap.predictive import linear_predictor
from fundgap.spec import parse_spec

SPEC = """
name = "t"
exposure = "development"
mediators = ["verifier_count", "log_reposts"]
outcome = "log_amount_raised"
[equations.verifier_count]
formula = "verifier_count ~ development + male"
family = "FAMILY"
[equations.log_reposts]
formula = "log_reposts ~ development"
[equations.log_amount_raised]
formula = "log_amount_raised ~ development + verifier_count + log_reposts"
"""


def table(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame({"campaign_id": [f"c{i}" for i in range(n)],
                         "development": rng.standard_normal(n),
                         "male": rng.integers(0, 2, n),
                         "verifier_count": rng.integers(0, 90, n),
                         "log_reposts": rng.normal(6, 1, n),
                         "log_amount_raised": rng.normal(1.4, 0.8, n)})


def posterior(design, draws: np.ndarray) -> xr.Dataset:
    """A posterior with `draws` (chain, draw) of every coefficient, from a seed."""
    rng = np.random.default_rng(5)
    data = {}
    for name, equation in design.equations.items():
        values = rng.normal(0.1, 0.05, (*draws.shape, len(equation.terms)))
        data[f"coefficients_{name}"] = xr.DataArray(
            values, dims=("chain", "draw", f"term_{name}"),
            coords={f"term_{name}": equation.terms})
        data[f"intercept_{name}"] = xr.DataArray(rng.normal(1.0, 0.1, draws.shape),
                                                 dims=("chain", "draw"))
        data[f"sigma_{name}"] = xr.DataArray(np.full(draws.shape, 0.5), dims=("chain", "draw"))
    return xr.Dataset(data)


def test_identity_links_multiply_paths() -> None:
    design = build_design(parse_spec(SPEC.replace("FAMILY", "gaussian"),
                                     columns=set(table().columns)), table())
    post = posterior(design, np.zeros((2, 30)))
    effects = effect_draws(post, design)
    a = post["coefficients_verifier_count"].sel(term_verifier_count="development")
    b = post["coefficients_log_amount_raised"].sel(term_log_amount_raised="verifier_count")
    np.testing.assert_allclose(effects["indirect"].sel(mediator="verifier_count"), a * b)
    direct = post["coefficients_log_amount_raised"].sel(term_log_amount_raised="development")
    np.testing.assert_allclose(effects["total"], direct + effects["indirect"].sum("mediator"))
    np.testing.assert_allclose(effects["share"].sum("mediator") + direct / effects["total"], 1)
    # the joint indirect effect is the sum of the paths on an identity-link outcome
    np.testing.assert_allclose(effects["indirect_total"], effects["indirect"].sum("mediator"))
    summary = summarise_effects(effects)
    # total, direct, indirect_total, direct_link, total_link; 4 per mediator
    assert len(summary) == 5 + 4 * 2
    # on an identity-link outcome the link-scale effects are the effects
    np.testing.assert_allclose(effects["direct_link"], direct)
    np.testing.assert_allclose(effects["total_link"], effects["total"])
    row = summary[(summary["effect"] == "a") & (summary["mediator"] == "verifier_count")].iloc[0]
    assert row["mean"] == pytest.approx(float(a.mean()))
    assert row["p_positive"] == pytest.approx(float((a > 0).mean()))


@pytest.mark.parametrize("family", ["negative_binomial", "lognormal"])
def test_log_link_mediator_uses_g_computation(family: str) -> None:
    data = table()
    design = build_design(parse_spec(SPEC.replace("FAMILY", family),
                                     columns=set(data.columns)), data)
    post = posterior(design, np.zeros((1, 4)))
    effects = effect_draws(post, design)
    # by hand, draw by draw: mean over campaigns of E[M | x + 1] - E[M | x]
    coefficients = post["coefficients_verifier_count"].values[0]
    intercept = post["intercept_verifier_count"].values[0]
    X = design.equations["verifier_count"].X
    for d in range(4):
        eta = intercept[d] + X @ coefficients[d]
        slope = coefficients[d][0]  # development is the first term
        level = np.exp(eta) * (np.exp(0.5**2 / 2) if family == "lognormal" else 1.0)
        expected = np.mean(level * (np.exp(slope) - 1))
        assert float(effects["a"].sel(mediator="verifier_count")[0, d]) == pytest.approx(
            expected)


def test_count_mediator_of_a_non_identity_outcome_is_refused() -> None:
    # g-computation moves a mediator by its a path, which needs an identity-link mediator
    text = SPEC.replace("FAMILY", "negative_binomial").replace(
        '[equations.log_amount_raised]\n', '[equations.log_amount_raised]\nfamily = "lognormal"\n')
    data = table().assign(log_amount_raised=lambda f: np.exp(f["log_amount_raised"]))
    design = build_design(parse_spec(text, columns=set(data.columns)), data)
    with pytest.raises(SpecError, match="needs gaussian or student_t mediators; "
                                        "verifier_count are not"):
        effect_draws(posterior(design, np.zeros((1, 3))), design)


def test_lognormal_outcome_effects_are_g_computation_on_the_mean() -> None:
    text = SPEC.replace("FAMILY", "gaussian").replace(
        '[equations.log_amount_raised]\n', '[equations.log_amount_raised]\nfamily = "lognormal"\n')
    data = table().assign(log_amount_raised=lambda f: np.exp(f["log_amount_raised"]))
    design = build_design(parse_spec(text, columns=set(data.columns)), data)
    draws = posterior(design, np.zeros((1, 3))).assign(
        sigma_log_amount_raised=xr.DataArray(np.full((1, 3), 0.5), dims=("chain", "draw")))
    effects = effect_draws(draws, design)
    # with one unit more of development the mean exp(eta + sigma^2 / 2) rises by the factor
    # exp(c + sum a b): total = mean over campaigns of mu (that factor - 1)
    coefficients = draws["coefficients_log_amount_raised"]
    c = coefficients.sel(term_log_amount_raised="development")
    ab = sum(draws[f"coefficients_{m}"].sel({f"term_{m}": "development"})
             * coefficients.sel(term_log_amount_raised=m)
             for m in ("verifier_count", "log_reposts"))
    mu = np.exp(linear_predictor(draws, design, "log_amount_raised") + 0.125)
    np.testing.assert_allclose(effects["total"], (mu * (np.exp(c + ab) - 1)).mean("campaign"))
    np.testing.assert_allclose(effects["direct"], (mu * (np.exp(c) - 1)).mean("campaign"))
    # the joint indirect effect: every mediator moved at once, total - direct; on this
    # non-linear outcome the per-mediator (path-specific) effects do not add up to it
    joint = (mu * (np.exp(c + ab) - np.exp(c))).mean("campaign")
    np.testing.assert_allclose(effects["indirect_total"], joint)
    assert not np.allclose(effects["indirect"].sum("mediator"), joint)
    # on the link scale (log ratios of the mean): the slopes, free of the baseline mu
    np.testing.assert_allclose(effects["direct_link"], c)
    np.testing.assert_allclose(effects["total_link"], c + ab)


MODERATED = """
name = "m"
exposure = "development"
moderator = "channel"
mediators = ["log_reposts"]
outcome = "log_amount_raised"
[equations.log_reposts]
formula = "log_reposts ~ development:C(channel) + male"
[equations.log_amount_raised]
formula = "log_amount_raised ~ development + development:C(channel) + log_reposts"
"""


def test_moderated_slopes_effects_and_contrasts() -> None:
    from fundgap.effects import contrast_draws, summarise_contrasts

    frame = table().assign(channel=np.where(np.arange(50) % 3 == 0, "acquaintance", "mixed"))
    design = build_design(parse_spec(MODERATED, columns=set(frame.columns)), frame)
    post = posterior(design, np.zeros((2, 40)))
    effects = effect_draws(post, design)
    assert effects["total"].dims == ("channel", "chain", "draw")
    reposts = post["coefficients_log_reposts"]
    outcome = post["coefficients_log_amount_raised"]
    a_mixed = reposts.sel(term_log_reposts="development:C(channel)[mixed]")
    # the outcome is written as a reference slope plus the mixed channel's difference
    direct_acq = outcome.sel(term_log_amount_raised="development")
    direct_mixed = direct_acq + outcome.sel(
        term_log_amount_raised="development:C(channel)[mixed]")
    b = outcome.sel(term_log_amount_raised="log_reposts")
    xr.testing.assert_allclose(effects["direct"].sel(channel="mixed", drop=True),
                               direct_mixed, check_dim_order=False)
    xr.testing.assert_allclose(effects["direct"].sel(channel="acquaintance", drop=True),
                               direct_acq.drop_vars("term_log_amount_raised"))
    xr.testing.assert_allclose(
        effects["total"].sel(channel="mixed", drop=True),
        (direct_mixed + a_mixed * b).drop_vars(
            ["term_log_amount_raised", "term_log_reposts"], errors="ignore"),
        check_dim_order=False)

    contrasts = contrast_draws(effects, "channel")
    assert list(contrasts["contrast"].values) == ["acquaintance - mixed"]
    assert "b" not in contrasts                      # b is shared: no contrast to report
    expected = (effects["total"].sel(channel="acquaintance")
                - effects["total"].sel(channel="mixed")).values
    np.testing.assert_allclose(contrasts["total"].sel(contrast="acquaintance - mixed"),
                               expected)
    table_out = summarise_contrasts(contrasts)
    assert list(table_out.columns[:3]) == ["effect", "mediator", "contrast"]
    row = table_out[table_out["effect"] == "total"].iloc[0]
    assert row["p_greater"] == pytest.approx((expected > 0).mean())
    summary = summarise_effects(effects)
    assert {"channel", "mediator"} <= set(summary.columns)
    assert set(summary.loc[summary["effect"] == "total", "channel"]) == {"acquaintance",
                                                                         "mixed"}


def test_campaign_blocks_give_the_same_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    # a million campaigns are averaged block by block; the blocks must not change the result
    data = table(97).assign(log_amount_raised=lambda f: np.exp(f["log_amount_raised"]))
    text = ('name = "b"\nexposure = "development"\nmediators = ["log_reposts"]\n'
            'outcome = "log_amount_raised"\n'
            '[equations.log_reposts]\nformula = "log_reposts ~ development"\n'
            '[equations.log_amount_raised]\nfamily = "lognormal"\n'
            'formula = "log_amount_raised ~ development + log_reposts + male"\n')
    design = build_design(parse_spec(text, columns=set(data.columns)), data)
    post = posterior(design, np.zeros((2, 5)))
    whole = effect_draws(post, design)
    monkeypatch.setattr("fundgap.effects.EFFECT_CHUNK_VALUES", 10 * 7)  # 7 campaigns a block
    blocks = effect_draws(post, design)
    for name in ("total", "direct", "indirect", "a"):
        np.testing.assert_allclose(blocks[name], whole[name], rtol=1e-12)


def test_a_share_is_not_defined_where_the_total_interval_includes_zero() -> None:
    """Per moderator level: the share of a level whose total effect's interval spans 0 is
    flagged, the other level's is not, and no other row is."""
    from fundgap.effects import mark_undefined_shares
    from fundgap.render import _effects_table, significant

    effects = pd.DataFrame({
        "effect": ["total", "total", "share", "share", "indirect"],
        "mediator": ["", "", "m", "m", "m"],
        "channel": ["acquaintance", "mixed", "acquaintance", "mixed", "mixed"],
        "mean": [0.12, 0.013, 0.34, 2.1, 0.00004467],
        "sd": [0.03, 0.02, 0.1, 9.0, 0.00001],
        "ci_lower": [0.057, -0.027, 0.18, -14.5, 0.0000251],
        "ci_upper": [0.19, 0.053, 0.72, 19.9, 0.0000652],
        "r_hat": [1.0, 1.0, 1.0, 1.01, 1.0], "ess_bulk": [5000.0] * 5,
        "ess_tail": [4000.0] * 5, "p_positive": [1.0, 0.7, 1.0, 0.6, 1.0]})
    marked = mark_undefined_shares(effects)
    assert marked["defined"].tolist() == [True, True, True, False, True]
    shown = _effects_table(marked).set_index(["effect", "channel"])
    assert shown.loc[("share", "mixed"), "mean"].startswith("not defined")
    assert shown.loc[("share", "acquaintance"), "mean"] == "0.340"
    assert shown.loc[("indirect", "mixed"), "mean"] == "0.0000447"
    assert not any("e-" in str(v) or "e+" in str(v) for v in shown.to_numpy().ravel())
    assert significant(31590.2) == "31,600" and significant(-0.04463) == "-0.0446"


def test_a_binary_exposure_is_contrasted_at_one_against_zero() -> None:
    """A 0/1 exposure on a non-linear outcome: every campaign set to 1 against set to 0, its
    mediators at their values under each (natural effects by g-computation), by hand from
    the rows; on the identity-link mediators the paths stay the slopes."""
    text = SPEC.replace("FAMILY", "gaussian").replace(
        '[equations.log_amount_raised]\n', '[equations.log_amount_raised]\nfamily = "lognormal"\n')
    rng = np.random.default_rng(8)
    data = table().assign(development=rng.integers(0, 2, 50).astype(float),
                          log_amount_raised=lambda f: np.exp(f["log_amount_raised"]))
    design = build_design(parse_spec(text, columns=set(data.columns)), data)
    draws = posterior(design, np.zeros((1, 3)))
    effects = effect_draws(draws, design)
    outcome = "log_amount_raised"
    coefficients = draws[f"coefficients_{outcome}"]
    c = coefficients.sel({f"term_{outcome}": "development"})
    a = {m: draws[f"coefficients_{m}"].sel({f"term_{m}": "development"})
         for m in ("verifier_count", "log_reposts")}
    ab = sum(a[m] * coefficients.sel({f"term_{outcome}": m}) for m in a)
    x = xr.DataArray(data["development"].to_numpy(), dims="campaign")
    eta_zero = linear_predictor(draws, design, outcome) - (c + ab) * x
    mean = lambda eta: np.exp(eta + 0.125).mean("campaign")  # noqa: E731
    np.testing.assert_allclose(effects["total"], mean(eta_zero + c + ab) - mean(eta_zero))
    np.testing.assert_allclose(effects["direct"], mean(eta_zero + c) - mean(eta_zero))
    np.testing.assert_allclose(effects["indirect_total"],
                               mean(eta_zero + c + ab) - mean(eta_zero + c))
    np.testing.assert_allclose(effects["a"].sel(mediator="verifier_count"),
                               a["verifier_count"])
    # a one-unit shift from the observed values would be another number
    shifted = linear_predictor(draws, design, outcome)
    assert not np.allclose(effects["total"], mean(shifted + c + ab) - mean(shifted))
