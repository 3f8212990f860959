"""A donation stream too large to hold, read about a million rows at a time.

A platform's donation stream runs to hundreds of rows per campaign, and read whole as text
it needs many times its size in memory (benchmarks/README.md: a data folder of 300,000
campaigns). A donations file over STREAM_BYTES is therefore never held: fundgap.contract
checks it chunk by chunk and, in the same pass, adds up the capacities' per-campaign window
sums (WindowSums), which fundgap.prepare turns into capacities without reading the file
again. What crosses chunks is small: each row's campaign as an int32 code and its seq as an
int32 (for the seq rule), and the per-campaign sums.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

# Files above this size are read in chunks (below it, whole, as every other file)
STREAM_BYTES = 256 * 2**20
# Bytes of CSV per chunk (about 800,000 donation rows): each chunk's checks hold several
# copies of it at once, so smaller chunks keep the peak lower (benchmarks/README.md)
CHUNK_BYTES = 16 * 2**20
# Rows per chunk of a Parquet file
CHUNK_ROWS = 2_000_000
# The capacities' seq windows (prepare.PrepareOptions' defaults): core is the mean of the
# donations with seq <= CORE_WINDOW, derived of those with seq > DERIVED_AFTER
CORE_WINDOW = 100
DERIVED_AFTER = 300


def is_streamed(path: Path) -> bool:
    """Whether a file is read in chunks (its size is over STREAM_BYTES)."""
    return path.stat().st_size > STREAM_BYTES


def text_chunks(path: Path) -> Iterator[pd.DataFrame]:
    """The file's cells as text (the strings a CSV holds; Parquet values as cells._as_text
    writes them), a chunk at a time, each indexed by its rows' place in the file (0-based).
    Raises ValueError (with Arrow's reason) where the file cannot be parsed."""
    batches = _parquet_batches(path) if path.suffix == ".parquet" else _csv_batches(path)
    start = 0
    try:
        for frame in batches:
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
        raise ValueError(str(error).splitlines()[0]) from None


def _csv_batches(path: Path) -> Iterator[pd.DataFrame]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        names = [name.strip() for name in next(csv.reader(handle), [])]
    options = pa_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                    strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
    # through a Python file object: given the path, Arrow's reader reads ahead on its I/O
    # threads as fast as the disk allows, and while the checks take each chunk in turn most
    # of the file piles up in memory (benchmarks/README.md); a Python file is read as the
    # chunks are taken
    with path.open("rb") as raw:
        reader = pa_csv.open_csv(raw, read_options=pa_csv.ReadOptions(
            block_size=CHUNK_BYTES, column_names=names, skip_rows=1),
            convert_options=options)
        for batch in reader:
            yield batch.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow",
                                                                              np.nan)}.get)


def _parquet_batches(path: Path) -> Iterator[pd.DataFrame]:
    from fundgap.cells import text_frame

    for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
        yield text_frame(batch.to_pandas())


class Coder:
    """Int32 codes for campaign ids seen chunk by chunk: the ids given first (a data folder's
    campaigns, codes 0..n-1), then any other in the order met."""

    def __init__(self, ids: pd.Index | None = None) -> None:
        self.ids = pd.Index([] if ids is None else ids, dtype=object).unique()
        self.known = len(self.ids)

    def __call__(self, values: pd.Series) -> np.ndarray:
        """Each value's code; -1 where missing."""
        values = values.astype(object)
        codes = self.ids.get_indexer(values)
        new = (codes < 0) & values.notna().to_numpy()
        if new.any():
            self.ids = self.ids.append(pd.Index(pd.unique(values[new]), dtype=object))
            codes[new] = self.ids.get_indexer(values[new])
        return codes.astype(np.int32)


