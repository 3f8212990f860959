"""Batch refits: every spec on every data set, resumable, on this machine or a Dask cluster.

`run_batch` validates and prepares each data folder, then fits every spec in models/: the
joint Bayesian model (`fits/<data>/<spec>/`), for a spec with a [robustness] table its
variants (`fits/<data>/robustness/<spec>/`, fundgap.robustness), and the frequentist tables
with their comparison (`fits/<data>/frequentist/<spec>/`, last: it joins the Bayesian fit's
posterior and the exposure variants'). A task whose run key (spec text, prepared-data
fingerprint, settings, package versions, a digest of fundgap's source) matches the folder
already there is skipped, so an interrupted batch resumes and a finished one costs nothing.
Every folder is written atomically; `index.parquet` at the top of `fits/` holds one row per
fit folder, rebuilt from the folders after each batch.

Tasks run one after another here (each sampler already uses the cores) or, given a Dask
`Client`, as tasks on its cluster; the layout is the same either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fundgap import fitfolder
from fundgap.errors import FundgapError
from fundgap.fit_index import write_index
from fundgap.fitfolder import current_key, fit_status
from fundgap.store import package_versions, to_json

# the writer lock of an output folder (`run_batch`)
LOCK_NAME = ".fundgap-run.lock"
# runs of a Dask task after the first, where its worker died (not where it raised: a task
# reports its own errors in its row)
TASK_RETRIES = 1


@dataclass(frozen=True)
class Task:
    """One fit to run: a spec on a prepared data set, Bayesian or frequentist."""

    data: str                  # the data set's name (its folder's name)
    spec_path: str
    spec_name: str
    kind: str
    prepared: str              # the prepared table (parquet)
    folder: str                # where the fit lands
    fits: str                  # the data set's fits folder (the posterior for comparisons)
    log: str
    key: str
    settings: dict = field(default_factory=dict)
    data_fingerprint: str | None = None   # the prepared rows' (what fit.json records)


# the order of a spec's tasks: the comparison (frequentist) reads the Bayesian fit and the
# exposure variants among the robustness variants (Table 7's models 2-5)
PLAN_ORDER = ("bayesian", "robustness", "frequentist")


def run_key(spec_text: str, data_fingerprint: str, kind: str, settings: dict) -> str:
    """What decides a fit's result; an unchanged key means the folder can be kept."""
    versions = package_versions()
    return hashlib.sha256(to_json({"spec": spec_text, "data": data_fingerprint, "kind": kind,
                                   "settings": settings, "versions": versions})
                          .encode()).hexdigest()


# ---------------------------------------------------------------- one task (on any worker)


