"""Which columns group a spec's intercepts: the study's names for its code columns, any
other column by its own name, the order they are written in, and the names no grouping may
take. (How the data nest them is fundgap.design.nest_groupings.)
"""

from __future__ import annotations

# The study's group names a formula may use, and the prepared columns they stand for. Any
# other `(1|g)` names a column g of the table fitted (its levels are g's values).
GROUPS = {"county": "county_code", "prefecture": "prefecture_code",
          "province": "province_code"}


class _AnyColumn(frozenset):
    """A column set holding every name (see ANY_COLUMNS)."""

    def __contains__(self, item: object) -> bool:
        return True


# `columns` for parse_spec that checks no column: a spec read back from a fit folder was
# checked against its table when it was fitted, and that table is not at hand
ANY_COLUMNS: frozenset[str] = _AnyColumn()
# Dimension names and variable prefixes a posterior already uses (fundgap.names), so no
# grouping may take them (`intercept` would make `intercept_intercept_y` a reported name).
RESERVED_GROUP_NAMES = frozenset({"campaign", "equation", "mediator", "channel", "chain",
                                  "draw", "error_pair", "outcome", "rho", "effect",
                                  "intercept", "coefficients", "alpha", "beta_std", "signed",
                                  "error_correlation", "error_cholesky"})


def grouping_order(column: str) -> tuple:
    """A canonical order of group columns: the study's outer to inner (province, prefecture,
    county), then any other by name. Where the data nest them otherwise, the design orders
    an equation's groupings by their nesting in the table (fundgap.design.nest_groupings)."""
    study = list(GROUPS.values())
    return (0, -study.index(column), "") if column in study else (1, 0, column)


def group_column(group: str, known: set[str]) -> str:
    """The column `(1|group)` stands for: the study's code column (county -> county_code)
    where the table has it, else the column of that name (a table of one's own may call its
    counties `county`)."""
    return GROUPS[group] if group in GROUPS and (GROUPS[group] in known
                                                 or group not in known) else group


def group_problem(group: str, known: set[str]) -> str | None:
    """Why `(1|group)` cannot be a grouping, or None."""
    if group in GROUPS:
        return None
    if group in RESERVED_GROUP_NAMES or group.startswith("term_"):
        return f"{group!r} is a name the posterior already uses; rename the column"
    if group not in known:
        return (f"unknown group {group!r}: no such column in the data (the study's "
                f"groupings are {', '.join(GROUPS)}; any other names a column of the table "
                "fitted)")
    return None
