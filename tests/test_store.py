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


def test_source_digest_follows_the_code_that_decides_figures_only(tmp_path: Path) -> None:
    """Editing the report or the command line keeps every fit and compiled model current;
    editing the model's code (or adding a module) does not."""
    import shutil

    import fundgap
    from fundgap.store import package_digest

    package = tmp_path / "fundgap"
    shutil.copytree(Path(fundgap.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = package_digest(package)
    for name in ("report.py", "cli.py", "notebook.py"):
        (package / name).write_text((package / name).read_text() + "\n# a comment\n")
    assert package_digest(package) == before
    (package / "build.py").write_text((package / "build.py").read_text() + "\n# edited\n")
    edited = package_digest(package)
    assert edited != before
    (package / "simulation" / "new.py").write_text("VALUE = 1\n")
    assert package_digest(package) != edited
