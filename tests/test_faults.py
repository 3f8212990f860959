"""Faults while results are written: two runs on one folder, a damaged fit folder, the disk
filling up, SIGTERM. Each leaves complete folders or none, says what happened, and a rerun
resumes."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fundgap.batch import LOCK_NAME, run_batch
from fundgap.cli import main
from fundgap.report import build_report
from fundgap.simulation.development import simulate, write_simulation
from fundgap.store import damaged

SPEC = """name = "{name}"
exposure = "development"
outcome = "log_amount_raised"
[equations.log_amount_raised]
formula = "log_amount_raised ~ development + male"
"""
# enough draws for the gate (tail ESS >= 400) on this small model
FAST = {"draws": 600, "tune": 300, "chains": 2, "replicates": 9}
FAST_ARGS = ["--draws", "600", "--tune", "300", "--chains", "2", "--replicates", "9",
             "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_simulation(simulate(n_campaigns=250, seed=11), root / "data" / "one")
    models = root / "models"
    models.mkdir()
    for name in ("first", "second"):
        (models / f"{name}.toml").write_text(SPEC.format(name=name))
    return root


def _run(inputs: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(inputs / "data" / "one"), "--models",
            str(inputs / "models"), "--out", str(out), *FAST_ARGS, *extra]


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def test_a_second_run_on_the_same_folder_refuses(inputs: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    from filelock import FileLock

    out = tmp_path / "fits"
    out.mkdir()
    with FileLock(out / LOCK_NAME):      # as a first run holds it while it writes
        assert main(_run(inputs, out)) == 1
    message = capsys.readouterr().err
    assert "another fundgap run is writing to this folder" in message
    assert "Traceback" not in message
    assert not (out / "one").exists()
    assert main(_run(inputs, out)) == 0     # the lock is released with its holder


def test_a_damaged_fit_is_shown_as_such_and_fitted_again(inputs: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "fits"
    models = sorted((inputs / "models").glob("*.toml"))
    run_batch([inputs / "data" / "one"], models, out, FAST, progress=False)
    posterior = out / "one" / "first" / "posterior.nc"
    written = posterior.stat().st_size
    with open(posterior, "r+b") as handle:           # truncated, as by a full disk
        handle.truncate(written // 3)
    assert damaged(out / "one" / "first" / "fit.json") == [
        f"posterior.nc: {written // 3:,} bytes where {written:,} were written"]

    report = build_report(out / "one")
    shown = {a.name: a for a in report.analyses}
    assert shown["first"].status == "damaged" and shown["second"].status == "passed"
    assert shown["first"].effects.empty
    status = report.index.set_index(["spec", "kind"])["status"]
    assert status[("first", "bayesian")] == "damaged"

    again = run_batch([inputs / "data" / "one"], models, out, FAST, progress=False)
    action = again.rows.set_index(["spec", "kind"])["action"]
    assert action[("first", "bayesian")] == "fitted"
    assert action[("second", "bayesian")] == "skipped"
    assert not damaged(out / "one" / "first" / "fit.json")


def test_a_full_disk_keeps_the_earlier_fit_and_says_so(inputs: Path, tmp_path: Path,
                                                       monkeypatch, capsys) -> None:
    """The posterior cannot be written (no space left): the run reports it and exits 1, the
    folder written before stays as it was, and nothing half-written remains."""
    import fundgap.fitfolder

    out = tmp_path / "fits"
    assert main(_run(inputs, out)) == 0
    record = out / "one" / "first" / "fit.json"
    before = json.loads(record.read_text("utf-8"))

    def full_disk(idata, path: Path, latent_draws: int) -> int:
        Path(path).write_bytes(b"\0" * 4096)     # what fitted before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fundgap.fitfolder, "write_posterior", full_disk)
    capsys.readouterr()
    assert main(_run(inputs, out, "--force")) == 1
    printed = capsys.readouterr().out
    assert "No space left on device" in printed and "Traceback" not in printed
    assert json.loads(record.read_text("utf-8")) == before
    assert not damaged(record)
    assert not _leftovers(out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_run_cleanly_and_a_rerun_resumes(inputs: Path, tmp_path: Path,
                                                         signum: int) -> None:
    """SIGTERM (a scheduler, `kill`) and SIGINT (Ctrl-C) in the middle of the second fit:
    exit 130 with a message, the first fit intact, no trace of the second, and a rerun fits
    only what is missing."""
    out = tmp_path / "fits"
    process = subprocess.Popen([sys.executable, "-m", "fundgap.cli", *_run(inputs, out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = out / "one" / "logs" / "second.bayesian.log"   # opened as that fit begins
    deadline = time.time() + 300
    while time.time() < deadline and not started.exists():
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "run it again to resume" in stderr
    assert "Traceback" not in stderr
    assert not damaged(out / "one" / "first" / "fit.json")
    assert not (out / "one" / "second").exists()
    assert not _leftovers(out)
    resumed = run_batch([inputs / "data" / "one"], sorted((inputs / "models").glob("*.toml")),
                        out, FAST, progress=False)
    action = resumed.rows.set_index(["spec", "kind"])["action"]
    assert action[("first", "bayesian")] == "skipped"
    assert action[("second", "bayesian")] == "fitted"


def test_a_dask_worker_killed_mid_fit_leaves_nothing_half_written(inputs: Path,
                                                                   tmp_path: Path) -> None:
    """The only worker is killed (SIGKILL) while it fits: its nanny starts another, the task
    runs again there, and the run ends with every folder complete and no leftovers."""
    import os
    import threading

    from distributed import Client, LocalCluster

    out = tmp_path / "fits"
    started = out / "one" / "logs" / "first.bayesian.log"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        (pid,) = client.run(os.getpid).values()
        result = {}
        runner = threading.Thread(target=lambda: result.update(batch=run_batch(
            [inputs / "data" / "one"], sorted((inputs / "models").glob("*.toml")), out,
            FAST, client=client, progress=False)))
        runner.start()
        deadline = time.time() + 300
        while time.time() < deadline and not started.exists():
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=600)
    rows = result["batch"].rows
    assert set(rows["status"]) <= {"passed", "done"}, rows
    for spec in ("first", "second"):
        assert not damaged(out / "one" / spec / "fit.json")
    assert not _leftovers(out)


def test_the_report_reads_around_what_it_cannot_use(inputs: Path, tmp_path: Path) -> None:
    """A fits folder also holding a folder fundgap did not write, a comparison without its
    Bayesian fit and a fit missing a file: the report is written, each shown for what it
    is, none with numbers it cannot vouch for."""
    import shutil

    from fundgap.report import write_report

    out = tmp_path / "fits"
    models = sorted((inputs / "models").glob("*.toml"))
    run_batch([inputs / "data" / "one"], models, out, FAST, progress=False)
    data = out / "one"
    (data / "foreign").mkdir()
    (data / "foreign" / "fit.json").write_text('{"made_by": "another tool"}')
    (data / "foreign" / "spec.toml").write_text("not a spec")
    shutil.copytree(data / "frequentist" / "first", data / "frequentist" / "lonely")
    (data / "second" / "effects.csv").unlink()

    report = build_report(data)
    html, markdown = write_report(report, tmp_path / "report.html")
    shown = {a.name: a for a in report.analyses}
    assert shown["first"].status == "passed"
    assert shown["foreign"].status == "damaged" and "cannot be read" in shown[
        "foreign"].reasons[-1]
    assert shown["second"].status == "damaged"
    assert shown["second"].reasons == ["effects.csv: missing"]
    assert shown["lonely"].status == "no Bayesian fit" and not shown["lonely"].comparison.empty
    status = report.index.set_index(["spec", "kind"])["status"]
    assert status[("foreign", "bayesian")] == "damaged"
    page = html.read_text("utf-8")
    assert page.count("Fit folder damaged") == 2 and "Traceback" not in page
    assert markdown.read_text("utf-8").count("**Fit folder damaged**") == 2
