"""Groupings named by any column of the table fitted: `(1|school) + (1|district)` on a table
that is not the study's, nesting read from the data, crossed groupings refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fundgap
from fundgap.design import build_design, nest_in_table
from fundgap.errors import SpecError
from fundgap.figures import shrinkage_figure
from fundgap.frequentist_tables import ROW_CLUSTERS, ols_table
from fundgap.marginal import sufficient_statistics
from fundgap.reduce import reduce_prepared
from fundgap.spec import parse_spec

# the simulated truth
TRUTH = {"a": 0.5, "b": 0.7, "direct": 0.3, "district_sd": 0.5, "school_sd": 0.3}


def schools(seed: int = 3, districts: int = 40, per_district: int = 5) -> pd.DataFrame:
    """Pupils in schools in districts: x -> m -> y, with district and school intercepts
    in y (none in m); school codes are unique across districts."""
    rng = np.random.default_rng(seed)
    n_schools = districts * per_district
    district_of = np.repeat(np.arange(districts), per_district)
    pupils = rng.integers(1, 9, n_schools)
    school = np.repeat(np.arange(n_schools), pupils)
    district = district_of[school]
    district_effect = rng.normal(0, TRUTH["district_sd"], districts)
    school_effect = rng.normal(0, TRUTH["school_sd"], n_schools)
    x = rng.normal(size=len(school))
    m = TRUTH["a"] * x + rng.normal(size=len(school))
    y = (TRUTH["direct"] * x + TRUTH["b"] * m + district_effect[district]
         + school_effect[school] + rng.normal(size=len(school)))
    return pd.DataFrame({"school": [f"S{s}" for s in school],
                         "district": [f"D{d}" for d in district], "x": x, "m": m, "y": y})


def spec_text(groups: str = "(1|school) + (1|district)") -> str:
    return ('name = "schools"\nexposure = "x"\noutcome = "y"\nmediators = ["m"]\n'
            f'[equations.m]\nformula = "m ~ x + {groups}"\n'
            f'[equations.y]\nformula = "y ~ x + m + {groups}"\n')


def _spec(table: pd.DataFrame, groups: str = "(1|school) + (1|district)"):
    return parse_spec(spec_text(groups), "schools.toml", set(table.columns))


def test_any_grouping_column_is_fitted_with_its_own_dimension(tmp_path: Path) -> None:
    """A fit recovers the known coefficients and both sds, names its dims after the groups
    (school, district) with the table's codes, gates the sds, and saves and loads."""
    table = schools()
    spec_path = tmp_path / "schools.toml"
    spec_path.write_text(spec_text())
    result = fundgap.fit(spec_path, data=table, draws=1000, chains=2, seed=5, progress=False)
    assert result.diagnostics["passed"], result.diagnostics["reasons"]
    posterior = result.idata.posterior
    assert set(posterior["school_intercept_y"].coords["school"].values) == set(table.school)
    assert set(posterior["district_intercept_y"].coords["district"].values) == set(
        table.district)
    reported = result.summary[result.summary["reported"]]
    assert {"school_sd_y", "district_sd_y", "school_sd_m", "district_sd_m"} <= set(
        reported.index)
    for name, truth in [("district_sd_y", TRUTH["district_sd"]),
                        ("school_sd_y", TRUTH["school_sd"]),
                        ("coefficients_y[x]", TRUTH["direct"]),
                        ("coefficients_y[m]", TRUTH["b"]),
                        ("coefficients_m[x]", TRUTH["a"])]:
        row = reported.loc[name]
        assert row["hdi_2.5%"] < truth < row["hdi_97.5%"], name
    # no intercepts in m: its sds sit near zero, well under y's
    assert reported.loc["school_sd_m", "mean"] < reported.loc["school_sd_y", "mean"]
    assert set(result.shrinkage["level"]) == {"school", "district"}
    [figure] = shrinkage_figure(result.shrinkage, "y")
    assert figure.caption.startswith("School intercepts of y")
    result.save(tmp_path / "fit")
    loaded = fundgap.load(tmp_path / "fit")
    assert loaded.effects.equals(result.effects)


def test_a_count_equation_by_laplace_with_any_grouping() -> None:
    """The Laplace form takes any two nested groupings too, and draws their intercepts."""
    table = schools()
    table["visits"] = np.random.default_rng(4).poisson(np.exp(0.5 + 0.3 * table["x"]))
    text = ('name = "visits"\nexposure = "x"\noutcome = "visits"\n[equations.visits]\n'
            'formula = "visits ~ x + (1|district) + (1|school)"\nfamily = "poisson"\n')
    spec = parse_spec(text, "visits.toml", set(table.columns))
    result = fundgap.fit(spec, data=table, draws=400, chains=2, seed=2, form="laplace",
                         progress=False)
    assert result.diagnostics["equation_forms"] == {"visits": "laplace"}
    posterior = result.idata.posterior
    assert posterior["school_intercept_visits"].sizes["school"] == table.school.nunique()
    assert posterior["district_intercept_visits"].sizes["district"] == 40
    coefficient = result.summary.loc["coefficients_visits[x]"]
    assert coefficient["hdi_2.5%"] < 0.3 < coefficient["hdi_97.5%"]


