"""Spec + prepared table -> the numbers a model needs: responses, design matrices, groups.

Formulas are expanded by formulae (as bambi does), so categorical controls get the same
columns in the Bayesian and the frequentist fit. Rows outside the spec's filter or missing
any variable the spec uses are dropped, and the counts are recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np
import pandas as pd
from formulae import design_matrices

from fundgap.defaults import DIMS, PRIOR_SCALES
from fundgap.errors import SpecError
from fundgap.families import family
from fundgap.groupings import GROUPS, grouping_order
from fundgap.spec import ModelSpec

# The name the frequentist side gives the intercept column it adds (formulae's own name).
INTERCEPT = "Intercept"
# the study's group columns -> the dimension of their intercepts
_STUDY_DIMS = {column: DIMS[group] for group, column in GROUPS.items()}


def group_dim(column: str) -> str:
    """The dimension of a grouping's intercepts: county for county_code (the study's), the
    column's own name for any other grouping, as written in `(1|g)`."""
    return _STUDY_DIMS.get(column, column)


def term_dim(equation: str) -> str:
    """The dimension name of an equation's coefficients."""
    return f"term_{equation}"


def level_codes(rows: pd.DataFrame, column: str) -> np.ndarray:
    """0-based codes of a group column (e.g. counties, for clustering and resampling)."""
    return pd.factorize(rows[column].astype(str))[0]


@dataclass
class EquationDesign:
    """One equation's response, fixed-effects design (no intercept column) and groups.

    A design reduced to sufficient statistics (fundgap.reduce) keeps no rows: `y` and `X`
    are empty and the moments below come from its column sums instead.
    """

    name: str
    family: str
    y: np.ndarray
    X: np.ndarray
    terms: list[str]
    groups: tuple[str, ...]
    priors: dict[str, float] = field(default_factory=dict)
    x_mean: np.ndarray | None = None
    x_sd: np.ndarray | None = None
    # response mean and sd (population), for the default priors
    y_moments: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.x_mean is None:
            self.x_mean = self.X.mean(axis=0)
        if self.x_sd is None:
            sd = self.X.std(axis=0)
            self.x_sd = np.where(sd > 0, sd, 1.0)
        if self.y_moments is None:
            self.y_moments = (float(self.y.mean()), float(self.y.std()))

    def prior_scales(self) -> np.ndarray:
        """The priors' numbers, data-scaled: [intercept location, intercept scale,
        coefficient scale, sigma scale, group sd scale] (fundgap/defaults.py, then the
        equation's own [priors])."""
        priors = {**PRIOR_SCALES, **self.priors}
        location, scale = self.link_scale()
        # spread over the terms: the linear predictor's prior sd is about coefficient_scale
        # * scale however many terms the equation has (standardised, roughly independent)
        terms = max(len(self.terms), 1)
        return np.array([location, priors["intercept_scale"] * scale,
                         priors["coefficient_scale"] * scale / np.sqrt(terms),
                         priors["sigma_scale"] * scale, priors["group_sd_scale"] * scale])

    def link_scale(self) -> tuple[float, float]:
        """Location and scale of the response on the link scale (for the default priors)."""
        return family(self.family).location_scale(self.y, self.y_moments)


