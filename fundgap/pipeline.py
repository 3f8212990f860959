"""One way through the code, from data to fit folders: the CLI, the batch, the notebooks and
the Python API (`fundgap.bayesian`, `fundgap.load`, ...) all call these, so a choice made here
(rows or sufficient statistics, which columns a spec needs) is made once for all of them.

- `load_prepared`: a data folder (validated and prepared on the way in), a prepared table
  file, or a DataFrame -> PreparedData.
- `prepare_data`: a data folder prepared into fits/<data>/prepared.parquet, reused while
  its input files are unchanged (`fundgap run`, the notebooks).
- `use_statistics`: whether a Bayesian fit reads sufficient statistics in chunks instead of
  rows (every equation Gaussian and a prepared Parquet table of over REDUCE_ROWS rows).
- `fit_bayesian`: a spec fitted to a source, from rows or from statistics.
- `fit_frequentist`: a spec's frequentist tables, after checking its columns.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from fundgap import fitfolder
from fundgap.bayesian import FitResult, FitSettings, fit_design, fit_model
from fundgap.errors import FundgapError
from fundgap.prepare import PreparedData
from fundgap.spec import ModelSpec
from fundgap.store import file_fingerprint, frame_fingerprint, write_json, write_table

STATISTICS_CHOICES = ("auto", "always", "never")

if TYPE_CHECKING:
    from fundgap.frequentist_tables import FrequentistResult

Source = str | Path | pd.DataFrame


def load_prepared(source: Source) -> PreparedData:
    """A data folder (validated, then prepared), a prepared table (.parquet, .csv, .dta),
    or a prepared DataFrame, as PreparedData."""
    from fundgap.prepare import prepare_folder, read_prepared

    if isinstance(source, pd.DataFrame):
        return PreparedData(source, {})
    path = Path(source)
    if path.is_dir():
        return prepare_folder(path)
    if path.is_file():
        return read_prepared(path)
    raise FundgapError(f"{path}: no such data folder or prepared table")


def _input_fingerprint(folder: Path) -> str:
    """SHA-256 over the data folder's input files (CSV or Parquet), each read in blocks."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.csv"), *folder.glob("*.parquet")]):
        digest.update(path.name.encode())
        digest.update(file_fingerprint(path).encode())
    return digest.hexdigest()


def prepare_data(folder: Path, fits: Path) -> tuple[Path, str, pd.DataFrame]:
    """Validate and prepare a data folder into `fits/prepared.parquet` (reused while the
    input files are unchanged); returns the prepared table's path, fingerprint and the
    table itself."""
    from fundgap.prepare import prepare_folder, read_prepared

    target = fits / fitfolder.PREPARED
    sidecar = fits / fitfolder.PREPARED_DIAGNOSTICS
    fingerprint = _input_fingerprint(folder)
    recorded = (json.loads(sidecar.read_text("utf-8")).get("input_fingerprint")
                if target.is_file() and sidecar.is_file() else None)
    if recorded != fingerprint:
        prepared = prepare_folder(folder)
        write_table(prepared.table, target)
        write_json({**prepared.diagnostics, "input_fingerprint": fingerprint,
                    "source": str(folder)}, sidecar)
    # the fingerprint of the table as the fits read it back (what fit.json records)
    table = read_prepared(target).table
    return target, frame_fingerprint(table), table


def table_columns(source: Source) -> set[str] | None:
    """The columns a prepared source holds, read without its rows (None for a data folder,
    whose prepared table has the study's columns)."""
    if isinstance(source, pd.DataFrame):
        return {str(c) for c in source.columns}
    path = Path(source)
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.ParquetFile(path).schema_arrow.names)
    if suffix == ".dta":
        with pd.read_stata(path, iterator=True) as reader:
            return set(reader.variable_labels())
    return {str(c) for c in pd.read_csv(path, nrows=0).columns}


def spec_for(spec: str | Path | ModelSpec, source: Source) -> ModelSpec:
    """A spec file read and checked against the columns of the table it will be fitted to
    (any table, not only the study's prepared one); a ModelSpec as it is."""
    from fundgap.errors import SpecError
    from fundgap.spec import load_spec

    if isinstance(spec, ModelSpec):
        return spec
    columns = table_columns(source)
    try:
        return load_spec(spec, columns)
    except SpecError as error:
        # a study spec on a table that lacks some of the study's columns: name those once
        try:
            study = load_spec(spec)
        except SpecError:
            raise error from None
        where = "a DataFrame" if isinstance(source, pd.DataFrame) else str(source)
        missing_columns([study], columns or set(), where)
        raise


def use_statistics(spec: ModelSpec, source: Source, choice: str = "auto") -> bool:
    """Whether to fit `spec` from sufficient statistics read in chunks (fundgap.reduce):
    "always", "never", or "auto" (every equation Gaussian with at most two nested
    groupings, and a prepared .parquet table of over REDUCE_ROWS rows). "always" on
    anything but a .parquet table is an error."""
    from fundgap.reduce import REDUCE_ROWS, parquet_rows

    _check_choice(choice)
    if choice == "never":
        return False
    parquet = (not isinstance(source, pd.DataFrame) and Path(source).is_file()
               and Path(source).suffix.lower() == ".parquet")
    if not parquet:
        if choice == "always":
            what = "a DataFrame" if isinstance(source, pd.DataFrame) else source
            raise FundgapError(f"{what}: fitting from sufficient statistics reads a prepared "
                               ".parquet table (write one with `fundgap prepare`)")
        return False
    return choice == "always" or (reducible(spec) and parquet_rows(source) > REDUCE_ROWS)