@pytest.mark.parametrize("groups", ["(1|school) + (1|district)",
                                    "(1|district) + (1|school)"])
def test_nesting_is_read_from_the_data_not_from_the_formula(groups: str) -> None:
    table = schools()
    assert build_design(_spec(table, groups), table).equations["y"].groups == (
        "district", "school")
    # names whose alphabetical order is the other way round: still outer first
    renamed = table.rename(columns={"school": "a_unit", "district": "z_area"})
    text = groups.replace("school", "a_unit").replace("district", "z_area")
    assert build_design(_spec(renamed, text), renamed).equations["m"].groups == (
        "z_area", "a_unit")


def test_crossed_groupings_are_refused_naming_a_level_found_in_two() -> None:
    """School numbers reused in every district (1..5 in each) cross the districts: refused,
    not fitted as if nested."""
    table = schools()
    table["school"] = table["school"].str[1:].astype(int) % 5
    with pytest.raises(SpecError, match=r"crossed, not nested: district 'D\d+' lies in "
                                        r"school '\d' and '\d'"):
        build_design(_spec(table), table)


def test_study_counties_outside_one_prefecture_are_refused(small_table: pd.DataFrame) -> None:
    """The study's own groupings are checked too: a county code found in two prefectures."""
    table = small_table.copy()
    sizes = table["county_code"].value_counts()
    county = sizes.index[sizes >= 2][0]
    home = table.loc[table["county_code"] == county, "prefecture_code"].iloc[0]
    other = table.loc[table["prefecture_code"] != home, "prefecture_code"].iloc[0]
    table.loc[table.index[table["county_code"] == county][:1], "prefecture_code"] = other
    text = ('name = "t"\nexposure = "development"\noutcome = "log_amount_raised"\n'
            '[equations.log_amount_raised]\nformula = "log_amount_raised ~ development + '
            '(1|prefecture) + (1|county)"\n')
    with pytest.raises(SpecError, match=f"county '{county}' lies in prefecture"):
        build_design(parse_spec(text, "t.toml"), table)


@pytest.mark.parametrize(("group", "message"), [
    ("campaign", "'campaign' is a name the posterior already uses"),
    ("term_x", "'term_x' is a name the posterior already uses"),
    ("intercept", "'intercept' is a name the posterior already uses"),
    ("classroom", "unknown group 'classroom': no such column in the data"),
])
def test_a_grouping_must_be_a_column_and_not_a_dimension_name(group: str,
                                                               message: str) -> None:
    table = schools().assign(campaign="c", term_x="t", intercept="i")
    with pytest.raises(SpecError, match=message):
        _spec(table, f"(1|{group})")


def test_chunked_statistics_with_any_groupings_equal_the_rows(tmp_path: Path) -> None:
    table = schools()
    path = tmp_path / "schools.parquet"
    table.to_parquet(path, row_group_size=100)
    spec = _spec(table)
    rows = build_design(spec, table)
    reduced = reduce_prepared(spec, path, chunk_rows=83)
    assert reduced.equations["y"].groups == rows.equations["y"].groups == (
        "district", "school")
    for name in rows.equations:
        expected = sufficient_statistics(rows, name).as_dict()
        for key, value in reduced.statistics[name].as_dict().items():
            np.testing.assert_allclose(value, expected[key], rtol=1e-9, atol=1e-8,
                                       err_msg=f"{name}.{key}")


def test_the_frequentist_side_clusters_by_the_innermost_grouping() -> None:
    """OLS errors cluster by school (the inner grouping, as the study's by county); an
    equation without groupings gets robust errors, each row its own cluster."""
    import statsmodels.api as sm

    table = schools()
    spec = _spec(table, "(1|district) + (1|school)")
    assert nest_in_table(spec, table).equations["y"].groups == ("district", "school")
    ols, _ = ols_table(spec, table)
    assert set(ols["cluster"]) == {"school"}
    single = parse_spec('name = "s"\nexposure = "x"\noutcome = "y"\n[equations.y]\n'
                        'formula = "y ~ x"\n', "s.toml", set(table.columns))
    ols, _ = ols_table(single, table)
    assert set(ols["cluster"]) == {ROW_CLUSTERS}
    robust = sm.OLS(table["y"], sm.add_constant(table[["x"]])).fit().get_robustcov_results(
        cov_type="cluster", groups=np.arange(len(table)))
    np.testing.assert_allclose(ols["cluster_std_error"], robust.bse, rtol=1e-10)


def test_a_table_of_ones_own_may_call_its_counties_county() -> None:
    """`(1|county)` on a table with a `county` column and no `county_code` groups by that
    column (the study's code column where a table has it)."""
    table = schools().rename(columns={"school": "county", "district": "prefecture"})
    spec = _spec(table, "(1|county) + (1|prefecture)")
    assert set(spec.equations["y"].groups) == {"prefecture", "county"}
    design = build_design(spec, table)
    assert design.equations["y"].groups == ("prefecture", "county")
    assert set(design.grouping_dims) == {"prefecture", "county"}
    assert len(design.levels["county"]) == table["county"].nunique()
