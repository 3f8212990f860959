"""The index of a run's fit folders (fits/index.parquet): one row per Bayesian, frequentist
and robustness folder of every data set, read from the folders' records (the names and the
layout are fundgap.fitfolder's)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fundgap.fitfolder import (
    DIAGNOSTICS,
    FIT_RECORD,
    FREQUENTIST,
    FREQUENTIST_RECORD,
    INDEX,
    ROBUSTNESS_FOLDER,
    ROBUSTNESS_RECORD,
)
from fundgap.store import atomic_path

INDEX_COLUMNS = ("data", "spec", "kind", "backend", "form", "status", "data_fingerprint",
                 "run_key", "wall_seconds", "divergences", "max_r_hat", "min_ess_bulk",
                 "folder", "finished_at")


def _bayesian_row(record: Path) -> dict:
    folder = record.parent
    fit = json.loads(record.read_text("utf-8"))
    diagnostics = json.loads((folder / DIAGNOSTICS).read_text("utf-8"))
    return {"data": folder.parent.name, "spec": fit["spec_name"], "kind": "bayesian",
            "backend": diagnostics.get("backend"), "form": fit.get("form"),
            "status": "passed" if diagnostics["passed"] else "failed",
            "data_fingerprint": fit["data_fingerprint"], "run_key": fit.get("run_key"),
            "wall_seconds": diagnostics.get("wall_seconds"),
            "divergences": diagnostics.get("divergences"),
            "max_r_hat": diagnostics.get("max_r_hat"),
            "min_ess_bulk": diagnostics.get("min_ess_bulk")}


def _frequentist_row(record: Path) -> dict:
    freq = json.loads(record.read_text("utf-8"))
    return {"data": record.parent.parent.parent.name, "spec": freq["spec_name"],
            "kind": "frequentist", "backend": "statsmodels", "form": None, "status": "done",
            "data_fingerprint": freq["data_fingerprint"], "run_key": freq.get("run_key")}


def _robustness_row(record: Path) -> dict:
    robust = json.loads(record.read_text("utf-8"))
    return {"data": record.parent.parent.parent.name, "spec": robust["spec_name"],
            "kind": "robustness", "backend": robust.get("backend"), "form": None,
            "status": "passed" if robust["passed"] else "failed",
            "data_fingerprint": robust["data_fingerprint"], "run_key": robust.get("run_key"),
            "wall_seconds": robust.get("wall_seconds")}


INDEX_PATTERNS: tuple[tuple[str, str, Callable[[Path], dict]], ...] = (
    (f"*/*/{FIT_RECORD}", "bayesian", _bayesian_row),
    (f"*/{FREQUENTIST}/*/{FREQUENTIST_RECORD}", "frequentist", _frequentist_row),
    (f"*/{ROBUSTNESS_FOLDER}/*/{ROBUSTNESS_RECORD}", "robustness", _robustness_row))


def build_index(out: str | Path) -> pd.DataFrame:
    """One row per fit folder under `out` (every data set), from the folders; one whose
    record cannot be read (not written by fundgap, or damaged) is a row marked damaged."""
    rows = []
    for pattern, kind, row in INDEX_PATTERNS:
        for record in sorted(Path(out).glob(pattern)):
            folder = record.parent
            try:
                values = row(record)
            except (OSError, ValueError, KeyError, TypeError):  # refitted by the next run
                data = (folder.parent if kind == "bayesian" else folder.parent.parent).name
                values = {"data": data, "spec": folder.name, "kind": kind,
                          "status": "damaged"}
            rows.append({**values, "folder": str(folder),
                         "finished_at": record.stat().st_mtime})
    frame = pd.DataFrame(rows).reindex(columns=list(INDEX_COLUMNS))
    frame["finished_at"] = pd.to_datetime(frame["finished_at"], unit="s", utc=True)
    return frame.sort_values(["data", "spec", "kind"], ignore_index=True)


def write_index(out: str | Path) -> Path:
    """Rebuild `out/index.parquet` from the fit folders, atomically."""
    target = Path(out) / INDEX
    with atomic_path(target) as temporary:
        build_index(out).to_parquet(temporary, index=False)
    return target