class WindowSums:
    """Each campaign's sum and count of donation amounts (in 100 yuan) in the seq windows the
    capacities are means of (seq <= core_window, seq > derived_after, seq > core_window,
    all) and its longest seq, added up chunk by chunk. The contract's check of a donation
    stream adds them as it reads each chunk, so that preparing the data need not read the
    stream a second time."""

    WINDOWS = ("core", "after_derived", "after_core", "all")

    def __init__(self, core_window: int = CORE_WINDOW, derived_after: int = DERIVED_AFTER
                 ) -> None:
        self.core_window, self.derived_after = core_window, derived_after
        self.sums = {window: np.zeros(0) for window in self.WINDOWS}
        self.counts = {window: np.zeros(0, np.int64) for window in self.WINDOWS}
        self.length = np.zeros(0, np.int64)
        self.ids = pd.Index([], dtype=object)

    def add(self, code: np.ndarray, seq: np.ndarray, amount: np.ndarray,
            ids: pd.Index) -> None:
        """A chunk's rows: their campaigns' codes under `ids` (a Coder's ids so far; -1 for a
        missing id), seqs and amounts in yuan. Rows with a missing cell take no part (such a
        stream fails its check; the sums are then never used)."""
        used = (code >= 0) & ~np.isnan(seq) & ~np.isnan(amount)
        if not used.all():
            code, seq, amount = code[used], seq[used], amount[used]
        groups, self.ids = len(ids), ids
        amount = amount / 100.0
        masks = {"core": seq <= self.core_window, "after_derived": seq > self.derived_after,
                 "after_core": seq > self.core_window, "all": None}
        for window, mask in masks.items():
            rows, weights = (code, amount) if mask is None else (code[mask], amount[mask])
            self.sums[window] = _grown(self.sums[window], groups) + np.bincount(
                rows, weights, minlength=groups)
            self.counts[window] = _grown(self.counts[window], groups) + np.bincount(
                rows, minlength=groups)
        self.length = _grown(self.length, groups)
        np.maximum.at(self.length, code, seq.astype(np.int64))


def _grown(values: np.ndarray, size: int) -> np.ndarray:
    """`values` padded with zeros to `size` (campaigns first met in a later chunk)."""
    if len(values) == size:
        return values
    return np.concatenate([values, np.zeros(size - len(values), values.dtype)])


def off_sequence(codes: np.ndarray | list[np.ndarray], seq: np.ndarray | list[np.ndarray],
                 groups: int) -> np.ndarray:
    """For each of `groups` campaigns, whether its seqs are not exactly 1, 2, ..., n (in any
    order), n its rows; rows with code -1 or seq -1 (missing) take no part. `codes` and
    `seq` are arrays or lists of arrays (a stream's chunks, never joined: joining would copy
    every row's code and seq). Each row in range marks its slot (the campaign's offset +
    seq - 1) in one boolean per row: a campaign is in order iff every seq is in 1..n and its
    n slots are all marked (no repeat). Per-row work runs a block at a time, so the
    temporaries stay small beside the codes themselves."""
    codes = [codes] if isinstance(codes, np.ndarray) else codes
    seq = [seq] if isinstance(seq, np.ndarray) else seq
    blocks = [(part_code[start:start + CHUNK_ROWS], part_seq[start:start + CHUNK_ROWS])
              for part_code, part_seq in zip(codes, seq, strict=True)
              for start in range(0, len(part_code), CHUNK_ROWS)]
    rows = np.zeros(groups, np.int64)
    for code, value in blocks:
        rows += np.bincount(code[(code >= 0) & (value >= 0)], minlength=groups)
    offsets = np.cumsum(rows) - rows
    marked = np.zeros(int(rows.sum()), bool)
    off = np.zeros(groups, bool)
    for block_code, block_seq in blocks:
        used = (block_code >= 0) & (block_seq >= 0)
        code, value = block_code[used], block_seq[used].astype(np.int64)
        inside = (value >= 1) & (value <= rows[code])
        off[code[~inside]] = True
        marked[offsets[code[inside]] + value[inside] - 1] = True
    present = np.flatnonzero(rows > 0)
    if present.size:
        filled = np.add.reduceat(marked, offsets[present], dtype=np.int64)
        off[present[filled != rows[present]]] = True
    return off
