"""A fit folder and a data set's fits: the file names, the layout, writing and guarded
reading (the index of every fit folder: fundgap/fit_index.py). Every other module goes
through here to find or read a fit.

    fits/                                   `fundgap run --out fits`
      index.parquet                         one row per fit folder (`write_index`)
      <data>/                               a data set's fits
        prepared.parquet                    its prepared table (+ prepared.diagnostics.json)
        <spec>/                             a Bayesian fit (`write_fit`, `load_fit`)
        frequentist/<spec>/                 its frequentist tables (`write_frequentist`)
        logs/<spec>.<kind>.log

A fit folder's record (fit.json, frequentist.json) is written last and lists the size and
SHA-256 of every other file, so a folder damaged later is found instead of half-read; it
also records the folder layout's version, the spec and the data's fingerprint, which
`load_fit` checks against what the caller expects.

posterior.nc keeps every draw of the sampled parameters in float64. The bulky draws are
kept smaller: the county and prefecture intercepts for about `latent_draws` draws (the
group `latent_intercepts`; every draw with latent_draws = 0) and the per-campaign groups
thinned (fundgap.bayesian), both in float32 rounded to FLOAT32_BITS significant bits, every array
compressed (gzip with byte shuffling). summary.csv, effects.csv and the diagnostics are
computed from every draw before the file is written, so no reported figure depends on it.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from fundgap.errors import FundgapError
from fundgap.names import is_group_intercept
from fundgap.store import (
    atomic_directory,
    atomic_path,
    damaged,
    write_json,
    write_record,
    write_table,
)

if TYPE_CHECKING:  # bayesian.py imports this module to write its results
    from fundgap.bayesian import FitResult
    from fundgap.spec import ModelSpec

# ------------------------------------------------------------------------- names

POSTERIOR = "posterior.nc"
SUMMARY = "summary.csv"
EFFECTS = "effects.csv"
CONTRASTS = "contrasts.csv"
SHRINKAGE = "shrinkage.csv"
SENSITIVITY = "sensitivity.csv"
SENSITIVITY_THRESHOLDS = "sensitivity_thresholds.csv"
DIAGNOSTICS = "diagnostics.json"
SPEC = "spec.toml"
FIT_RECORD = "fit.json"
FREQUENTIST_RECORD = "frequentist.json"
OLS = "ols.csv"
KHB = "khb.csv"
MIXEDLM = "mixedlm.csv"
COMPARISON = "comparison.csv"
COMPARISON_PAGES = ("comparison.md", "comparison.html")
ROBUSTNESS = "robustness.csv"
LOO = "loo.csv"
ROBUSTNESS_RECORD = "robustness.json"
PREPARED = "prepared.parquet"
PREPARED_DIAGNOSTICS = "prepared.diagnostics.json"
INDEX = "index.parquet"
FREQUENTIST = "frequentist"
ROBUSTNESS_FOLDER = "robustness"
LOGS = "logs"
KINDS = ("bayesian", "frequentist", "robustness")
RECORDS = {"bayesian": FIT_RECORD, "frequentist": FREQUENTIST_RECORD,
           "robustness": ROBUSTNESS_RECORD}
# posterior.nc's group of the thinned latent intercepts (not one of ArviZ's schema's groups)
LATENT_GROUP = "latent_intercepts"
PER_CAMPAIGN_GROUPS = ("posterior_predictive", "log_likelihood")
# float32 arrays keep this many significant bits (relative error at most 2^-13, about
# 1.2e-4: far below the Monte Carlo error of any draw-based figure); compression then
# stores them in about half the bytes
FLOAT32_BITS = 12
# The folder layout's version, recorded in fit.json: 1 had every draw of the latent
# intercepts in the posterior group, uncompressed; 2 has the latent group. A folder of a
# version not listed here is refused rather than half-read.
LAYOUT_VERSION = 2
READABLE_LAYOUTS = (1, 2)


def bayesian_folder(fits: str | Path, spec_name: str) -> Path:
    """Where a data set's Bayesian fit of a spec lives: fits/<data>/<spec>."""
    return Path(fits) / spec_name


def frequentist_folder(fits: str | Path, spec_name: str) -> Path:
    """Where its frequentist tables live: fits/<data>/frequentist/<spec>."""
    return Path(fits) / FREQUENTIST / spec_name


def robustness_folder(fits: str | Path, spec_name: str) -> Path:
    """Where its Table 4 variants live: fits/<data>/robustness/<spec>."""
    return Path(fits) / ROBUSTNESS_FOLDER / spec_name


