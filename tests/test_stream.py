"""A donation stream too large to hold is checked and summed in chunks (fundgap.stream): the
same problems, file rows and prepared table as the file read whole."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fundgap.stream as stream
from fundgap.cells import read_raw
from fundgap.contract import load_dataset, validate
from fundgap.prepare import (
    PrepareOptions,
    capacities_from_sums,
    donation_capacities,
    prepare,
)

from conftest import edit_cell, write_tiny


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every donations file streamed, in chunks of about 64 rows."""
    monkeypatch.setattr(stream, "STREAM_BYTES", 0)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(stream, "CHUNK_ROWS", 64)


def _problems(folder: Path) -> list[tuple]:
    return [(p.file, p.row, p.column, p.message) for p in validate(folder)]


def test_a_broken_stream_gives_the_problems_of_the_file_read_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_tiny(tmp_path / "data")
    edit_cell(folder, "donations.csv", 5, "seq", "7")       # C1: a gap and a repeat
    edit_cell(folder, "donations.csv", 352, "seq", "1")     # C2: a repeat, in chunk 6
    edit_cell(folder, "donations.csv", 400, "seq", "x")     # C2: not a number (missing)
    edit_cell(folder, "donations.csv", 410, "amount", "0")  # must be > 0
    edit_cell(folder, "donations.csv", 500, "campaign_id", "C99")
    edit_cell(folder, "donations.csv", 505, "seq", "2.5")
    whole = _problems(folder)
    # C1's first row off (sorted by seq) holds 6; C99's only row, 150
    assert {row for _, row, column, _ in whole if column == "seq"} == {6, 352, 400, 500, 505}
    monkeypatch.setattr(stream, "STREAM_BYTES", 0)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1024)
    assert _problems(folder) == whole


def test_a_campaign_without_donations_is_found_across_chunks(tmp_path: Path,
                                                             chunked: None) -> None:
    folder = write_tiny(tmp_path / "data")
    donations = pd.read_csv(folder / "donations.csv")
    donations[donations["campaign_id"] != "C4"].to_csv(folder / "donations.csv", index=False)
    [problem] = validate(folder)
    assert (problem.file, problem.row, problem.column) == ("campaigns.csv", 4, "campaign_id")
    assert "campaign C4 has no rows in donations" in problem.message


def test_the_prepared_table_equals_the_one_from_the_file_read_whole(
        small_simulation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = load_dataset(small_simulation)
    assert whole.donations_file is None
    expected = prepare(whole).table
    monkeypatch.setattr(stream, "STREAM_BYTES", 0)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 1024)
    streamed = load_dataset(small_simulation)
    assert streamed.donations is None and streamed.donations_file is not None
    assert sum(1 for _ in streamed.donation_chunks()) > 5
    pd.testing.assert_frame_equal(prepare(streamed).table, expected, rtol=1e-12)


