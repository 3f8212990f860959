"""A donation stream too large to hold, read about a million rows at a time.

A platform's donation stream runs to hundreds of rows per campaign, and read whole as text
it needs many times its size in memory (benchmarks/README.md: a data folder of 300,000
campaigns). A donations file over STREAM_BYTES is therefore never held: fundgap.contract
checks it chunk by chunk and fundgap.prepare sums its capacities chunk by chunk, each from
the same parsed chunks. What crosses chunks is small: each row's campaign as an int32 code
and its seq as an int32 (for the seq rule), and the capacities' per-campaign sums.
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
# copies of it at once, so smaller chunks keep the peak lower; the capacity pass pays for
# them in time, as each chunk's new campaign ids rebuild the coder's index
# (benchmarks/README.md)
CHUNK_BYTES = 16 * 2**20
# Rows per chunk of a Parquet file
CHUNK_ROWS = 2_000_000


def is_streamed(path: Path) -> bool:
    """Whether a file is read in chunks (its size is over STREAM_BYTES)."""
    return path.stat().st_size > STREAM_BYTES


def text_chunks(path: Path) -> Iterator[pd.DataFrame]:
    """The file's cells as text (the strings a CSV holds; Parquet values as contract._as_text
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
    from fundgap.contract import text_frame

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
