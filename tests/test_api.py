"""The Python API a notebook uses: fundgap.fit / load / simulate / validate / prepare /
frequentist, through the same pipeline as the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fundgap
from fundgap.errors import FundgapError

from conftest import REGIONAL

FEW = {"draws": 200, "tune": 200, "chains": 2, "seed": 3, "progress": False}


def test_simulate_write_validate_prepare(tmp_path: Path) -> None:
    data = fundgap.simulate(300, seed=5)
    assert len(data.campaigns) == 300 and "parameters" in data.truth
    folder = data.write(tmp_path / "small")
    assert fundgap.validate(folder) == []
    prepared = fundgap.prepare(folder)
    assert len(prepared.table) == 300 and "development" in prepared.table
    # a loaded Dataset is accepted too, and gives the same table
    again = fundgap.prepare(fundgap.load_dataset(folder))
    pd.testing.assert_frame_equal(again.table, prepared.table)
    ses = fundgap.simulate(200, seed=1, design="ses")
    assert len(ses.campaigns) == 200
    with pytest.raises(ValueError, match="unknown design"):
        fundgap.simulate(10, design="other")


def test_fit_save_load_round_trip(small_simulation: Path, small_table: pd.DataFrame,
                                  tmp_path: Path) -> None:
    """A data folder, a prepared file and a DataFrame give the same fit; saved and loaded,
    its tables are the same, and loading against other data is refused."""
    result = fundgap.fit(REGIONAL, data=small_table, **FEW)
    assert {"effect", "mean", "ci_lower", "ci_upper"} <= set(result.effects.columns)
    assert result.idata.posterior.sizes["chain"] == 2
    from_folder = fundgap.fit(str(REGIONAL), data=small_simulation, **FEW)
    np.testing.assert_array_equal(from_folder.effects["mean"], result.effects["mean"])
    folder = result.save(tmp_path / "fit")
    loaded = fundgap.load(folder, spec=REGIONAL, data=small_table)
    pd.testing.assert_frame_equal(loaded.effects.drop(columns="defined"),
                                  result.effects.drop(columns="defined"), check_dtype=False)
    assert loaded.diagnostics["passed"] == result.diagnostics["passed"]
    assert json.loads((folder / "fit.json").read_text())["settings"]["draws"] == 200
    other = small_table.assign(age=small_table["age"] + 1)
    with pytest.raises(FundgapError, match="other data"):
        fundgap.load(folder, data=other)


def test_frequentist_from_any_source(small_simulation: Path, small_table: pd.DataFrame
                                     ) -> None:
    tables = fundgap.frequentist(REGIONAL, small_table, replicates=9, mixedlm="none")
    assert not tables.ols.empty and not tables.khb.empty and tables.mixedlm.empty
    again = fundgap.frequentist(REGIONAL, small_simulation, replicates=9, mixedlm="none")
    pd.testing.assert_frame_equal(tables.khb, again.khb)
    with pytest.raises(FundgapError, match="no column"):
        fundgap.frequentist(REGIONAL, small_table.drop(columns="verifier_count"))


def test_any_table_with_its_own_columns(tmp_path: Path, capsys) -> None:
    """A spec naming columns of another table (not the study's prepared one) fits through
    `fundgap fit` and the API, checked against that table's columns; a column the table
    lacks is named."""
    from fundgap.cli import main

    from conftest import grouped_table

    table = grouped_table("gaussian", 400, 60, 8, seed=4).rename(
        columns={"x": "dose", "y": "response"})
    path = tmp_path / "other.parquet"
    table.to_parquet(path, index=False)
    spec = tmp_path / "other.toml"
    spec.write_text('name = "other"\nexposure = "dose"\noutcome = "response"\n'
                    '[equations.response]\n'
                    'formula = "response ~ dose + (1|prefecture) + (1|county)"\n')
    assert main(["fit", str(spec), "--data", str(path), "--out", str(tmp_path / "fit"),
                 "--draws", "200", "--tune", "200", "--chains", "2", "--quiet"]) in (0, 1)
    effects = pd.read_csv(tmp_path / "fit" / "effects.csv", keep_default_na=False)
    total = effects.loc[effects["effect"] == "total", "mean"].item()
    assert abs(total - 0.4) < 0.1          # the simulated slope
    result = fundgap.fit(spec, data=table, **FEW)
    assert abs(result.effects.loc[result.effects["effect"] == "total", "mean"].item()
               - 0.4) < 0.1
    capsys.readouterr()
    assert main(["fit", str(spec), "--data", str(path.with_suffix(".csv")), "--out",
                 str(tmp_path / "none")]) == 1
    table.drop(columns="dose").to_csv(path.with_suffix(".csv"), index=False)
    assert main(["fit", str(spec), "--data", str(path.with_suffix(".csv")), "--out",
                 str(tmp_path / "none")]) == 1
    assert "unknown column 'dose'" in capsys.readouterr().err


# R's mediation package vignette (Tingley, Yamamoto, Hirose, Keele and Imai 2014, J. Stat.
# Software 59(5)) on Brader, Valentino and Suhay's (2008) framing experiment, parametric
# (quasi-Bayesian) estimates with a probit outcome: ACME (treated), ADE (control), total
FRAMING_PUBLISHED = {"indirect_total": 0.076348, "direct": 0.021389, "total": 0.097736}
FRAMING_SPEC = """name = "framing"
exposure = "treat"
mediators = ["emo"]
outcome = "cong_mesg"
[equations.emo]
formula = "emo ~ treat + age + educ + gender + income"
[equations.cong_mesg]
formula = "cong_mesg ~ emo + treat + age + educ + gender + income"
family = "bernoulli"
"""


def test_a_published_single_level_mediation_analysis(tmp_path: Path) -> None:
    """The framing experiment (a 0/1 treatment, a Gaussian mediator, a 0/1 outcome, no
    groups), with the copy of its data statsmodels ships for its own check against R: the
    natural effects agree with the vignette's within 0.02 (ours a logit, theirs a probit)."""
    import statsmodels

    path = Path(statsmodels.__file__).parent / "stats" / "tests" / "results" / "framing.csv"
    if not path.is_file():
        pytest.skip(f"statsmodels' copy of the framing data is not installed ({path})")
    data = pd.read_csv(path).drop(columns="Unnamed: 0", errors="ignore")
    spec = tmp_path / "framing.toml"
    spec.write_text(FRAMING_SPEC)
    result = fundgap.fit(spec, data=data, draws=1000, chains=4, seed=1, progress=False)
    assert result.diagnostics["passed"], result.diagnostics["reasons"]
    effects = result.effects.set_index("effect")
    for effect, published in FRAMING_PUBLISHED.items():
        assert effects.loc[effect, "mean"] == pytest.approx(published, abs=0.02), effect