@contextlib.contextmanager
def _logged(path: str) -> Iterator[logging.Logger]:
    """Everything a task prints or logs (PyMC, nutpie, warnings) goes to its log file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        with open(path, "a", encoding="utf-8") as stream, \
                contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            log = logging.getLogger("fundgap.batch")
            log.setLevel(logging.INFO)
            yield log
    finally:
        root.removeHandler(handler)
        handler.close()


def run_task(task: Task, after: object = None) -> dict:
    """Run one task and write its folder; returns its row for the run summary. Errors are
    caught and reported in the row (and the log), never raised: one failing fit must not
    stop the others. `after` only orders tasks on a Dask cluster."""
    from fundgap.prepare import read_prepared
    from fundgap.spec import load_spec

    started = time.perf_counter()
    row = {"data": task.data, "spec": task.spec_name, "kind": task.kind,
           "folder": task.folder, "log": task.log, "action": "fitted"}
    with _logged(task.log) as log:
        try:
            log.info("%s %s on %s -> %s", task.kind, task.spec_path, task.prepared,
                     task.folder)
            spec = load_spec(task.spec_path)
            if task.kind == "bayesian":
                row.update(_bayesian(spec, task))
            elif task.kind == "robustness":
                row.update(_robustness(spec, read_prepared(task.prepared).table, task))
            else:
                row.update(_frequentist(spec, read_prepared(task.prepared).table, task))
            log.info("finished: %s", row["status"])
        except Exception as error:  # reported in the summary; the traceback is in the log
            log.error("failed:\n%s", traceback.format_exc())
            row.update({"status": "error", "message": f"{type(error).__name__}: {error}"})
    row["wall_seconds"] = time.perf_counter() - started
    return row


def _bayesian(spec, task: Task) -> dict:
    from fundgap.bayesian import settings_for
    from fundgap.fitfolder import write_fit
    from fundgap.pipeline import fit_bayesian

    settings = settings_for(spec, progress=False, **task.settings)
    # from sufficient statistics where the table is large and every equation Gaussian
    result = fit_bayesian(spec, task.prepared, settings, "auto", task.data_fingerprint)
    result.record["run_key"] = task.key
    write_fit(result, task.folder)
    d = result.diagnostics
    return {"status": "passed" if d["passed"] else "failed",
            "message": "; ".join(d["reasons"])}


def _robustness(spec, table: pd.DataFrame, task: Task) -> dict:
    from fundgap.pipeline import fit_robustness
    from fundgap.robustness import robustness_settings

    settings = robustness_settings(spec, progress=False, **task.settings)
    # the spec's own fit (this run's, or a current one) is the spec-as-written row
    side_by_side, _ = fit_robustness(spec, table, task.folder, settings,
                                     record={"run_key": task.key},
                                     data_fingerprint=task.data_fingerprint,
                                     fit=fitfolder.bayesian_folder(task.fits, spec.name))
    failed = fitfolder.failed_variants(side_by_side)
    return {"status": "failed" if failed else "passed",
            "message": f"failed diagnostics: {', '.join(failed)}" if failed else ""}


def _frequentist(spec, table: pd.DataFrame, task: Task) -> dict:
    from fundgap.pipeline import fit_frequentist

    fit_frequentist(spec, table, task.folder, task.fits, task.settings.get("replicates"),
                    task.settings.get("seed"), record={"run_key": task.key},
                    source=task.prepared)
    return {"status": "done", "message": ""}


# ---------------------------------------------------------------- planning


def data_folders(sources: Iterable[str | Path]) -> list[Path]:
    """Data folders from the arguments: a folder with campaigns.csv is one; a folder of such
    folders gives each of them."""
    found: list[Path] = []
    for source in map(Path, sources):
        if (source / "campaigns.csv").is_file():
            found.append(source)
        elif source.is_dir():
            inner = sorted(p for p in source.iterdir() if (p / "campaigns.csv").is_file())
            if not inner:
                raise FundgapError(f"{source}: neither a data folder (no campaigns.csv) nor a "
                                   "folder of data folders")
            found.extend(inner)
        else:
            raise FundgapError(f"{source}: no such data folder")
    names = [p.name for p in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FundgapError(f"data sets with the same name would share a fits folder: "
                           f"{', '.join(twice)}")
    return found


def not_applicable(spec, table: pd.DataFrame) -> str | None:
    """Why `table` cannot serve `spec` (a column any of its models uses is absent or empty
    in every row), naming where that column comes from; None where it can."""
    from fundgap.rules import column_source

    empty = [c for c in spec.all_variables
             if c and (c not in table.columns or table[c].isna().all())]
    if not empty:
        return None
    return "not applicable to these data: " + "; ".join(
        f"it needs {c}, which no row has (it comes from {column_source(c)})" for c in empty)


def plan(data: Iterable[str | Path], models: Iterable[str | Path], out: str | Path,
         settings: dict | None = None, force: bool = False,
         prepare_failed: Callable[[Path, Exception], None] | None = None
         ) -> tuple[list[Task], list[dict]]:
    """The tasks to run and the rows of those skipped (their folders are current)."""
    from fundgap.pipeline import prepare_data
    from fundgap.spec import load_spec

    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    specs = [load_spec(path) for path in models]
    tasks, skipped = [], []
    for folder in data_folders(data):
        fits = Path(out) / folder.name
        try:
            prepared, fingerprint, table = prepare_data(folder, fits)
        except FundgapError as error:
            if prepare_failed is None:
                raise
            prepare_failed(folder, error)
            continue
        _clean_leftovers(fits)
        for spec in specs:
            reason = not_applicable(spec, table)
            for kind in PLAN_ORDER:
                if kind != "frequentist" and not spec.is_bayesian:
                    continue
                if kind == "robustness" and spec.robustness is None:
                    continue
                if reason is not None:
                    skipped.append({"data": folder.name, "spec": spec.name, "kind": kind,
                                    "folder": "", "action": "skipped",
                                    "status": "not applicable", "message": reason,
                                    "wall_seconds": 0.0})
                    continue
                wanted = ({k: v for k, v in settings.items() if k != "replicates"}
                          if kind != "frequentist" else
                          {k: v for k, v in settings.items() if k in ("replicates", "seed")})
                key = run_key(spec.text, fingerprint, kind, wanted)
                target = fitfolder.fit_folder(fits, spec.name, kind)
                task = Task(folder.name, spec.source, spec.name, kind, str(prepared),
                            str(target), str(fits),
                            str(fitfolder.log_file(fits, spec.name, kind)), key, wanted,
                            fingerprint)
                if not force and current_key(target, kind) == key and not _stale(task, tasks):
                    skipped.append({"data": folder.name, "spec": spec.name, "kind": kind,
                                    "folder": str(target), "action": "skipped",
                                    "status": fit_status(target, kind), "message": "",
                                    "wall_seconds": 0.0})
                else:
                    tasks.append(task)
    return tasks, skipped


def _stale(task: Task, planned: list[Task]) -> bool:
    """A comparison, or the variants that take the spec's fit as written, are redone when
    the Bayesian fit they join is being redone; a comparison also when the variants it
    reads are."""
    joins = ("bayesian", "robustness") if task.kind == "frequentist" else ("bayesian",)
    return task.kind != "bayesian" and any(
        t.kind in joins and t.spec_name == task.spec_name and t.data == task.data
        for t in planned)


def _clean_leftovers(fits: Path) -> None:
    """Remove the temporary folders and files an interrupted run left beside its targets."""
    if not fits.is_dir():
        return
    for path in [*fits.glob(".*.tmp"), *fits.glob(".*.old"), *fits.glob("*/.*.tmp"),
                 *fits.glob("*/.*.old")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- running


def run_tasks(tasks: list[Task], client=None, progress: bool = True) -> list[dict]:
    """Run the tasks here, in order, or on a Dask cluster (`client`); a spec's tasks on a
    data set run in PLAN_ORDER (robustness after its Bayesian fit, the comparison last).
    Returns one row per task."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="fits", unit="fit", disable=not progress)
    rows: list[dict] = []
    if client is None:
        for task in tasks:
            bar.set_postfix_str(f"{task.data}/{task.spec_name} ({task.kind})")
            rows.append(run_task(task))
            bar.update()
        bar.close()
        return rows
    from distributed import as_completed

    # each task after the one planned before it for the same spec and data (Bayesian, then
    # its variants, then the comparison, which reads both)
    futures, latest, of_future = [], {}, {}
    for task in tasks:
        before = latest.get((task.data, task.spec_name)) if task.kind != "bayesian" \
            else None
        # a task whose worker dies is run again once elsewhere (its half-written folder is
        # a hidden temporary one, removed at the end of the run)
        future = client.submit(run_task, task, before, pure=False, retries=TASK_RETRIES,
                               key=f"{task.kind}-{task.data}-{task.spec_name}-{task.key[:8]}")
        latest[(task.data, task.spec_name)] = future
        futures.append(future)
        of_future[future.key] = task
    for future in as_completed(futures):
        try:
            rows.append(future.result())
        except Exception as error:  # the task never reported: its worker died, or the cluster
            task = of_future[future.key]
            rows.append({"data": task.data, "spec": task.spec_name, "kind": task.kind,
                         "folder": task.folder, "log": task.log, "action": "fitted",
                         "status": "error", "wall_seconds": 0.0,
                         "message": f"the Dask task did not finish ({type(error).__name__}: "
                                    f"{error}); nothing was written, a rerun fits it"})
        bar.update()
    bar.close()
    return rows