def fit_folder(fits: str | Path, spec_name: str, kind: str) -> Path:
    """The folder of a spec's fit of any kind."""
    return {"bayesian": bayesian_folder, "frequentist": frequentist_folder,
            "robustness": robustness_folder}[kind](fits, spec_name)


def log_file(fits: str | Path, spec_name: str, kind: str) -> Path:
    """A task's log: fits/<data>/logs/<spec>.<kind>.log."""
    return Path(fits) / LOGS / f"{spec_name}.{kind}.log"


def record_file(folder: str | Path, kind: str) -> Path:
    """fit.json or frequentist.json of a folder."""
    return Path(folder) / RECORDS[kind]


# ------------------------------------------------------------------------- writing


def _rounded(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to FLOAT32_BITS significant bits (numcodecs' BitRound)."""
    from numcodecs import BitRound

    rounded = BitRound(FLOAT32_BITS).encode(np.ascontiguousarray(values))
    return np.asarray(rounded).view(np.float32).reshape(values.shape)


def _stored(dataset: xr.Dataset) -> xr.Dataset:
    """float32 arrays rounded (see FLOAT32_BITS); others as they are."""
    return dataset.assign({name: dataset[name].copy(data=_rounded(dataset[name].values))
                           for name in dataset.data_vars
                           if dataset[name].dtype == np.float32})


def posterior_groups(idata: az.InferenceData, latent_draws: int) -> dict[str, xr.Dataset]:
    """The groups posterior.nc holds: the latent intercepts in float32, moved to
    LATENT_GROUP and thinned to about `latent_draws` draws (0: every draw, left in the
    posterior group), and the per-campaign groups in float32 (7 significant digits are far
    beyond their Monte Carlo error); the sampled parameters stay float64. `idata` is not
    changed."""
    from fundgap.predictive import thinned

    groups = {name: getattr(idata, name) for name in idata.groups()}
    for name in PER_CAMPAIGN_GROUPS:
        if name in groups:
            groups[name] = groups[name].astype("float32")
    posterior = groups["posterior"]
    latent = [v for v in posterior.data_vars
              if is_group_intercept(str(v), posterior[v].dims)]
    if not latent:
        return groups
    latent_values = posterior[latent].astype("float32")
    if latent_draws > 0:
        groups["posterior"] = posterior.drop_vars(latent)
        groups[LATENT_GROUP] = thinned(latent_values, latent_draws)
    else:
        groups["posterior"] = posterior.assign(latent_values)
    return groups


def write_posterior(idata: az.InferenceData, path: str | Path, latent_draws: int) -> int:
    """Write posterior.nc (see the module docstring), atomically; returns how many draws of
    the latent intercepts it keeps (every draw where they stay in the posterior group)."""
    groups = posterior_groups(idata, latent_draws)
    latent = groups.get(LATENT_GROUP, groups["posterior"])
    with atomic_path(path) as temporary:
        for number, (name, group) in enumerate(groups.items()):
            group = _stored(group)
            encoding = {v: {"compression": "gzip", "compression_opts": 4, "shuffle": True}
                        for v in group.data_vars if group[v].ndim > 0}
            group.to_netcdf(temporary, mode="w" if number == 0 else "a", group=name,
                            engine="h5netcdf", encoding=encoding)
    return int(latent.sizes["chain"] * latent.sizes["draw"])


def write_fit(result: FitResult, folder: str | Path) -> Path:
    """Write a fit into `folder`, atomically: posterior.nc, summary.csv, effects.csv
    (contrasts, shrinkage and sensitivity tables where there are any), diagnostics.json,
    spec.toml, and fit.json last."""
    folder = Path(folder)
    settings = result.record.get("settings", {})
    with atomic_directory(folder) as temporary:
        kept = write_posterior(result.idata, temporary / POSTERIOR,
                               int(settings.get("latent_draws", 0)))
        result.summary.rename_axis("parameter").to_csv(temporary / SUMMARY)
        tables = {EFFECTS: result.effects, CONTRASTS: result.contrasts,
                  SHRINKAGE: result.shrinkage, SENSITIVITY: result.sensitivity,
                  SENSITIVITY_THRESHOLDS: result.sensitivity_thresholds}
        for name, table in tables.items():
            if name == EFFECTS or not table.empty:
                table.to_csv(temporary / name, index=False)
        write_json(result.diagnostics, temporary / DIAGNOSTICS)
        (temporary / SPEC).write_text(result.spec.text, encoding="utf-8")
        write_record({**result.record, "layout": LAYOUT_VERSION, "latent_draws_kept": kept},
                     temporary / FIT_RECORD)
    return folder


def write_frequentist(out: str | Path, tables: dict[str, pd.DataFrame],
                      pages: dict[str, str], record: dict) -> Path:
    """Write a spec's frequentist folder, atomically: each non-empty table (by file name),
    each rendered page, and frequentist.json last."""
    with atomic_directory(out) as folder:
        for name, table in tables.items():
            if name in (OLS, COMPARISON) or not table.empty:
                write_table(table, folder / name)
        for name, text in pages.items():
            (folder / name).write_text(text, encoding="utf-8")
        write_record({**record, "layout": LAYOUT_VERSION}, folder / FREQUENTIST_RECORD)
    return Path(out)


def failed_variants(side_by_side: pd.DataFrame) -> list[str]:
    """The variants of a robustness table that failed their diagnostics."""
    return side_by_side.loc[~side_by_side["passed"].astype(bool), "variant"].tolist()


def write_robustness(out: str | Path, side_by_side: pd.DataFrame, loo: pd.DataFrame,
                     record: dict) -> Path:
    """Write a spec's robustness folder, atomically: robustness.csv, loo.csv (where the
    variants were compared) and robustness.json last, which says whether every variant
    passed its diagnostics."""
    with atomic_directory(out) as folder:
        write_table(side_by_side, folder / ROBUSTNESS)
        if not loo.empty:
            write_table(loo, folder / LOO)
        failed = failed_variants(side_by_side)
        write_record({**record, "layout": LAYOUT_VERSION, "failed_variants": failed,
                      "passed": not failed}, folder / ROBUSTNESS_RECORD)
    return Path(out)


def read_robustness(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A robustness folder's (side by side, LOO comparison, record), checked as any fit
    folder is (DamagedFolder, FundgapError)."""
    folder = Path(folder)
    record = checked_record(folder, "robustness")
    return read_csv(folder / ROBUSTNESS), read_csv(folder / LOO), record


# ------------------------------------------------------------------------- reading


# tables whose empty cells are labels ("" is the mediator of a total effect, a level), read
# as empty strings rather than missing values
LABELLED_TABLES = (EFFECTS, CONTRASTS, SENSITIVITY)


def read_csv(path: Path) -> pd.DataFrame:
    """A fit folder's table as written (empty if the file is absent)."""
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path, keep_default_na=path.name not in LABELLED_TABLES)


def read_idata(path: str | Path) -> az.InferenceData:
    """posterior.nc as an InferenceData, with its latent intercepts group if it has one."""
    with warnings.catch_warnings():  # the latent group is not in ArviZ's schema
        warnings.filterwarnings("ignore", message=".*not defined in the InferenceData scheme")
        return az.from_netcdf(str(path))


def with_intercepts(idata: az.InferenceData) -> xr.Dataset:
    """The posterior with the latent intercepts, at the draws that kept them (every draw
    when they were not thinned): what effect and predictive functions take."""
    if LATENT_GROUP not in idata.groups():
        return idata.posterior
    latent = getattr(idata, LATENT_GROUP)
    return xr.merge([idata.posterior.sel(draw=latent["draw"]), latent])


@dataclass
class SavedFit:
    """A Bayesian fit folder, read and checked (`load_fit`); the posterior on first use."""

    folder: Path
    record: dict
    spec: ModelSpec
    diagnostics: dict
    summary: pd.DataFrame           # indexed by parameter, as FitResult.summary
    effects: pd.DataFrame
    contrasts: pd.DataFrame = field(default_factory=pd.DataFrame)
    shrinkage: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity_thresholds: pd.DataFrame = field(default_factory=pd.DataFrame)
    _idata: az.InferenceData | None = None

    @property
    def idata(self) -> az.InferenceData:
        if self._idata is None:
            self._idata = read_idata(self.folder / POSTERIOR)
        return self._idata

    @property
    def passed(self) -> bool:
        return bool(self.diagnostics.get("passed"))

    @property
    def reasons(self) -> list[str]:
        return list(self.diagnostics.get("reasons", []))

    @property
    def path(self) -> str:
        return str(self.folder)

    def save(self, folder: str | Path) -> Path:
        """Copy this fit folder to `folder` (replaced atomically), as it was written."""
        import shutil

        with atomic_directory(folder) as temporary:
            for path in self.folder.iterdir():
                if path.is_file():
                    shutil.copy2(path, temporary / path.name)
        return Path(folder)


class DamagedFolder(FundgapError):
    """A fit folder whose files differ from what its record lists (`problems`)."""

    def __init__(self, folder: Path, problems: list[str]) -> None:
        super().__init__(f"{folder}: damaged ({'; '.join(problems)}); fit it again")
        self.problems = problems


def checked_record(folder: str | Path, kind: str = "bayesian") -> dict:
    """A folder's record after the guard: it exists, nothing listed in it changed since, and
    its layout is one this version reads. Raises a FundgapError naming the folder."""
    folder = Path(folder)
    path = record_file(folder, kind)
    if not path.is_file():
        what = "fit" if kind == "bayesian" else kind
        raise FundgapError(f"{folder}: not a {what} folder (no {path.name})")
    broken = damaged(path)
    if broken:
        raise DamagedFolder(folder, broken)
    record = json.loads(path.read_text("utf-8"))
    layout = record.get("layout", 1)
    if layout not in READABLE_LAYOUTS:
        raise FundgapError(f"{folder}: written by another version of fundgap (folder layout "
                           f"{layout}; this one reads {', '.join(map(str, READABLE_LAYOUTS))})"
                           "; fit it again with this version")
    return record


def load_fit(folder: str | Path, spec: ModelSpec | None = None,
             data_fingerprint: str | None = None) -> SavedFit:
    """Read a Bayesian fit folder, refusing (FundgapError) one that is missing, damaged, of
    an unreadable layout, made from another spec (`spec`: its text must match) or from
    other data (`data_fingerprint`)."""
    from fundgap.groupings import ANY_COLUMNS
    from fundgap.spec import parse_spec

    folder = Path(folder)
    record = checked_record(folder)
    text = (folder / SPEC).read_text("utf-8")
    if spec is not None and text != spec.text:
        raise FundgapError(f"{folder}: made from another version of {spec.name} (its "
                           f"{SPEC} differs from {spec.source}); refit it")
    if data_fingerprint is not None and record.get("data_fingerprint") != data_fingerprint:
        raise FundgapError(f"{folder}: made from other data (fingerprint "
                           f"{str(record.get('data_fingerprint'))[:12]}, these data "
                           f"{data_fingerprint[:12]}); refit it")
    saved = parse_spec(text, str(folder / SPEC), ANY_COLUMNS)
    return SavedFit(folder, record, saved,
                    json.loads((folder / DIAGNOSTICS).read_text("utf-8")),
                    pd.read_csv(folder / SUMMARY, index_col="parameter"),
                    read_csv(folder / EFFECTS),
                    read_csv(folder / CONTRASTS), read_csv(folder / SHRINKAGE),
                    read_csv(folder / SENSITIVITY), read_csv(folder / SENSITIVITY_THRESHOLDS))


def current_key(folder: str | Path, kind: str) -> str | None:
    """The run key of an intact fit folder of a readable layout, or None (fit it again)."""
    try:
        return checked_record(folder, kind).get("run_key")
    except (FundgapError, OSError, ValueError):
        return None


def fit_status(folder: str | Path, kind: str) -> str:
    """passed or failed (Bayesian, by its diagnostics; robustness, by every variant's),
    done (frequentist)."""
    if kind == "frequentist":
        return "done"
    if kind == "robustness":
        record = json.loads(record_file(folder, kind).read_text("utf-8"))
        return "passed" if record["passed"] else "failed"
    diagnostics = json.loads((Path(folder) / DIAGNOSTICS).read_text("utf-8"))
    return "passed" if diagnostics["passed"] else "failed"


def spec_names(fits: str | Path) -> list[str]:
    """The specs a data set's fits folder holds a fit of, of any kind."""
    fits = Path(fits)
    return sorted({p.parent.name for p in fits.glob(f"*/{FIT_RECORD}")}
                  | {p.parent.name for p in fits.glob(f"{FREQUENTIST}/*/{FREQUENTIST_RECORD}")}
                  | {p.parent.name for p in
                     fits.glob(f"{ROBUSTNESS_FOLDER}/*/{ROBUSTNESS_RECORD}")})


@contextlib.contextmanager
def opened_posterior(folder: str | Path) -> Iterator[xr.Dataset]:
    """The posterior group of a fit folder's posterior.nc (the sampled parameters), open."""
    with xr.open_dataset(Path(folder) / POSTERIOR, group="posterior") as posterior:
        yield posterior