@dataclass
class Design:
    """Everything a builder needs, with the coordinates of every dimension."""

    spec: ModelSpec
    table: pd.DataFrame
    equations: dict[str, EquationDesign]
    levels: dict[str, np.ndarray]        # group column -> codes (the coordinate)
    index: dict[str, np.ndarray]         # group column -> level index of each row
    dropped: dict[str, int]
    # set by fundgap.reduce: each equation's sufficient statistics, computed in chunks; the
    # design then keeps no rows (`table` holds one row per combination of group, held-out
    # group and moderator levels)
    statistics: dict | None = None
    n_rows: int | None = None
    # the correlated errors' joint statistics (fundgap.correlated.JointStatistics): set by
    # fundgap.reduce, or on first use from the rows
    joint_statistics: object | None = None
    # set by fundgap.reduce on request: an equation's per-county sums for holding out whole
    # counties and prefectures without the rows (fundgap.reduce.GroupMoments)
    group_moments: dict | None = None

    @property
    def reduced(self) -> bool:
        """Whether the rows were reduced to sufficient statistics (no per-campaign data)."""
        return self.statistics is not None

    @property
    def rows(self) -> int:
        return self.n_rows if self.reduced else len(self.table)

    @property
    def campaigns(self) -> np.ndarray:
        """The rows' ids: campaign_id where the table has one, else the row's number in the
        table given (any table may be fitted, not only the study's)."""
        if self.reduced:
            return np.zeros(0, dtype=str)
        if "campaign_id" not in self.table:
            return self.table.index.to_numpy()
        return self.table["campaign_id"].to_numpy()

    @property
    def grouping_dims(self) -> tuple[str, ...]:
        """The dimensions of every grouping's intercepts (county, prefecture, school, ...)."""
        return tuple(map(group_dim, self.levels))

    def coordinates(self) -> dict[str, list]:
        """Named coordinates of every dimension a model of this design uses."""
        coords: dict[str, list] = {"campaign": list(self.campaigns),
                                   "equation": list(self.equations)}
        for column, codes in self.levels.items():
            coords[group_dim(column)] = list(codes)
        for name, equation in self.equations.items():
            coords[term_dim(name)] = list(equation.terms)
        return coords

    def parent(self, child: str, parent: str) -> np.ndarray:
        """For each level of `child`, the index of its level of `parent` (nesting)."""
        pairs = self.table[[child, parent]].drop_duplicates(child).set_index(child)[parent]
        codes = pairs.reindex(self.levels[child]).to_numpy()
        return np.searchsorted(self.levels[parent], codes)


def group_columns(spec: ModelSpec) -> list[str]:
    """Every group column the spec's equations use, in grouping_order."""
    return sorted({g for e in spec.equations.values() for g in e.groups}, key=grouping_order)


def nest_groupings(spec: ModelSpec, index: dict[str, np.ndarray],
                   levels: dict[str, np.ndarray]) -> ModelSpec:
    """The spec with each equation's groupings ordered outer to inner as the data nest them
    (`index`: each row's level of each group column; `levels`: their codes). Two groupings
    are nested where every level of the one with more levels lies in a single level of the
    other; otherwise they are crossed, which no form here models: a SpecError names a level
    found in two."""
    equations = dict(spec.equations)
    for name, equation in spec.equations.items():
        if len(equation.groups) < 2:
            continue
        # fewer levels first (outer); ties keep the canonical order
        order = sorted(equation.groups, key=lambda c: (len(levels[c]), grouping_order(c)))
        for outer, inner in pairwise(order):
            example = _outside(index[inner], index[outer], len(levels[inner]))
            if example is not None:
                level, first, second = example
                raise SpecError(
                    f"{spec.source}: equations.{name}: the groupings {group_dim(inner)} and "
                    f"{group_dim(outer)} are crossed, not nested: {group_dim(inner)} "
                    f"{str(levels[inner][level])!r} lies in {group_dim(outer)} "
                    f"{str(levels[outer][first])!r} and {str(levels[outer][second])!r}. Crossed "
                    f"groupings are not modelled; if each {group_dim(inner)} code is unique "
                    f"only within its {group_dim(outer)}, make it unique (e.g. join the two "
                    f"codes into one column), or keep one of the two groupings")
        if tuple(order) != equation.groups:
            equations[name] = replace(equation, groups=tuple(order))
    return spec if equations == spec.equations else replace(spec, equations=equations)


def nest_in_table(spec: ModelSpec, table: pd.DataFrame) -> ModelSpec:
    """nest_groupings read from every row of `table` where the spec's canonical order may not
    be the data's (two or more groupings beyond the study's own, which are in order)."""
    study = set(GROUPS.values())
    columns = group_columns(spec)
    if all(len(e.groups) < 2 or set(e.groups) <= study for e in spec.equations.values()) \
            or not set(columns) <= set(table.columns):   # a missing column: named later
        return spec
    index, levels = _level_index(table[columns].dropna(), columns)
    return nest_groupings(spec, index, levels)


