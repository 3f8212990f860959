"""Writing results safely: atomic files and folders, fingerprints, package versions.

Everything is first written beside its target under a temporary name and then renamed into
place, so an error or an interrupt leaves either the old result or the new one, never half.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

RECORDED_PACKAGES = ("fundgap", "numpy", "pandas", "scipy", "statsmodels", "pymc", "pytensor",
                     "nutpie", "bambi", "arviz", "xarray", "pandera")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it becomes `target`.

    An existing `target` is replaced only once the new folder is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                      dir=target.parent))
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_umask())
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                            dir=target.parent))
            os.replace(target, retired / "old")
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


TABLE_SUFFIXES = (".csv", ".parquet", ".dta")


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV, Parquet or Stata (.dta, format 118: Unicode text, for Stata 14
    and later and R's haven) by suffix, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: the output must end in {', '.join(TABLE_SUFFIXES)}")
    with atomic_path(path) as temporary:
        if suffix == ".csv":
            frame.to_csv(temporary, index=False, lineterminator="\n")
        elif suffix == ".dta":
            frame.to_stata(temporary, write_index=False, version=118)
        else:
            frame.to_parquet(temporary, index=False)
    return path


def write_json(data: object, path: str | Path) -> Path:
    """Write JSON (sorted keys, UTF-8, numpy values converted), atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(to_json(data) + "\n", encoding="utf-8")
    return path


def write_record(data: dict, path: str | Path) -> Path:
    """Write a folder's record (fit.json, frequentist.json) last, holding the size and
    SHA-256 of every other file in its folder (`files`), so that a file damaged later
    (truncated, overwritten) is found by `damaged` instead of being read."""
    path = Path(path)
    files = {other.name: {"bytes": other.stat().st_size, "sha256": file_fingerprint(other)}
             for other in sorted(path.parent.iterdir())
             if other.is_file() and other.name != path.name}
    return write_json({**data, "files": files}, path)


def damaged(record: str | Path) -> list[str]:
    """What differs from the `files` a record (written by `write_record`) lists beside it:
    one line per file that is missing, or whose size or content changed; an unreadable
    record is damaged itself. Records from before `files` existed are taken as they are."""
    record = Path(record)
    try:
        files = json.loads(record.read_text("utf-8")).get("files", {})
    except (OSError, ValueError) as error:
        return [f"{record.name}: cannot be read ({type(error).__name__})"]
    problems = []
    for name, expected in files.items():
        path = record.parent / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name}: {path.stat().st_size:,} bytes where "
                            f"{expected['bytes']:,} were written")
        elif file_fingerprint(path) != expected["sha256"]:
            problems.append(f"{name}: its content changed since it was written")
    return problems


def to_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=_plain)


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's column names, dtypes and values (row order matters)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest.update(hashed.tobytes())
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Modules that decide no figure of a fit (argument parsing, orchestration, rendering,
# reading folders back): editing them must not invalidate a batch's fits or the compiled
# models. Every other module (a new one too) is in the digest.
PRESENTATION_MODULES = frozenset({"__init__.py", "api.py", "batch.py", "cli.py", "describe.py",
                                  "errors.py", "fit_index.py", "notebook.py", "report.py"})


@functools.cache
def source_digest() -> str:
    """SHA-256 of fundgap's own source that can change a fit's figures (every module but
    PRESENTATION_MODULES): the package's version number does not follow it between
    releases."""
    return package_digest(Path(__file__).parent)


def package_digest(package: Path) -> str:
    """`source_digest` of the package in `package`."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if path.parent == package and path.name in PRESENTATION_MODULES:
            continue
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a result, and a digest of fundgap's
    source (so a fit, and a batch's run key, tell code that changed since)."""
    versions = {"fundgap source": source_digest()[:16]}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
