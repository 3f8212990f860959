"""What the notebooks share: where the default data and fits are, and fits read or made.

A notebook reads a fit from `fits/default/<spec>/` when one exists for the same data (as
`make demo` leaves it) and fits the spec otherwise (and writes it there). With the
environment variable FUNDGAP_NOTEBOOK_QUICK=1 (the test suite sets it) fits have few draws
and are never read from or written to fits/, so the notebooks run in a few minutes; their
diagnostics then fail the gate, and the notebooks say so rather than hide it. Quick fits go
to FUNDGAP_NOTEBOOK_FITS when it names a folder (the tests give one per session, so a later
notebook reuses an earlier one's fit), else nowhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

import fundgap
from fundgap.bayesian import FitResult
from fundgap.errors import FundgapError
from fundgap.fitfolder import FIT_RECORD, SavedFit
from fundgap.spec import ModelSpec, load_spec

QUICK = os.environ.get("FUNDGAP_NOTEBOOK_QUICK") == "1"
QUICK_SETTINGS = {"draws": 300, "tune": 300, "chains": 2}
QUICK_FITS = os.environ.get("FUNDGAP_NOTEBOOK_FITS")


def repository() -> Path:
    """The repository root (notebooks run from notebooks/ or from the root)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "models").is_dir() and (folder / "fundgap").is_dir():
            return folder
    raise FileNotFoundError(f"{here}: not inside the fundgap repository")


def default_data() -> Path:
    """data/default, simulated first (as `make demo` does) if it is not there yet."""
    from fundgap.contract import read_table
    from fundgap.simulation.development import (
        reusable,
        simulate,
        simulation_settings,
        write_simulation,
    )

    root = repository()
    folder = root / "data" / "default"
    counties_file = root.parent / "shared" / "data" / "china_counties.csv"
    counties = read_table(counties_file, "counties") if counties_file.is_file() else None
    source = counties_file.name if counties is not None else "generated"
    if not reusable(folder, simulation_settings(2057, 20250, counties, source)):
        write_simulation(simulate(counties=counties, counties_source=source), folder)
    return folder


def default_table() -> pd.DataFrame:
    """The prepared default data (from fits/default/prepared.parquet when it is current)."""
    from fundgap.pipeline import prepare_data
    from fundgap.prepare import read_prepared

    prepared, _, _ = prepare_data(default_data(), repository() / "fits" / "default")
    return read_prepared(prepared).table


def spec(name: str) -> ModelSpec:
    """models/<name>.toml."""
    return load_spec(repository() / "models" / f"{name}.toml")


def fit(model: ModelSpec, table: pd.DataFrame) -> FitResult:
    """`fundgap.fit` with the spec's settings (few draws in quick mode), no progress bar."""
    return fundgap.fit(model, table, progress=False, **(QUICK_SETTINGS if QUICK else {}))


# what fit_or_load gives: a fit made now, or one read from its folder (the same surface:
# idata, effects, contrasts, shrinkage, summary, diagnostics, sensitivity tables)
Fitted = FitResult | SavedFit


def fits_folder(name: str) -> Path | None:
    """Where the spec's fit is read from and written to (None: quick, nowhere)."""
    if QUICK:
        return Path(QUICK_FITS) / name if QUICK_FITS else None
    return repository() / "fits" / "default" / name


def fit_or_load(name: str, table: pd.DataFrame) -> Fitted:
    """The spec's fit on `table` (fundgap.load / fundgap.fit): read from `fits_folder(name)`
    when an intact fit there was made from the same spec and data, else fitted now (and
    written there)."""
    model = spec(name)
    folder = fits_folder(name)
    if folder is not None and (folder / FIT_RECORD).is_file():
        try:
            return fundgap.load(folder, spec=model, data=table)
        except FundgapError:  # another spec, other data, damaged: fitted again below
            pass
    result = fit(model, table)
    if folder is not None:
        result.save(folder)
    return result


def status_line(fitted: Fitted) -> str:
    """One line a reader sees before any number: passed, or FAILED and why."""
    d = fitted.diagnostics
    head = "passed its diagnostics" if d["passed"] else \
        f"FAILED its diagnostics ({'; '.join(d['reasons'])}): read nothing below as a result"
    source = getattr(fitted, "folder", None) or "fitted now"
    return (f"{fitted.spec.name} ({source}): {head}. {d['divergences']} divergences, max "
            f"R-hat {d['max_r_hat']:.3f}, min bulk ESS {d['min_ess_bulk']:.0f}, "
            f"{d['draws']} draws.")