def _level_index(rows: pd.DataFrame, columns: list[str]) -> tuple[dict[str, np.ndarray],
                                                                    dict[str, np.ndarray]]:
    """Each row's level of each group column, and the columns' levels (sorted codes)."""
    index, levels = {}, {}
    for column in columns:
        index[column], uniques = pd.factorize(rows[column].astype(str), sort=True)
        levels[column] = np.asarray(uniques, dtype=str)
    return index, levels


def _outside(inner: np.ndarray, outer: np.ndarray,
             n_inner: int) -> tuple[int, int, int] | None:
    """None if every inner level's rows share one outer level, else (inner level, two of
    its outer levels)."""
    seen = np.full(n_inner, -1)
    seen[inner] = outer
    differs = np.flatnonzero(seen[inner] != outer)
    if not differs.size:
        return None
    row = differs[0]
    return int(inner[row]), int(seen[inner[row]]), int(outer[row])


def named_columns(expression: str) -> set[str]:
    """The names an expression (a row filter, a formula term) uses."""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression))


def select_rows(table: pd.DataFrame, row_filter: str | None, variables: list[str],
                source: str, allow_empty: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows passing `row_filter` (a pandas query) with every one of `variables` present,
    and how many each step dropped ("filter", "missing", and "missing <column>" for each
    column that is missing somewhere). No row left is an error, naming the columns that
    emptied the table, unless `allow_empty` (a chunk of a larger table)."""
    missing_columns = [c for c in variables if c not in table.columns]
    if missing_columns:
        raise SpecError(f"{source}: the data have no column(s) {', '.join(missing_columns)}")
    dropped = {"filter": 0, "missing": 0}
    rows = table
    if row_filter:
        try:
            rows = table.query(row_filter)
        except Exception as error:  # pandas raises many types for a bad expression
            raise SpecError(f"{source}: filter {row_filter!r} cannot be applied "
                            f"({error})") from None
        dropped["filter"] = len(table) - len(rows)
    present = rows[variables].notna()
    complete = present.all(axis=1)
    dropped["missing"] = int((~complete).sum())
    absent = (~present).sum()
    dropped.update({f"missing {c}": int(n) for c, n in absent.items() if n})
    if not complete.any() and not allow_empty:
        if rows.empty:
            raise SpecError(f"{source}: no rows left after the filter {row_filter!r} "
                            f"({len(table):,} rows before it)")
        empty = [c for c, n in absent.items() if n == len(rows)]
        why = (f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} missing in every "
               f"row" if empty else "no row has all of " + ", ".join(
                   f"{c} (missing in {n:,})" for c, n in absent.items() if n))
        raise SpecError(f"{source}: no rows left: {why} ({len(rows):,} rows"
                        f"{' after the filter' if row_filter else ''})")
    rows = rows[complete].reset_index(drop=True)
    return rows, dropped


def expand_formula(formula: str, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray,
                                                                 list[str]]:
    """A fixed-effects formula on rows -> (response, design without intercept, term names)."""
    matrices = design_matrices(formula, rows, na_action="error")
    common = matrices.common.as_dataframe()
    common = common.drop(columns=[c for c in common.columns if c == INTERCEPT])
    y = np.asarray(matrices.response.design_matrix, dtype=float).ravel()
    return y, common.to_numpy(dtype=float), list(common.columns)


def build_design(spec: ModelSpec, table: pd.DataFrame) -> Design:
    """Apply the spec's filter, drop incomplete rows, expand every formula."""
    if not spec.is_bayesian:
        raise SpecError(f"{spec.source}: declares no Bayesian equations (only frequentist "
                        "tables); use `fundgap frequentist`")
    rows, dropped = select_rows(table, spec.filter, list(spec.variables), spec.source)
    index, levels = _level_index(rows, group_columns(spec))
    spec = nest_groupings(spec, index, levels)

    equations = {}
    for name, equation in spec.equations.items():
        y, X, terms = expand_formula(equation.fixed_formula, rows)
        y = family(equation.family).prepare_response(
            y, f"{spec.source}: equations.{name} ({equation.response})")
        equations[name] = EquationDesign(name, equation.family, y, X, terms,
                                         equation.groups, dict(equation.priors))
    return Design(spec, rows, equations, levels, index, dropped)