@dataclass
class BatchResult:
    """What a batch did: one row per task run or skipped, and where the index is."""

    rows: pd.DataFrame
    index: Path

    @property
    def failed(self) -> bool:
        return bool(self.rows["status"].isin(["failed", "error"]).any())


def run_batch(data: Iterable[str | Path], models: Iterable[str | Path], out: str | Path,
              settings: dict | None = None, force: bool = False, client=None,
              progress: bool = True) -> BatchResult:
    """Plan, run what is not current, and rebuild the index (see the module docstring).
    One run at a time writes to `out`: a second one refuses while the first holds its
    lock (a FundgapError naming it)."""
    with _writer_lock(out):
        return _run_batch(data, models, out, settings, force, client, progress)


@contextlib.contextmanager
def _writer_lock(out: str | Path) -> Iterator[None]:
    """Hold `out`'s writer lock (an OS file lock, released however the process ends)."""
    from filelock import FileLock, Timeout

    Path(out).mkdir(parents=True, exist_ok=True)
    lock = FileLock(Path(out) / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FundgapError(f"{out}: another fundgap run is writing to this folder (it holds "
                           f"{lock.lock_file}); wait for it to finish, or give another "
                           "--out") from None
    try:
        yield
    finally:
        lock.release()


def _run_batch(data: Iterable[str | Path], models: Iterable[str | Path], out: str | Path,
               settings: dict | None, force: bool, client, progress: bool) -> BatchResult:
    failures: list[dict] = []

    def prepare_failed(folder: Path, error: Exception) -> None:
        failures.append({"data": folder.name, "spec": "", "kind": "data", "action": "prepare",
                         "status": "error", "message": str(error), "wall_seconds": 0.0,
                         "folder": str(folder)})

    # (any fit imports the model builders, and with them the Laplace kernel)
    aside = (_compile_kernel_aside()
             if client is None and "fundgap.laplace_kernel" not in sys.modules else None)
    try:
        tasks, skipped = plan(data, models, out, settings, force, prepare_failed)
        rows = failures + skipped + run_tasks(tasks, client, progress)
    finally:
        if aside is not None:   # only a head start: one still running has no use now
            aside.terminate()
            aside.wait()
    for fits in {Path(task.fits) for task in tasks}:  # what died with a worker
        _clean_leftovers(fits)
    index = write_index(out)
    frame = pd.DataFrame(rows).reindex(columns=["data", "spec", "kind", "action", "status",
                                                "wall_seconds", "message", "folder"])
    return BatchResult(frame.sort_values(["data", "spec", "kind"], ignore_index=True), index)


def _compile_kernel_aside() -> subprocess.Popen:
    """Start loading the Laplace kernel in another process. numba compiles one function at
    a time per process, and where its cache is empty (a new clone, CI) the joint Gaussian
    kernel and the Laplace kernel each take a while (benchmarks/README.md): this way the
    second compiles, and is cached on disk, while this process prepares the data and
    compiles the first; where the cache has it, the other process only loads it."""
    return subprocess.Popen([sys.executable, "-c", "import fundgap.laplace_kernel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summary_text(result: BatchResult) -> str:
    """The run summary: what passed, failed or was skipped, per data set and spec."""
    frame = result.rows.copy()
    frame["wall_seconds"] = frame["wall_seconds"].map(lambda v: f"{v:.0f}")
    messages = frame["message"].fillna("")
    frame["message"] = messages.map(lambda m: m.splitlines()[0][:90] if m else "")
    counts = frame.groupby("status").size().to_dict()
    # errors and what does not apply in full below the table (a data problem names its
    # file, row and column)
    errors = [f"{row.data} {row.spec} {row.kind}: {message}"
              for row, message in zip(result.rows.itertuples(), messages, strict=True)
              if row.status in ("error", "not applicable")]
    return "\n".join([frame.drop(columns=["folder"]).to_string(index=False),
                      ", ".join(f"{n} {status}" for status, n in counts.items())
                      + f"; index: {result.index}", *errors])


