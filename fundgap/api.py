"""The Python API, for notebooks and scripts (`import fundgap`):

    result = fundgap.fit("models/regional_mediation.toml", data="data/default",
                         draws=1000, seed=1)
    result.effects, result.contrasts, result.summary, result.diagnostics, result.idata
    result.save("fits/mine")
    again = fundgap.load("fits/mine")        # the same tables; refuses a damaged folder

    data = fundgap.simulate(n_campaigns=500, seed=3)          # a Simulation (+ truth)
    data.write("data/small")
    problems = fundgap.validate("data/small")                 # [] when clean
    prepared = fundgap.prepare("data/small")                  # PreparedData
    tables = fundgap.frequentist("models/regional_mediation.toml", prepared.table)

Each goes through the same code as the command line (fundgap.pipeline); `data` may be a
data folder, a prepared table file or a prepared DataFrame throughout. Heavy imports (PyMC,
statsmodels) happen on first use, so `import fundgap` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from fundgap.bayesian import FitResult
    from fundgap.contract import Dataset, Problem
    from fundgap.fitfolder import SavedFit
    from fundgap.frequentist_tables import FrequentistResult
    from fundgap.prepare import PreparedData, PrepareOptions
    from fundgap.simulation.development import Simulation
    from fundgap.spec import ModelSpec

Data = str | Path | pd.DataFrame


def _spec(spec: str | Path | ModelSpec) -> ModelSpec:
    from fundgap.spec import load_spec

    return load_spec(spec) if isinstance(spec, str | Path) else spec


def fit(spec: str | Path | ModelSpec, data: Data, *, statistics: str = "auto",
        **settings: object) -> FitResult:
    """Fit a model spec (a path or a ModelSpec) to `data`. Keyword settings are those of
    `fundgap fit` (draws, tune, chains, seed, backend, form, target_accept, centring,
    per_campaign, latent_draws, progress, ...); unset ones come from the spec's [sampler]
    table, then fundgap's defaults. Returns the FitResult (`.save(folder)` writes it)."""
    from fundgap.bayesian import settings_for
    from fundgap.pipeline import fit_bayesian, spec_for

    model = spec_for(spec, data)
    return fit_bayesian(model, data, settings_for(model, **settings), statistics)


def load(folder: str | Path, spec: str | Path | ModelSpec | None = None,
         data: Data | None = None) -> SavedFit:
    """A fit folder read back, with the same tables as the FitResult that wrote it (the
    posterior's latent intercepts thinned as saved). Given `spec` or `data`, a folder made
    from another spec or other data is refused (FundgapError), as is a damaged one."""
    from fundgap.fitfolder import load_fit
    from fundgap.pipeline import load_prepared
    from fundgap.store import frame_fingerprint

    fingerprint = (frame_fingerprint(load_prepared(data).table) if data is not None
                   else None)
    return load_fit(folder, _spec(spec) if spec is not None else None, fingerprint)


def simulate(n_campaigns: int | None = None, seed: int | None = None, *,
             design: str = "development", counties: str | Path | pd.DataFrame | None = None,
             parameters: dict | None = None) -> Simulation:
    """A simulated data set with its truth ("development": the 2025 study's process;
    "ses": the 2022 companion study's), in real counties (a county table or its file) or
    generated ones. `.write(folder)` writes it as a data folder."""
    from fundgap.contract import read_table
    from fundgap.simulation.development import DEFAULT_N, DEFAULT_SEED
    from fundgap.simulation.development import simulate as development
    from fundgap.simulation.ses import simulate_ses

    source = "generated"
    if isinstance(counties, str | Path):
        source, counties = Path(counties).name, read_table(counties, "counties")
    elif counties is not None:
        source = "a DataFrame"
    if design == "ses":
        return simulate_ses(n_campaigns, seed, counties, parameters, source)
    if design != "development":
        raise ValueError(f"unknown design {design!r}: use 'development' or 'ses'")
    return development(n_campaigns or DEFAULT_N, DEFAULT_SEED if seed is None else seed,
                       counties, parameters, source)


def validate(folder: str | Path) -> list[Problem]:
    """Every contract problem of a data folder (an empty list: the data are clean)."""
    from fundgap.contract import validate as problems

    return problems(folder)


def prepare(data: Dataset | str | Path, options: PrepareOptions | None = None
            ) -> PreparedData:
    """A data folder (or a loaded Dataset) validated and turned into the analysis-ready
    table with its diagnostics; raises DataContractError listing every problem."""
    from fundgap.contract import Dataset
    from fundgap.prepare import prepare as prepared
    from fundgap.prepare import prepare_folder

    return prepared(data, options) if isinstance(data, Dataset) else prepare_folder(data, options)


def frequentist(spec: str | Path | ModelSpec, data: Data, *, replicates: int = 999,
                seed: int = 20250, mixedlm: str = "outcome") -> FrequentistResult:
    """The study's own methods on `data`: OLS/logit of every model of the spec, the KHB
    decomposition (`replicates` bootstrap resamples) and MixedLM of the outcome ("all"
    equations, or "none")."""
    from fundgap.frequentist_tables import run_frequentist
    from fundgap.pipeline import load_prepared, missing_columns, spec_for

    table = load_prepared(data).table
    model = spec_for(spec, table)
    missing_columns([model], table.columns, "the data")
    return run_frequentist(model, table, replicates, seed, mixedlm)
