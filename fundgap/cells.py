"""A data file's text, read and parsed by its column rules (fundgap.rules): every cell that
does not parse and every value a rule refuses is a Problem naming file, row and column.

Values are first parsed from text (so "abc" in a number column is reported as such), then
checked against the rules with a pandera schema built from the same rules. fundgap.contract
applies this to each file of a data folder, and fundgap.stream to a large file's chunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc

from fundgap.errors import Problem
from fundgap.rules import MISSING_TOKENS, ColumnRule


def read_raw(path: Path, problems: list[Problem]) -> pd.DataFrame | None:
    """Read a file as text columns; report unreadable or empty files."""
    if path.stat().st_size == 0:
        problems.append(Problem(path.name, None, None, "the file is empty"))
        return None
    try:
        if path.suffix == ".parquet":
            frame = text_frame(pd.read_parquet(path))
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        problems.append(Problem(path.name, None, None, f"cannot be read: {reason}"))
        return None
    if frame.empty:
        problems.append(Problem(path.name, None, None, "the file has a header but no rows"))
        return None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True)


def text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame read from Parquet as the text a CSV of it would hold (missing: empty)."""
    return frame.astype(object).where(frame.notna(), "").map(_as_text)


def _as_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_column(raw: pd.Series, rule: ColumnRule, file: str,
                  problems: list[Problem]) -> pd.Series:
    """Turn a text column into typed values; unparseable cells become missing and a problem."""
    text = raw.astype(str).str.strip()
    missing = text.isin(MISSING_TOKENS)
    if rule.kind in ("text", "category", "code"):
        parsed = text.where(~missing, None)
        if rule.kind == "code":
            bad = ~missing & ~text.str.fullmatch(r"\d{6}")
            report(problems, file, rule.name, bad, text,
                   lambda v: f"'{v}' is not a 6-digit code", "is not a 6-digit code")
            parsed = parsed.where(~bad, None)
        return parsed.astype(object)
    numbers = _arrow_numbers(text, missing)
    if numbers is None:   # some cell does not parse: pandas, cell by cell, says which
        numbers = pd.to_numeric(text.where(~missing, None), errors="coerce").astype(float)
    bad = ~missing & (numbers.isna() | ~np.isfinite(numbers.fillna(0)))
    report(problems, file, rule.name, bad, text, lambda v: f"'{v}' is not a number",
           "is not a number")
    numbers = numbers.where(~bad)
    if rule.kind == "integer":
        fractional = numbers.notna() & (numbers % 1 != 0)
        report(problems, file, rule.name, fractional, text,
               lambda v: f"'{v}' is not a whole number", "is not a whole number")
        numbers = numbers.where(~fractional)
    return numbers


def _arrow_numbers(text: pd.Series, missing: pd.Series) -> pd.Series | None:
    """The cells as numbers by Arrow's cast (much faster than pd.to_numeric on a donation
    stream) where every one that is not missing parses; None where one does not."""
    try:
        values = pc.cast(pyarrow.array(text.where(~missing, None), type=pyarrow.string()),
                         pyarrow.float64())
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, pyarrow.ArrowNotImplementedError):
        return None
    return pd.Series(values.to_numpy(zero_copy_only=False), index=text.index, dtype=float)


def report(problems: list[Problem], file: str, column: str, mask: pd.Series,
            values: pd.Series, message, rule: str | None = None) -> None:
    """A problem for each row in `mask`: message(value); `rule`, where the message holds
    the value, is the same without it (what the rows have in common)."""
    hits = mask.to_numpy(dtype=bool)
    if not hits.any():
        return
    # the rows' labels are their places in the file (a chunk's start at its first row)
    for label, value in zip(mask.index[hits], values[hits].to_numpy(), strict=True):
        problems.append(Problem(file, int(label) + 1, column, message(value), rule,
                                f"'{value}'" if rule else None))


def _schema(rules: Iterable[ColumnRule]) -> pa.DataFrameSchema:
    """A pandera schema for the value rules (types were parsed already)."""
    columns = {}
    for rule in rules:
        checks = []
        if rule.low is not None:
            bound = rule.describe_bounds()
            check = pa.Check.gt if rule.strict_low else pa.Check.ge
            checks.append(check(rule.low, error=f"must be {bound}"))
        if rule.high is not None:
            checks.append(pa.Check.le(rule.high, error=f"must be {rule.describe_bounds()}"))
        if rule.categories:
            allowed = " or ".join(rule.categories)
            checks.append(pa.Check.isin(list(rule.categories), error=f"must be {allowed}"))
        columns[rule.name] = pa.Column(
            None, checks=checks, nullable=True, required=False,
            unique=rule.unique, report_duplicates="exclude_first",
        )
    return pa.DataFrameSchema(columns)


def _check_values(frame: pd.DataFrame, rules: tuple[ColumnRule, ...], file: str,
                  problems: list[Problem]) -> None:
    try:
        _schema(rules).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        for case in errors.failure_cases.itertuples():
            row = None if pd.isna(case.index) else int(case.index) + 1
            rule = str(case.check)
            if rule == "field_uniqueness":
                rule = "appears more than once"
                message = f"'{case.failure_case}' appears more than once"
            else:
                message = f"{rule} (got {case.failure_case})"
            problems.append(Problem(file, row, str(case.column), message, rule,
                                    f"'{case.failure_case}'"))


def parse_table(raw: pd.DataFrame, rules: tuple[ColumnRule, ...], file: str,
                 problems: list[Problem], needed: Iterable[str] = ()) -> pd.DataFrame:
    """Parse the columns the rules know (others pass through as text) and check them."""
    needed = set(needed)
    frame = raw.copy()
    for rule in rules:
        if rule.name not in raw.columns:
            if rule.required or rule.name in needed:
                problems.append(Problem(file, None, rule.name, "missing column"))
            continue
        frame[rule.name] = _parse_column(raw[rule.name], rule, file, problems)
        empty = raw[rule.name].astype(str).str.strip().isin(MISSING_TOKENS)
        if not rule.nullable and (rule.required or rule.name in needed):
            report(problems, file, rule.name, empty, raw[rule.name],
                   lambda _v: "missing value")
    _check_values(frame, rules, file, problems)
    return frame
