"""The validation corpus: each kind of bad input gets a problem naming file, row and column."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fundgap.cli import main
from fundgap.contract import load_dataset, validate
from fundgap.errors import DataContractError, Problem
from fundgap.rules import TABLES

from conftest import edit_cell, tiny_campaigns, tiny_counties, tiny_donations, tiny_ratings


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def test_clean_folder_has_no_problems(tiny: Path) -> None:
    assert validate(tiny) == []
    dataset = load_dataset(tiny)
    assert len(dataset.campaigns) == 8
    assert dataset.campaigns["amount_raised"].dtype == float


@pytest.mark.parametrize(
    ("file", "row", "column", "value", "expected"),
    [
        ("campaigns.csv", 3, "amount_raised", "abc", "'abc' is not a number"),
        ("campaigns.csv", 2, "amount_raised", "-5", "must be > 0"),
        ("campaigns.csv", 4, "target_amount", "", "missing value"),
        ("campaigns.csv", 4, "target_amount", "NaN", "missing value"),
        ("campaigns.csv", 5, "verifier_count", "2.5", "not a whole number"),
        ("campaigns.csv", 6, "repost_count", "-1", "must be >= 0"),
        ("campaigns.csv", 7, "age", "130", "must be >= 0 and <= 120"),
        ("campaigns.csv", 1, "channel", "wechat", "must be acquaintance or mixed"),
        ("campaigns.csv", 8, "gender", "m", "must be male or female"),
        ("campaigns.csv", 2, "county_code", "999999", "county code 999999 is not in counties"),
        ("campaigns.csv", 2, "county_code", "11010", "'11010' is not a 6-digit code"),
        ("campaigns.csv", 3, "campaign_id", "C1", "'C1' appears more than once"),
        ("counties.csv", 2, "urbanisation_rate_2020", "1.5", "must be >= 0 and <= 1"),
        ("counties.csv", 3, "population_millions_2010", "0", "must be > 0"),
        ("donations.csv", 10, "amount", "0", "must be > 0"),
        ("donations.csv", 11, "campaign_id", "C99", "campaign C99 is not in campaigns"),
        ("ratings.csv", 4, "score", "11", "must be >= 0 and <= 10"),
        ("ratings.csv", 5, "dimension", "video", "must be image or text"),
    ],
)
def test_bad_cell_is_located(tiny: Path, file: str, row: int, column: str, value: str,
                             expected: str) -> None:
    edit_cell(tiny, file, row, column, value)
    problem = only([p for p in validate(tiny) if (p.file, p.column) == (file, column)])
    assert (problem.file, problem.row) == (file, row)
    assert expected in problem.message


def test_gap_and_repeat_in_donation_sequence(tiny: Path) -> None:
    edit_cell(tiny, "donations.csv", 5, "seq", "7")      # C1: 1, 2, 3, 4, 7, 6, 7, ...
    edit_cell(tiny, "donations.csv", 352, "seq", "1")    # C2: 1, 1, 3, ...
    problems = [p for p in validate(tiny) if p.column == "seq"]
    assert len(problems) == 2
    by_message = {p.message.split(":")[0]: p for p in problems}
    assert "repeats" in by_message["campaign C2"].message
    # sorted, C1 runs 1, 2, 3, 4, 6, 7, 7: the first break is where 5 was expected
    assert "skips to 6 where 5 was expected" in by_message["campaign C1"].message


def test_every_problem_is_collected(tiny: Path) -> None:
    edit_cell(tiny, "campaigns.csv", 1, "amount_raised", "x")
    edit_cell(tiny, "campaigns.csv", 2, "age", "-3")
    edit_cell(tiny, "counties.csv", 1, "minority_share_2020", "2")
    edit_cell(tiny, "ratings.csv", 1, "score", "")
    problems = validate(tiny)
    assert {(p.file, p.row, p.column) for p in problems} == {
        ("campaigns.csv", 1, "amount_raised"), ("campaigns.csv", 2, "age"),
        ("counties.csv", 1, "minority_share_2020"), ("ratings.csv", 1, "score")}
    with pytest.raises(DataContractError) as raised:
        load_dataset(tiny)
    assert len(raised.value.problems) == 4


def test_missing_required_file(tiny: Path) -> None:
    (tiny / "counties.csv").unlink()
    problem = only(validate(tiny))
    assert problem.file == "counties.csv" and "required file is missing" in problem.message


def test_empty_file_and_header_only(tiny: Path) -> None:
    (tiny / "ratings.csv").write_text("")
    (tiny / "donations.csv").write_text("campaign_id,seq,amount\n")
    messages = {p.file: p.message for p in validate(tiny) if p.file != "campaigns.csv"}
    assert messages == {"ratings.csv": "the file is empty",
                        "donations.csv": "the file has a header but no rows"}


def test_missing_column(tiny: Path) -> None:
    frame = pd.read_csv(tiny / "campaigns.csv", dtype=str).drop(columns="repost_count")
    frame.to_csv(tiny / "campaigns.csv", index=False)
    problem = only(validate(tiny))
    assert (problem.file, problem.row, problem.column) == ("campaigns.csv", None,
                                                           "repost_count")


def test_optional_columns_need_a_source(tiny: Path) -> None:
    (tiny / "donations.csv").unlink()
    problems = validate(tiny)
    assert {p.column for p in problems} == {"core_capacity", "derived_capacity"}
    frame = tiny_campaigns().assign(core_capacity=0.5, derived_capacity=0.3)
    frame.loc[2, "derived_capacity"] = None
    frame.to_csv(tiny / "campaigns.csv", index=False)
    problem = only(validate(tiny))
    assert (problem.row, problem.column) == (3, "derived_capacity")


def test_county_with_campaigns_needs_one_census_year(tiny: Path) -> None:
    edit_cell(tiny, "counties.csv", 2, "mean_years_schooling_2010", "")
    assert validate(tiny) == []  # the other year is used
    edit_cell(tiny, "counties.csv", 2, "mean_years_schooling_2020", "")
    problem = only(validate(tiny))
    assert problem.row == 2 and problem.column.startswith("mean_years_schooling_2010")


def test_prefecture_in_two_provinces(tiny: Path) -> None:
    edit_cell(tiny, "counties.csv", 2, "province_code", "120000")
    problem = only(validate(tiny))
    assert "more than one province" in problem.message


def test_campaign_without_donations(tiny: Path) -> None:
    donations = pd.read_csv(tiny / "donations.csv")
    donations[donations["campaign_id"] != "C4"].to_csv(tiny / "donations.csv", index=False)
    problem = only(validate(tiny))
    assert (problem.file, problem.row, problem.column) == ("campaigns.csv", 4, "campaign_id")


def test_parquet_is_read_like_csv(tiny: Path) -> None:
    for name in ("campaigns", "donations"):
        frame = pd.read_csv(tiny / f"{name}.csv", dtype={"county_code": str})
        frame.to_parquet(tiny / f"{name}.parquet", index=False)
        (tiny / f"{name}.csv").unlink()
    assert validate(tiny) == []
    frame = pd.read_parquet(tiny / "campaigns.parquet")
    frame.loc[1, "amount_raised"] = -1.0
    frame.to_parquet(tiny / "campaigns.parquet", index=False)
    problem = only(validate(tiny))
    assert (problem.file, problem.row, problem.column) == ("campaigns.parquet", 2,
                                                           "amount_raised")


def test_csv_and_parquet_together_is_ambiguous(tiny: Path) -> None:
    pd.read_csv(tiny / "ratings.csv").to_parquet(tiny / "ratings.parquet")
    assert "keep one" in only(validate(tiny)).message


def test_cli_validate_exit_codes(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(tiny)]) == 0
    edit_cell(tiny, "campaigns.csv", 2, "amount_raised", "lots")
    assert main(["validate", str(tiny)]) == 1
    err = capsys.readouterr().err
    assert "campaigns.csv, row 2, column amount_raised: 'lots' is not a number" in err


def test_cli_prepare_writes_nothing_on_bad_input(tiny: Path, tmp_path: Path) -> None:
    edit_cell(tiny, "campaigns.csv", 1, "age", "old")
    out = tmp_path / "out" / "prepared.csv"
    result = subprocess.run(
        [sys.executable, "-m", "fundgap.cli", "prepare", str(tiny), "--out", str(out)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "campaigns.csv, row 1, column age: 'old' is not a number" in result.stderr
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_cli_reports_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    thresholds = gc.get_threshold()
    assert main(["validate", str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    # the command's collector thresholds do not outlive it (tests call main in-process)
    assert gc.get_threshold() == thresholds


def _every_column() -> list[tuple[str, str]]:
    """Each column of the contract that the tiny folder holds, with its file."""
    held = {"campaigns": tiny_campaigns(), "counties": tiny_counties(),
            "donations": tiny_donations(), "ratings": tiny_ratings()}
    return [(table, rule.name) for table, (rules, _) in TABLES.items() for rule in rules
            if rule.name in held[table].columns]


@pytest.mark.parametrize(("table", "column"), _every_column())
def test_any_column_dropped_is_a_message_never_a_traceback(tiny: Path, table: str,
                                                           column: str) -> None:
    """Each column of each file of the contract, left out: validation reports it (or accepts
    the folder where the column is optional), and preparing an accepted folder works; only
    the contract's own error ever comes out (a counties.csv without province_code raised a
    KeyError)."""
    from fundgap.prepare import prepare

    path = tiny / f"{table}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.drop(columns=column).to_csv(path, index=False)
    problems = validate(tiny)
    assert all(p.file for p in problems)
    if problems:
        assert any(p.file == path.name and p.column == column for p in problems), problems
        with pytest.raises(DataContractError):
            load_dataset(tiny)
    else:
        prepare(load_dataset(tiny))


def test_a_rule_broken_on_many_rows_is_one_line_and_hides_no_other(tiny: Path,
                                                                     capsys) -> None:
    """Hundreds of rows with an unknown county and one negative donation and one score out
    of range: `fundgap validate` prints each rule once, with its count and first rows, and
    the two single problems in full, however low the limit."""
    path = tiny / "campaigns.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["county_code"] = "999999"
    frame.to_csv(path, index=False)
    edit_cell(tiny, "donations.csv", 3, "amount", "-5")
    edit_cell(tiny, "ratings.csv", 2, "score", "12")
    problems = validate(tiny)
    assert len(problems) > len(frame)
    assert main(["validate", str(tiny), "--limit", "3"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"{len(problems)} problem(s) in") and "3 distinct" in lines[0]
    assert len(lines) == 4, lines
    assert (f"campaigns.csv, column county_code: county code not in counties: {len(frame)} "
            "rows (row 1: '999999', row 2: '999999'") in lines[1]
    assert lines[1].endswith(", ...)")
    assert "donations.csv, row 3, column amount: must be > 0 (got -5" in lines[2]
    assert "ratings.csv, row 2, column score: must be >= 0 and <= 10 (got 12" in lines[3]
