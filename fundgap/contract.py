"""The input data contract: column rules as data, loading, and validation.

A data folder holds campaigns and counties (required), donations and ratings (optional), each
as CSV or Parquet with the same columns (../shared/spec/data_contract.md). Every problem is
collected, each naming file, row and column; `load_dataset` raises them all at once.

Each file's cells are parsed and checked by its column rules in fundgap.cells; here are the
rules across rows and files (county codes, campaign links, donation sequences) and the
entry points.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fundgap.cells import parse_table, read_raw, report
from fundgap.errors import DataContractError, Problem
from fundgap.rules import (
    CENSUS_YEARS,
    COUNTY_CONTROLS,
    DEVELOPMENT_INDICATORS,
    SES_ITEM_PREFIX,
    SUPPLIED_BY,
    TABLES,
)
from fundgap.stream import (
    CORE_WINDOW,
    DERIVED_AFTER,
    Coder,
    WindowSums,
    is_streamed,
    off_sequence,
    text_chunks,
)


@dataclass
class Dataset:
    """A validated data folder: typed frames, one per file, plus where they came from."""

    source: Path
    campaigns: pd.DataFrame
    counties: pd.DataFrame
    donations: pd.DataFrame | None = None
    ratings: pd.DataFrame | None = None
    files: dict[str, str] = field(default_factory=dict)
    # a donations file too large to hold (fundgap.stream): `donations` is then None, and
    # donation_chunks() reads it again
    donations_file: Path | None = None
    # the donations' window sums, added up as they were checked (prepare's capacities)
    donation_sums: WindowSums | None = None

    @property
    def has_donations(self) -> bool:
        return self.donations is not None or self.donations_file is not None

    def donation_chunks(self) -> Iterator[pd.DataFrame]:
        """The donations, parsed as validated, whole or (a large file) a chunk at a time."""
        if self.donations_file is None:
            if self.donations is not None:
                yield self.donations
            return
        rules = TABLES["donations"][0]
        for chunk in text_chunks(self.donations_file):
            yield parse_table(chunk[[r.name for r in rules]], rules,
                              self.donations_file.name, [])


# ---------------------------------------------------------------- reading


def _find_file(folder: Path, table: str, problems: list[Problem]) -> Path | None:
    found = [folder / f"{table}.{ext}" for ext in ("csv", "parquet")]
    found = [p for p in found if p.exists()]
    if len(found) > 1:
        problems.append(Problem(found[0].name, None, None,
                                f"both {table}.csv and {table}.parquet exist; keep one"))
        return None
    return found[0] if found else None


# ---------------------------------------------------------------- cross-file rules


def _check_counties(counties: pd.DataFrame, used: set[str], file: str,
                    problems: list[Problem]) -> None:
    # a column left out is reported as missing already; the rules that need it wait for it
    if {"prefecture_code", "province_code"} <= set(counties.columns):
        provinces = counties.dropna(subset=["prefecture_code", "province_code"])
        multi = provinces.groupby("prefecture_code")["province_code"].nunique()
        for code in multi[multi > 1].index:
            rows = np.flatnonzero((counties["prefecture_code"] == code).to_numpy())
            problems.append(Problem(file, int(rows[0]) + 1, "province_code",
                                    f"prefecture {code} is placed in more than one province"))
    in_use = counties["county_code"].isin(used).to_numpy()
    indicators = [*DEVELOPMENT_INDICATORS, *COUNTY_CONTROLS]
    for name in indicators:
        columns = [f"{name}_{year}" for year in CENSUS_YEARS]
        if not all(c in counties.columns for c in columns):
            continue
        both_missing = counties[columns].isna().all(axis=1).to_numpy() & in_use
        for index in np.flatnonzero(both_missing):
            county = counties["county_code"].iloc[index]
            problems.append(Problem(
                file, int(index) + 1, f"{columns[0]}/_{CENSUS_YEARS[1]}",
                f"county {county} has campaigns but no value in either census year",
                "a county with campaigns has no value in either census year", str(county)))


def _check_campaign_links(campaigns: pd.DataFrame, counties: pd.DataFrame, file: str,
                          problems: list[Problem]) -> None:
    known = set(counties["county_code"].dropna())
    unknown = campaigns["county_code"].notna() & ~campaigns["county_code"].isin(known)
    report(problems, file, "county_code", unknown, campaigns["county_code"],
           lambda v: f"county code {v} is not in counties", "county code not in counties")


def _check_child(table: str, chunks: Iterable[pd.DataFrame], campaigns: pd.DataFrame | None,
                 files: dict[str, str], problems: list[Problem],
                 sums: WindowSums | None = None) -> None:
    """A donations or ratings file, whole or a chunk at a time: each row's campaign must be
    in campaigns, each campaign must have rows here, and (donations) each campaign's seq
    must run 1, 2, 3, ... with no gap or repeat (in any row order). `sums`, where given,
    adds up the donations' window sums from the same chunks."""
    file = files[table]
    ids = (campaigns["campaign_id"].dropna() if campaigns is not None
           and "campaign_id" in campaigns else None)
    coder = Coder(None if ids is None else pd.Index(ids))
    codes, seqs = [], []
    for chunk in chunks:
        if "campaign_id" not in chunk:   # reported as missing; the chunks are still checked
            continue
        code = coder(chunk["campaign_id"])
        if ids is not None:
            report(problems, file, "campaign_id", pd.Series(code >= coder.known,
                                                            index=chunk.index),
                   chunk["campaign_id"], lambda v: f"campaign {v} is not in campaigns",
                   "campaign not in campaigns")
        codes.append(code)
        if table == "donations" and "seq" in chunk:
            seq = chunk["seq"].to_numpy(dtype=float)   # -1: missing (no part in the rule)
            if sums is not None and "amount" in chunk:
                sums.add(code, seq, chunk["amount"].to_numpy(dtype=float), coder.ids)
            seqs.append(np.where(np.isnan(seq), -1,
                                 np.clip(np.nan_to_num(seq), 0, 2**31 - 1)).astype(np.int32))
    if not codes:
        return
    # the chunks' codes and seqs are kept apart, never joined (a copy of every row's)
    if ids is not None:
        # every campaign needs rows here, or what this file supplies cannot be computed
        covered = np.zeros(coder.known, bool)
        for code in codes:
            covered[code[(code >= 0) & (code < coder.known)]] = True
        lacking = campaigns["campaign_id"].notna() & ~campaigns["campaign_id"].isin(
            coder.ids[:coder.known][covered])
        report(problems, files["campaigns"], "campaign_id", lacking,
               campaigns["campaign_id"],
               lambda v: f"campaign {v} has no rows in {table}, so its "
                         f"{SUPPLIED_BY[table]} cannot be computed",
               f"a campaign has no rows in {table}, so its {SUPPLIED_BY[table]} "
               "cannot be computed")
    if seqs:
        # the campaigns out of order, found in O(rows); their rows then say where
        off = off_sequence(codes, seqs, len(coder.ids))
        offending, start = [], 0
        for code, seq in zip(codes, seqs, strict=True):
            rows = np.flatnonzero((code >= 0) & (seq >= 0) & off[np.maximum(code, 0)])
            offending.append(pd.DataFrame({"campaign_id": coder.ids[code[rows]],
                                           "seq": seq[rows]}, index=rows + start))
            start += len(code)
        _check_sequences(pd.concat(offending), file, problems)