def _check_choice(choice: str) -> None:
    if choice not in STATISTICS_CHOICES:
        raise FundgapError(f"unknown statistics choice {choice!r}: use "
                           f"{', '.join(STATISTICS_CHOICES)}")


def reducible(spec: ModelSpec) -> bool:
    """Whether every equation of `spec` can be fitted from sufficient statistics (Gaussian,
    with at most two nested groupings)."""
    from fundgap.families import EXACT_FAMILIES

    return all(e.family in EXACT_FAMILIES and len(e.groups) <= 2
               for e in spec.equations.values())


def table_statistics(spec: ModelSpec, table: pd.DataFrame, choice: str = "auto") -> bool:
    """`use_statistics` for a table in memory: "auto" reduces one of over REDUCE_ROWS rows
    whose spec is reducible; "always" where the spec is not reducible is an error."""
    from fundgap.reduce import REDUCE_ROWS

    _check_choice(choice)
    if choice == "always" and not reducible(spec):
        raise FundgapError(f"{spec.source}: fitting from sufficient statistics needs every "
                           "equation Gaussian with at most two nested groupings")
    return choice == "always" or (choice == "auto" and reducible(spec)
                                  and len(table) > REDUCE_ROWS)


def fit_bayesian(spec: ModelSpec, source: Source, settings: FitSettings,
                 statistics: str = "auto", data_fingerprint: str | None = None) -> FitResult:
    """Fit `spec` to a source: from sufficient statistics where `use_statistics` says so,
    else from the prepared rows.
    `data_fingerprint` is what fit.json records (default: the rows' fingerprint, or the
    file's when fitting from statistics)."""
    from fundgap.store import file_fingerprint

    started = time.perf_counter()
    if use_statistics(spec, source, statistics):
        from fundgap.reduce import reduce_prepared

        design = reduce_prepared(spec, source)
        return fit_design(design, settings, data_fingerprint or file_fingerprint(source),
                          started)
    result = fit_model(spec, load_prepared(source).table, settings)
    if data_fingerprint is not None:
        result.record["data_fingerprint"] = data_fingerprint
    return result


def missing_columns(specs: list[ModelSpec], columns: Iterable[str], source: str) -> None:
    """Raise one FundgapError naming every column a spec uses that the data (`columns`, or
    a table's columns) lack."""
    present = set(columns)
    lacking = [f"{spec.source}: the data ({source}) have no column(s) {', '.join(missing)}"
               for spec in specs
               if (missing := [c for c in spec.all_variables if c and c not in present])]
    if lacking:
        raise FundgapError("\n".join(lacking) + "\n(prepare the data again with this "
                           "version of fundgap)")


def fit_frequentist(spec: ModelSpec, table: pd.DataFrame, out: str | Path,
                    fits: str | Path | None = None, replicates: int | None = None,
                    seed: int | None = None, mixedlm: str = "outcome",
                    record: dict | None = None, source: str = "the data"
                    ) -> tuple[FrequentistResult, pd.DataFrame]:
    """The spec's OLS/logit, KHB and MixedLM tables and their comparison with the published
    figures (and the Bayesian fit under `fits`), written to `out`; returns both."""
    from fundgap.compare import write_frequentist
    from fundgap.frequentist_tables import run_frequentist
    from fundgap.khb import BOOTSTRAP_REPLICATES, BOOTSTRAP_SEED

    missing_columns([spec], table.columns, source)
    replicates = BOOTSTRAP_REPLICATES if replicates is None else replicates
    seed = BOOTSTRAP_SEED if seed is None else seed
    result = run_frequentist(spec, table, replicates, seed, mixedlm)
    return result, write_frequentist(result, table, out, fits, replicates, seed, record=record)


def fit_robustness(spec: ModelSpec, table: pd.DataFrame, out: str | Path,
                   settings: FitSettings, record: dict | None = None,
                   data_fingerprint: str | None = None,
                   fit: str | Path | None = None,
                   statistics: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit Table 4's variants of `spec` (fundgap.robustness) and write them to `out`
    (robustness.csv, loo.csv, robustness.json); returns (side by side, LOO comparison).
    `fit`: the spec's own fit folder, which serves as the spec as written where it is of
    this spec and these data (else that variant is fitted too). `statistics`: whether the
    variants are fitted from sufficient statistics (`table_statistics`: auto, always,
    never)."""
    from dataclasses import asdict

    from fundgap.fitfolder import load_fit, write_robustness
    from fundgap.robustness import SavedReference, robustness, variant_names
    from fundgap.store import frame_fingerprint, package_versions

    started = time.perf_counter()
    missing_columns([spec], table.columns, "the data")
    fingerprint = data_fingerprint or frame_fingerprint(table)
    reduced = table_statistics(spec, table, statistics)
    reference, why = None, "no fit folder given"
    if fit is not None:
        try:
            reference = SavedReference.read(load_fit(fit, spec, fingerprint), table,
                                            statistics=reduced)
            why = "" if reference else "fitted from sufficient statistics"
        except FundgapError as error:
            why = str(error)
    variants = variant_names(spec)
    side_by_side, loo = robustness(spec, table, settings, variants, reference, reduced)
    write_robustness(out, side_by_side, loo, {
        "spec_name": spec.name, "variants": variants, "data_fingerprint": fingerprint,
        "data_form": "sufficient statistics" if reduced else "rows",
        # where the spec as written comes from: its own fit, or fitted here (and why)
        "spec_as_written": str(fit) if reference else f"fitted here ({why})",
        "settings": asdict(settings), "backend": settings.backend,
        "versions": package_versions(), "wall_seconds": time.perf_counter() - started,
        **(record or {})})
    return side_by_side, loo