def test_the_capacities_are_summed_as_the_stream_is_checked(
        small_simulation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract's pass over the stream adds up the capacities' window sums, so prepare
    does not read the stream again: the same capacities as summing the whole file."""
    frame = pd.read_csv(small_simulation / "donations.csv", dtype={"campaign_id": str})
    expected = donation_capacities(frame)
    monkeypatch.setattr(stream, "STREAM_BYTES", 0)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 1024)
    streamed = load_dataset(small_simulation)
    assert streamed.donation_sums is not None
    pd.testing.assert_frame_equal(capacities_from_sums(streamed.donation_sums), expected)

    def unread() -> None:
        raise AssertionError("the stream was read again")

    monkeypatch.setattr(streamed, "donation_chunks", unread)
    table = prepare(streamed).table.set_index("campaign_id")
    pd.testing.assert_series_equal(table["core_capacity"],
                                   expected["core_capacity"].reindex(table.index))


def test_other_windows_read_the_stream_again(small_simulation: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pd.read_csv(small_simulation / "donations.csv", dtype={"campaign_id": str})
    expected = donation_capacities(frame, core_window=50, derived_after=120)
    monkeypatch.setattr(stream, "STREAM_BYTES", 0)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 1024)
    dataset = load_dataset(small_simulation)     # summed for the default windows
    options = PrepareOptions(core_window=50, derived_after=120)
    table = prepare(dataset, options).table.set_index("campaign_id")
    for column in ("core_capacity", "derived_capacity", "derived_capacity_rule"):
        pd.testing.assert_series_equal(table[column],
                                       expected[column].reindex(table.index))
    # given the windows, the contract's pass sums those instead
    again = load_dataset(small_simulation, (50, 120))
    pd.testing.assert_frame_equal(capacities_from_sums(again.donation_sums), expected)


def test_a_parquet_stream_is_read_in_chunks_too(tmp_path: Path, chunked: None) -> None:
    folder = write_tiny(tmp_path / "data")
    donations = pd.read_csv(folder / "donations.csv")
    (folder / "donations.csv").unlink()
    donations.loc[9, "amount"] = -1.0
    donations.to_parquet(folder / "donations.parquet", row_group_size=50)
    [problem] = validate(folder)
    assert (problem.file, problem.row, problem.column) == ("donations.parquet", 10, "amount")
    donations.loc[9, "amount"] = 1.0
    donations.to_parquet(folder / "donations.parquet", row_group_size=50)
    capacities = prepare(load_dataset(folder)).table.set_index("campaign_id")
    assert capacities.loc["C1", "core_capacity"] == pytest.approx(
        (np.arange(1, 101).sum() - 10 + 1) / 100 / 100)


def test_chunks_read_the_text_the_whole_file_gives(tmp_path: Path) -> None:
    """A byte-order mark, quoted cells with commas, padded cells and empty ones."""
    path = tmp_path / "donations.csv"
    text = ('campaign_id, seq ,amount,note\n"C1",1, 10.5 ,"a, b"\nC1,2,,\n'
            '"C2","1",NA,"said ""hi"""\n')
    path.write_bytes(codecs.BOM_UTF8 + text.encode())
    whole = read_raw(path, [])
    chunks = list(stream.text_chunks(path))
    assert len(chunks) == 1
    pd.testing.assert_frame_equal(chunks[0], whole, check_dtype=False, check_index_type=False)


def test_an_unreadable_stream_is_one_problem(tmp_path: Path, chunked: None) -> None:
    folder = write_tiny(tmp_path / "data")
    with (folder / "donations.csv").open("a") as handle:
        handle.write("C1,351,5,extra,cells\n")
    [problem] = validate(folder)   # and no campaign is said to lack donations
    assert problem.file == "donations.csv" and problem.message.startswith("cannot be read")


def test_off_sequence_finds_exactly_the_campaigns_out_of_order() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 300)
    codes = np.repeat(np.arange(300), lengths).astype(np.int32)
    seq = np.concatenate([rng.permutation(n) + 1 for n in lengths]).astype(np.int32)
    broken = rng.choice(300, 60, replace=False)
    starts = np.cumsum(lengths) - lengths
    for k, campaign in enumerate(broken):
        row = starts[campaign] + rng.integers(lengths[campaign])
        seq[row] = [0, lengths[campaign] + 1, max(seq[row] - 1, 1) if seq[row] > 1 else 2,
                    -1][k % 4]    # below 1, past n, a repeat (or past n), missing
    order = rng.permutation(len(codes))   # any row order
    off = stream.off_sequence(codes[order], seq[order], 300)
    expected = np.zeros(300, bool)
    for campaign in range(300):
        values = np.sort(seq[codes == campaign])
        values = values[values >= 0]   # missing seqs take no part
        expected[campaign] = not np.array_equal(values, np.arange(1, len(values) + 1))
    np.testing.assert_array_equal(off, expected)
    assert off[broken[np.arange(60) % 4 != 3]].all()
