"""environment.yml agrees with pyproject.toml; the two commands are wired as documented."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement

from conftest import REPO

# conda-forge's names for packages the package index names otherwise
CONDA_NAMES = {"python-graphviz": "graphviz"}


def _normalise(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name).lower()
    return CONDA_NAMES.get(name, name)


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    parsed = (Requirement(r) for r in requirements)
    return {_normalise(r.name): str(r.specifier) for r in parsed}


def _conda_requirements() -> dict[str, str]:
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    assert environment["channels"] == ["conda-forge"]
    found = {}
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            assert entry["pip"] == ["-e ."]
            continue
        requirement = Requirement(entry)
        found[_normalise(requirement.name)] = str(requirement.specifier)
    return found


def test_environment_matches_pyproject() -> None:
    conda = _conda_requirements()
    python = conda.pop("python")
    conda.pop("pip")
    assert conda == _pyproject_requirements()
    requires_python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "requires-python"]
    assert python == requires_python


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: install", makefile, re.M)
    assert re.search(r"^demo: install", makefile, re.M)
    assert ".venv" in makefile
