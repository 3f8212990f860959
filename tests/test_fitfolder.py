"""The fit folder: what posterior.nc keeps (and in how many bytes), reading it back, and the
guard that refuses a folder made from another spec, other data or another layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fundgap import fitfolder
from fundgap.errors import FundgapError
from fundgap.fitfolder import (
    FLOAT32_BITS,
    LATENT_GROUP,
    load_fit,
    with_intercepts,
    write_fit,
)
from fundgap.names import is_group_intercept
from fundgap.spec import load_spec
from fundgap.store import frame_fingerprint

from conftest import REGIONAL, REPO


@pytest.fixture(scope="module")
def written(regional_fit, tmp_path_factory) -> Path:
    return write_fit(regional_fit, tmp_path_factory.mktemp("fits") / "regional_mediation")


def test_posterior_keeps_every_draw_of_the_parameters_and_thinned_intercepts(
        regional_fit, written: Path) -> None:
    saved = load_fit(written)
    posterior = saved.idata.posterior
    original = regional_fit.idata.posterior
    assert not any(is_group_intercept(str(v), posterior[v].dims) for v in posterior.data_vars)
    # the sampled parameters: every draw, exactly (float64, not rounded)
    for name in ("coefficients_log_amount_raised", "county_sd_core_capacity",
                 "sigma_log_reposts"):
        np.testing.assert_array_equal(posterior[name].values, original[name].values)
    latent = getattr(saved.idata, LATENT_GROUP)
    total = latent.sizes["chain"] * latent.sizes["draw"]
    kept = regional_fit.record["settings"]["latent_draws"]
    assert kept / 2 <= total <= kept
    assert saved.record["latent_draws_kept"] == total
    name = "county_intercept_log_amount_raised"
    before = original[name].sel(draw=latent["draw"]).values
    np.testing.assert_allclose(latent[name].values, before, rtol=2.0 ** -FLOAT32_BITS,
                               atol=1e-30)
    merged = with_intercepts(saved.idata)
    assert merged.sizes["draw"] == latent.sizes["draw"] and name in merged
    assert "coefficients_log_amount_raised" in merged


def test_saved_tables_equal_the_fit(regional_fit, written: Path) -> None:
    saved = load_fit(written)
    assert saved.passed == regional_fit.diagnostics["passed"]
    assert list(saved.summary.index) == list(regional_fit.summary.index)
    np.testing.assert_allclose(saved.summary["mean"], regional_fit.summary["mean"],
                               rtol=1e-12)
    assert len(saved.effects) == len(regional_fit.effects)
    assert saved.record["layout"] == fitfolder.LAYOUT_VERSION
    assert saved.spec.text == REGIONAL.read_text("utf-8")


def test_every_latent_draw_on_request(regional_fit, written: Path, tmp_path: Path) -> None:
    record = {**regional_fit.record,
              "settings": {**regional_fit.record["settings"], "latent_draws": 0}}
    folder = write_fit(dataclasses.replace(regional_fit, record=record), tmp_path / "all")
    idata = load_fit(folder).idata
    assert LATENT_GROUP not in idata.groups()
    assert "county_intercept_core_capacity" in idata.posterior
    assert (folder / "posterior.nc").stat().st_size > 2 * (
        written / "posterior.nc").stat().st_size


def test_the_guard_refuses_another_spec_other_data_and_other_layouts(
        regional_fit, written: Path, tmp_path: Path, default_table) -> None:
    load_fit(written, load_spec(REGIONAL), frame_fingerprint(default_table))
    with pytest.raises(FundgapError, match="another version of channel_moderation"):
        load_fit(written, load_spec(REPO / "models" / "channel_moderation.toml"))
    with pytest.raises(FundgapError, match="made from other data"):
        load_fit(written, data_fingerprint="0" * 64)
    with pytest.raises(FundgapError, match="not a fit folder"):
        load_fit(tmp_path)
    newer = write_fit(dataclasses.replace(regional_fit), tmp_path / "newer")
    record = json.loads((newer / "fit.json").read_text("utf-8"))
    (newer / "fit.json").write_text(json.dumps({**record, "layout": 99}), "utf-8")
    with pytest.raises(FundgapError, match="folder layout 99"):
        load_fit(newer)
    (newer / "effects.csv").write_text("changed", "utf-8")
    with pytest.raises(fitfolder.DamagedFolder, match=r"effects\.csv"):
        load_fit(newer)


def test_saving_a_loaded_fit_copies_it(written: Path, tmp_path: Path) -> None:
    copy = load_fit(written).save(tmp_path / "copy")
    assert load_fit(copy).effects.equals(load_fit(written).effects)