def _check_sequences(donations: pd.DataFrame, file: str, problems: list[Problem]) -> None:
    """Within a campaign, seq must run 1, 2, 3, ... with no gap or repeat (any row order);
    the first row off in each campaign is reported."""
    valid = donations.dropna(subset=["campaign_id", "seq"])
    ordered = valid.sort_values(["campaign_id", "seq"], kind="stable")
    expected = ordered.groupby("campaign_id", sort=False).cumcount() + 1
    off = ordered["seq"].to_numpy() != expected.to_numpy()
    first_off = ordered[off].groupby("campaign_id", sort=False).head(1)
    expected_off = expected[off].groupby(ordered["campaign_id"][off], sort=False).head(1)
    for (index, row), want in zip(first_off.iterrows(), expected_off, strict=True):
        got = int(row["seq"])
        what = "repeats" if got < want else f"skips to {got}"
        problems.append(Problem(file, int(index) + 1, "seq",
                                f"campaign {row['campaign_id']}: seq {what} where {want} "
                                "was expected (no gaps or repeats)",
                                "seq must run 1, 2, 3, ... in each campaign",
                                f"campaign {row['campaign_id']} {what} where {want} was "
                                "expected"))


def _check_optional_sources(campaigns: pd.DataFrame, has: dict[str, bool], file: str,
                            problems: list[Problem]) -> None:
    """Columns that may be left out only where another file or column supplies them."""
    ses_items = [c for c in campaigns.columns if c.startswith(SES_ITEM_PREFIX)]
    sources = {
        "core_capacity": (has["donations"], "donations.csv"),
        "derived_capacity": (has["donations"], "donations.csv"),
        "emotional_rating": (has["ratings"], "ratings.csv"),
        "ses_index": (bool(ses_items), f"{SES_ITEM_PREFIX}* columns"),
    }
    for column, (supplied, source) in sources.items():
        if supplied:
            continue
        if column not in campaigns.columns:
            problems.append(Problem(file, None, column, f"missing column (and no {source} "
                                                        "to compute it from)"))
            continue
        empty = campaigns[column].isna()
        report(problems, file, column, empty, campaigns[column],
               lambda _v, s=source: f"missing value (and no {s} to compute it from)")


# ---------------------------------------------------------------- entry points


