"""Sufficient statistics read from a Parquet table in chunks equal the row-wise ones, and a
fit from them equals the fit from the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fundgap.bayesian import fit_design
from fundgap.correlated import joint_statistics
from fundgap.design import build_design
from fundgap.errors import SpecError
from fundgap.marginal import sufficient_statistics
from fundgap.reduce import reduce_prepared
from fundgap.spec import load_spec

from conftest import QUICK, REGIONAL

MODELS = Path(__file__).resolve().parents[1] / "models"
CHANNEL = MODELS / "channel_moderation.toml"
SES = MODELS / "ses_gradient.toml"     # negative binomial and beta equations


def _with_gaps(table: pd.DataFrame) -> pd.DataFrame:
    """The table with some missing predictors, so rows are dropped inside chunks."""
    gapped = table.copy()
    gapped.loc[gapped.index[::37], "core_capacity"] = np.nan
    gapped.loc[gapped.index[5::53], "emotional_rating"] = np.nan
    return gapped


@pytest.mark.parametrize("spec_path", [REGIONAL, CHANNEL])
def test_chunked_statistics_equal_the_row_wise_ones(small_table: pd.DataFrame,
                                                    tmp_path: Path, spec_path: Path) -> None:
    table = _with_gaps(small_table)
    path = tmp_path / "prepared.parquet"
    table.to_parquet(path, row_group_size=64)
    spec = load_spec(spec_path)
    rows = build_design(spec, table)
    reduced = reduce_prepared(spec, path, chunk_rows=97)
    assert reduced.reduced and reduced.rows == len(rows.table)
    assert reduced.dropped == rows.dropped
    assert reduced.levels.keys() == rows.levels.keys()
    for column in rows.levels:
        np.testing.assert_array_equal(reduced.levels[column], rows.levels[column])
    for name, equation in rows.equations.items():
        ours = reduced.equations[name]
        assert ours.terms == equation.terms
        np.testing.assert_allclose(ours.x_mean, equation.x_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.x_sd, equation.x_sd, rtol=1e-10)
        np.testing.assert_allclose(ours.link_scale(), equation.link_scale(), rtol=1e-10)
        expected = sufficient_statistics(rows, name).as_dict()
        for key, value in reduced.statistics[name].as_dict().items():
            np.testing.assert_allclose(value, expected[key], rtol=1e-9, atol=1e-8,
                                       err_msg=f"{name}.{key}")
    # the correlated mediators' joint cross-products too
    assert spec.correlated_errors
    expected = joint_statistics(rows, spec.correlated_errors).as_dict()
    for key, value in joint_statistics(reduced, spec.correlated_errors).as_dict().items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-9, atol=1e-8,
                                   err_msg=f"joint.{key}")


def test_reduction_refuses_non_gaussian_specs_and_missing_columns(
        small_table: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "prepared.parquet"
    small_table.drop(columns=["log_reposts"]).to_parquet(path)
    with pytest.raises(SpecError, match="log_reposts"):
        reduce_prepared(load_spec(REGIONAL), path)
    with pytest.raises(SpecError, match="gaussian"):
        reduce_prepared(load_spec(SES), path)


@pytest.mark.slow
def test_fit_from_statistics_equals_the_fit_from_rows(default_table: pd.DataFrame,
                                                      tmp_path: Path, regional_fit) -> None:
    path = tmp_path / "prepared.parquet"
    default_table.to_parquet(path, row_group_size=500)
    result = fit_design(reduce_prepared(load_spec(REGIONAL), path, chunk_rows=300), QUICK)
    assert result.record["per_campaign"] == "skip"
    assert "posterior_predictive" not in result.idata.groups()
    ours, theirs = result.idata.posterior, regional_fit.idata.posterior
    for name in regional_fit.spec.equations:
        for variable in (f"coefficients_{name}", f"sigma_{name}", f"county_sd_{name}",
                         f"county_intercept_{name}"):
            scale = theirs[variable].std(("chain", "draw"))
            gap = np.abs(ours[variable].mean(("chain", "draw"))
                         - theirs[variable].mean(("chain", "draw"))) / scale
            assert float(gap.max()) < 0.2, variable
    pd.testing.assert_frame_equal(
        result.effects[["effect", "mediator"]], regional_fit.effects[["effect", "mediator"]])
    np.testing.assert_allclose(result.effects["mean"], regional_fit.effects["mean"],
                               atol=0.2 * regional_fit.effects["sd"].max())
    shrink = result.shrinkage.merge(regional_fit.shrinkage,
                                    on=["equation", "level", "code"])
    assert (shrink["campaigns_x"] == shrink["campaigns_y"]).all()


def test_fit_command_reduces_large_gaussian_tables_only(small_table: pd.DataFrame,
                                                        tmp_path: Path, monkeypatch) -> None:
    from fundgap import reduce
    from fundgap.errors import FundgapError
    from fundgap.pipeline import use_statistics

    path = tmp_path / "prepared.parquet"
    small_table.to_parquet(path)
    spec = load_spec(REGIONAL)
    assert not use_statistics(spec, str(path), "auto")          # 400 rows: keep the rows
    assert use_statistics(spec, str(path), "always")
    assert not use_statistics(spec, str(path), "never")
    monkeypatch.setattr(reduce, "REDUCE_ROWS", 100)
    assert use_statistics(spec, str(path), "auto")
    csv = tmp_path / "prepared.csv"
    small_table.to_csv(csv, index=False)
    with pytest.raises(FundgapError, match="parquet"):
        use_statistics(spec, str(csv), "always")
