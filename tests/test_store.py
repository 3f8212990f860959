"""Atomic writes leave either the old result or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fundgap.store import atomic_directory, frame_fingerprint, write_table


def test_failed_directory_write_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "result"
    with atomic_directory(target) as folder:
        (folder / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as folder:
        (folder / "a.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "x") as folder:
        (folder / "part.csv").write_text("1,2")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_table_suffix_and_fingerprint(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_table(frame, tmp_path / "t.parquet")
    assert frame_fingerprint(pd.read_parquet(tmp_path / "t.parquet")) == frame_fingerprint(frame)
    assert frame_fingerprint(frame.iloc[::-1]) != frame_fingerprint(frame)
    with pytest.raises(ValueError, match=r"\.csv, \.parquet, \.dta"):
        write_table(frame, tmp_path / "t.xlsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]
