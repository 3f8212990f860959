"""The few exception types a user sees. The CLI turns each into one message and exit 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FundgapError(Exception):
    """Base class: an error with a message meant for the user, never a traceback."""


@dataclass(frozen=True, order=True)
class Problem:
    """One violation of the data contract, located as precisely as the input allows.

    `row` is the 1-based data row (row 1 is the first row after a CSV header), or None when
    the problem concerns a whole file or column.
    """

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}"


class DataContractError(FundgapError):
    """Raised with every problem found in a data folder, not only the first."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self, limit: int = 200) -> str:
        head = f"{len(self.problems)} problem(s) in {self.source or 'the data'}:"
        lines = [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join([head, *lines])


class SpecError(FundgapError):
    """A model specification that cannot be used; names the file and the key."""
