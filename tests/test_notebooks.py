"""Every notebook runs top to bottom (quick mode: few draws, nothing written under fits/),
and the committed sources carry no outputs."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))


def test_there_are_five_notebooks_and_no_committed_outputs() -> None:
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]
    assert not list((REPO / "notebooks").glob("*.ipynb")) or \
        ".ipynb" in (REPO / ".gitignore").read_text()


@pytest.fixture(scope="module")
def quick_fits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the quick fits of one notebook wait for the next (fresh for every session)."""
    return tmp_path_factory.mktemp("notebook_fits")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, quick_fits: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNDGAP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("FUNDGAP_NOTEBOOK_FITS", str(quick_fits))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = jupytext.read(path)
    # the kernel inherits this process's environment (the quick switch above)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # a cell that raises fails the test, naming the cell
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