def _collect(folder: Path, windows: tuple[int, int] = (CORE_WINDOW, DERIVED_AFTER)
             ) -> tuple[Dataset | None, list[Problem]]:
    problems: list[Problem] = []
    if not folder.is_dir():
        return None, [Problem(str(folder), None, None, "is not a folder")]
    raw: dict[str, pd.DataFrame | None] = {}
    files: dict[str, str] = {}
    streamed: dict[str, Path] = {}
    # A file that exists counts as a source even when it is unreadable (its own problem
    # is reported), so the columns it would supply are not reported missing as well.
    present = {t for t in TABLES if any((folder / f"{t}.{e}").exists()
                                        for e in ("csv", "parquet"))}
    for table, (_rules, required) in TABLES.items():
        path = _find_file(folder, table, problems)
        if path is None:
            if required and not any(p.file.startswith(table) for p in problems):
                problems.append(Problem(f"{table}.csv", None, None, "required file is missing"))
            raw[table] = None
            continue
        files[table] = path.name
        if table == "donations" and is_streamed(path):
            streamed[table], raw[table] = path, None   # checked chunk by chunk below
            continue
        raw[table] = read_raw(path, problems)

    parsed: dict[str, pd.DataFrame] = {}
    has = {t: t in present for t in ("donations", "ratings")}
    for table, (rules, _required) in TABLES.items():
        if raw[table] is not None:
            parsed[table] = parse_table(raw[table], rules, files[table], problems)

    campaigns, counties = parsed.get("campaigns"), parsed.get("counties")
    if campaigns is not None:
        _check_optional_sources(campaigns, has, files["campaigns"], problems)
    if (campaigns is not None and counties is not None and "county_code" in campaigns
            and "county_code" in counties):
        _check_campaign_links(campaigns, counties, files["campaigns"], problems)
        used = set(campaigns["county_code"].dropna())
        _check_counties(counties, used, files["counties"], problems)
    sums = WindowSums(*windows) if has["donations"] else None
    for table in ("donations", "ratings"):
        summed = sums if table == "donations" else None
        if table in streamed:
            # a file that stops parsing is as one that cannot be read: no rule across rows
            with suppress(_Unreadable):
                _check_child(table, _streamed_chunks(streamed[table], table, problems),
                             campaigns, files, problems, summed)
        elif parsed.get(table) is not None:
            _check_child(table, [parsed[table]], campaigns, files, problems, summed)

    problems = sorted(set(problems), key=_problem_order)
    if problems or campaigns is None or counties is None:
        return None, problems
    dataset = Dataset(folder, campaigns, counties, parsed.get("donations"),
                      parsed.get("ratings"), files, streamed.get("donations"), sums)
    return dataset, problems


class _Unreadable(Exception):
    """A streamed file stopped parsing part way (its problem is recorded)."""


def _streamed_chunks(path: Path, table: str, problems: list[Problem]) -> Iterator[pd.DataFrame]:
    """A large file's chunks parsed and checked against its rules (only the rules' columns
    are kept: nothing checks the others); a chunk that cannot be parsed records a problem
    and raises _Unreadable."""
    rules = TABLES[table][0]
    try:
        for chunk in text_chunks(path):
            yield parse_table(chunk[[r.name for r in rules if r.name in chunk]], rules,
                              path.name, problems)
    except ValueError as error:
        problems.append(Problem(path.name, None, None, f"cannot be read: {error}"))
        raise _Unreadable from None


def _problem_order(problem: Problem) -> tuple:
    return (problem.file, problem.row or 0, problem.column or "", problem.message)


def validate(folder: str | Path) -> list[Problem]:
    """Every contract problem in a data folder; an empty list means the data are clean."""
    return _collect(Path(folder))[1]


def load_dataset(folder: str | Path,
                 windows: tuple[int, int] = (CORE_WINDOW, DERIVED_AFTER)) -> Dataset:
    """Load and validate a data folder; raises DataContractError listing every problem.
    `windows` (core_window, derived_after) are the seq windows of the donations' sums kept
    for the capacities (prepare reads the stream again for others)."""
    folder = Path(folder)
    dataset, problems = _collect(folder, windows)
    if problems or dataset is None:
        raise DataContractError(problems, str(folder))
    return dataset


def read_table(path: str | Path, table: str) -> pd.DataFrame:
    """Read and check one file against the rules of `table` (e.g. a county table given to the
    simulator); raises DataContractError with every problem in it."""
    path = Path(path)
    problems: list[Problem] = []
    if not path.is_file():
        raise DataContractError([Problem(str(path), None, None, "file not found")], str(path))
    raw = read_raw(path, problems)
    frame = None
    if raw is not None:
        frame = parse_table(raw, TABLES[table][0], path.name, problems)
    if problems or frame is None:
        raise DataContractError(problems, str(path))
    return frame
