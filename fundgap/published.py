"""The studies' published figures, as data: fundgap/published_tables.yaml, a copy of
../shared/spec/published_tables.yaml (the comparison tables read it; a test keeps the two
equal)."""

from __future__ import annotations

from importlib import resources


def published_tables() -> dict:
    """The published tables, keyed as in published_tables.yaml."""
    import yaml

    text = resources.files("fundgap").joinpath("published_tables.yaml").read_text("utf-8")
    return yaml.safe_load(text)
