"""The few exception types a user sees. The CLI turns each into one message and exit 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class FundgapError(Exception):
    """Base class: an error with a message meant for the user, never a traceback."""


@dataclass(frozen=True, order=True)
class Problem:
    """One violation of the data contract, located as precisely as the input allows.

    `row` is the 1-based data row (row 1 is the first row after a CSV header), or None when
    the problem concerns a whole file or column. `rule` is the message without this row's
    value (`value`), so that the rows one rule fails on can be reported together.
    """

    file: str
    row: int | None
    column: str | None
    message: str
    rule: str | None = field(default=None, compare=False)
    value: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return printable(f"{', '.join(where)}: {self.message}")


def printable(text: str) -> str:
    """`text` with control characters (a line break, a form feed inside a cell) escaped, so
    one problem stays one line however its value was damaged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class DataContractError(FundgapError):
    """Raised with every problem found in a data folder, not only the first."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self, limit: int = 200) -> str:
        """One line per distinct rule broken in a file's column, with how many rows break
        it and the first few (rows and values), so no rule hides behind another's rows;
        at most `limit` lines."""
        groups: dict[tuple, list[Problem]] = {}
        for problem in self.problems:
            key = (problem.file, problem.column, problem.rule or problem.message)
            groups.setdefault(key, []).append(problem)
        head = (f"{len(self.problems)} problem(s) in {self.source or 'the data'}"
                + (f", {len(groups)} distinct:" if len(groups) < len(self.problems) else ":"))
        lines = [f"  {_group_line(group)}" for group in list(groups.values())[:limit]]
        if len(groups) > limit:
            lines.append(f"  ... and {len(groups) - limit} more kinds of problem")
        return "\n".join([head, *lines])


EXAMPLES = 5  # rows shown for a rule that many rows break


def _group_line(group: list[Problem]) -> str:
    """One problem as it is; many of one rule as the rule, the count and the first rows."""
    first = group[0]
    if len(group) == 1:
        return str(first)
    where = first.file + (f", column {first.column}" if first.column is not None else "")
    shown = [p for p in group if p.row is not None][:EXAMPLES]
    if first.rule is not None:
        examples = ", ".join(f"row {p.row}: {p.value}" for p in shown)
    else:
        examples = "rows " + ", ".join(str(p.row) for p in shown)
    more = ", ..." if len(group) > len(shown) else ""
    return printable(f"{where}: {first.rule or first.message}: {len(group)} rows "
                     f"({examples}{more})")


class SpecError(FundgapError):
    """A model specification that cannot be used; names the file and the key."""
