"""Property: whatever is done to a valid data folder, `fundgap validate` and `fundgap prepare`
accept it or exit 1 with messages that name a file; nothing else ever comes out (no
traceback, no other exception, no half-written output).

Each example takes the tiny valid folder and applies one to three mutations: columns
dropped or renamed; cells set to wrong types, NaN, inf, empty strings, huge numbers or
unknown codes; rows duplicated; non-UTF-8 bytes, a byte-order mark, another delimiter, CRLF
line ends; a file emptied, cut to its header or truncated at any byte; a folder where a file
should be; a file removed. A fixed seed (derandomized) keeps the fast suite's examples the
same on every run; the slow suite runs many more.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fundgap.cli import main

from conftest import write_tiny

FILES = ("campaigns.csv", "counties.csv", "donations.csv", "ratings.csv")
VALUES = ("", "NaN", "nan", "inf", "-inf", "abc", "-1", "0", "1e400", "3.5", "１２", "NA",
          "999999", "110101", " 7 ", "null", "x" * 300, "\"", ",", "\n")


def _frame(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _mutate(folder: Path, kind: str, file: str, pick: int, value: str) -> None:
    path = folder / file
    if not path.is_file():
        return
    if kind in ("drop", "rename", "cell", "duplicate", "unknown_code"):
        try:
            frame = _frame(path)
        except Exception:       # an earlier mutation left it unreadable by pandas
            return
        if frame.empty or not len(frame.columns):
            return
        column = frame.columns[pick % len(frame.columns)]
        row = pick % len(frame)
        if kind == "drop":
            frame = frame.drop(columns=column)
        elif kind == "rename":
            frame = frame.rename(columns={column: column + "_x"})
        elif kind == "cell":
            frame.loc[row, column] = value
        elif kind == "duplicate":
            frame = pd.concat([frame, frame.iloc[[row]]], ignore_index=True)
        elif "county_code" in frame.columns:
            frame.loc[row, "county_code"] = "999999"
        frame.to_csv(path, index=False)
        return
    data = path.read_bytes()
    if kind == "bytes":
        cut = pick % max(len(data), 1)
        path.write_bytes(data[:cut] + b"\xff\xfe\x80" + data[cut:])
    elif kind == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + data)
    elif kind == "delimiter":
        path.write_bytes(data.replace(b",", b";" if pick % 2 else b"\t"))
    elif kind == "crlf":
        path.write_bytes(data.replace(b"\n", b"\r\n"))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "header":
        path.write_bytes(data.split(b"\n", 1)[0] + b"\n")
    elif kind == "truncate":
        path.write_bytes(data[:pick % max(len(data), 1)])
    elif kind == "folder":
        path.unlink()
        path.mkdir()
    elif kind == "remove":
        path.unlink()


MUTATION = st.tuples(
    st.sampled_from(("drop", "rename", "cell", "duplicate", "unknown_code", "bytes", "bom",
                     "delimiter", "crlf", "empty", "header", "truncate", "folder",
                     "remove")),
    st.sampled_from(FILES),
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(VALUES) | st.text(max_size=12),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("template") / "tiny")


def _command(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def _check(template: Path, mutations: list[tuple[str, str, int, str]]) -> None:
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "data"
        shutil.copytree(template, folder)
        for mutation in mutations:
            _mutate(folder, *mutation)
        validated, message = _command(["validate", str(folder)])
        assert validated in (0, 1), message
        if validated == 1:
            # every line after the head names a file of the folder (or the folder itself)
            lines = message.strip().splitlines()
            assert lines, "exit 1 without a message"
            named = [line for line in lines[1:] if line.strip()]
            assert all(any(f in line for f in (*FILES, str(folder), "more kinds"))
                       for line in named), message
        assert "Traceback" not in message
        out = Path(work) / "out" / "prepared.parquet"
        prepared, message = _command(["prepare", str(folder), "--out", str(out)])
        assert prepared in (0, 1), message
        assert "Traceback" not in message
        if prepared == 1:
            assert message.startswith("fundgap prepare:"), message
            assert not out.exists()
        else:
            assert out.is_file()


# the same examples on every run; a folder's commands take longer than hypothesis expects
FIXED = {"derandomize": True, "deadline": None,
         "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


@settings(max_examples=150, **FIXED)
@given(st.lists(MUTATION, min_size=1, max_size=3))
def test_any_damage_to_a_data_folder_is_a_message(template: Path, mutations) -> None:
    _check(template, mutations)


@pytest.mark.slow
@settings(max_examples=2000, **FIXED)
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_any_damage_to_a_data_folder_is_a_message_many(template: Path, mutations) -> None:
    _check(template, mutations)
