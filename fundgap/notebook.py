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
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import pandas as pd

from fundgap.errors import FundgapError
from fundgap.fit import FitSettings, fit_model, settings_for
from fundgap.fitfolder import FIT_RECORD, load_fit, write_fit
from fundgap.spec import ModelSpec, load_spec
from fundgap.store import frame_fingerprint

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
    from fundgap.simulate import reusable, simulate, simulation_settings, write_simulation

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


def settings(model: ModelSpec, **overrides: object) -> FitSettings:
    """The spec's settings, shrunk in quick mode."""
    quick = QUICK_SETTINGS if QUICK else {}
    return settings_for(model, progress=False, **{**quick, **overrides})


@dataclass
class Fitted:
    """A fit as the notebooks use it, read from its folder or just made."""

    name: str
    idata: az.InferenceData
    effects: pd.DataFrame
    contrasts: pd.DataFrame
    shrinkage: pd.DataFrame
    summary: pd.DataFrame
    diagnostics: dict
    source: str                     # the folder it was read from, or "fitted now"
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity_thresholds: pd.DataFrame = field(default_factory=pd.DataFrame)


def fits_folder(name: str) -> Path | None:
    """Where the spec's fit is read from and written to (None: quick, nowhere)."""
    if QUICK:
        return Path(QUICK_FITS) / name if QUICK_FITS else None
    return repository() / "fits" / "default" / name


def fit_or_load(name: str, table: pd.DataFrame) -> Fitted:
    """The spec's fit on `table`: read from `fits_folder(name)` when an intact fit there was
    made from the same spec and data, else fitted now (and written there)."""
    model = spec(name)
    folder = fits_folder(name)
    if folder is not None and (folder / FIT_RECORD).is_file():
        try:
            saved = load_fit(folder, model, frame_fingerprint(table))
        except FundgapError:  # another spec, other data, damaged: fitted again below
            saved = None
        if saved is not None:
            return Fitted(name, saved.idata, saved.effects, saved.contrasts, saved.shrinkage,
                          saved.summary.reset_index(), saved.diagnostics, str(folder),
                          saved.sensitivity, saved.sensitivity_thresholds)
    result = fit_model(model, table, settings(model))
    if folder is not None:
        write_fit(result, folder)
    return Fitted(name, result.idata, result.effects, result.contrasts, result.shrinkage,
                  result.summary.reset_index(names="parameter"), result.diagnostics,
                  "fitted now", result.sensitivity, result.sensitivity_thresholds)


def status_line(fitted: Fitted) -> str:
    """One line a reader sees before any number: passed, or FAILED and why."""
    d = fitted.diagnostics
    head = "passed its diagnostics" if d["passed"] else \
        f"FAILED its diagnostics ({'; '.join(d['reasons'])}): read nothing below as a result"
    return (f"{fitted.name} ({fitted.source}): {head}. {d['divergences']} divergences, max "
            f"R-hat {d['max_r_hat']:.3f}, min bulk ESS {d['min_ess_bulk']:.0f}, "
            f"{d['draws']} draws.")
