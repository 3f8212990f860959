"""A prepared Parquet table of any size -> a Design holding sufficient statistics, no rows.

For a spec whose equations are all Gaussian, the marginalised likelihood (fundgap.marginal)
needs only per-county counts and sums of the design and the response, and the global
cross-products. They are accumulated here in one pass over the table in chunks of rows, so
memory stays bounded whatever the number of campaigns (3.4 million in the scaling
benchmark), and one gradient then costs the same for 2,057 or 3.4 million campaigns.

Two passes over the file, each chunk by chunk: the first finds the groups, the levels of the
categorical predictors and the moderator; the second expands each chunk with formulae's
design learned from a template of rows holding every level (the same columns as
`build_design` gives the whole table; one evaluation of the union of the equations' terms
serves every equation whose columns it reproduces) and adds the chunk's sums on the raw
design [1, X].
The standardised statistics then follow by an affine map, Z = [1, X] A.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from formulae import design_matrices
from scipy import sparse
from scipy.linalg import block_diag

from fundgap.correlated import JointStatistics, from_sums
from fundgap.design import (
    INTERCEPT,
    Design,
    EquationDesign,
    group_columns,
    named_columns,
    nest_groupings,
    select_rows,
)
from fundgap.errors import SpecError
from fundgap.families import EXACT_FAMILIES
from fundgap.grouped_loo import HELD_OUT
from fundgap.groupings import GROUPS
from fundgap.marginal import SufficientStatistics, size_table
from fundgap.spec import ModelSpec

CHUNK_ROWS = 250_000
# `fundgap fit --statistics auto` reduces a prepared table larger than this
REDUCE_ROWS = 200_000
# The columns a whole group's campaigns can be held out by, inner to outer
HELD_OUT_COLUMNS = tuple(GROUPS[level] for level in HELD_OUT)
# rows whose outer products are formed at once for the per-group cross-products
_OUTER_ROWS = 20_000


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file, from its metadata."""
    return pq.ParquetFile(path).metadata.num_rows


def _columns(source: Path | pd.DataFrame) -> list[str]:
    if isinstance(source, pd.DataFrame):
        return list(source.columns)
    return list(pq.ParquetFile(source).schema_arrow.names)


def _chunks(source: Path | pd.DataFrame, columns: list[str], chunk_rows: int):
    """`columns` of a Parquet file's rows, or of a table held in memory, a chunk at a time."""
    missing = [c for c in columns if c not in _columns(source)]
    if missing:
        where = "a DataFrame" if isinstance(source, pd.DataFrame) else source
        raise SpecError(f"{where}: the data have no column(s) {', '.join(missing)}")
    if isinstance(source, pd.DataFrame):
        selected = source[columns]
        for start in range(0, len(selected), chunk_rows):
            yield selected.iloc[start:start + chunk_rows]
        return
    for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows, columns=columns):
        yield batch.to_pandas()


def _filter_columns(spec: ModelSpec, available: list[str]) -> list[str]:
    """The columns a spec's row filter names (a subset's `county_campaigns`, ...)."""
    named = named_columns(spec.filter or "")
    return [c for c in available if c in named]


def _rows(chunk: pd.DataFrame, spec: ModelSpec, dropped: dict[str, int] | None
          ) -> pd.DataFrame:
    rows, counts = select_rows(chunk, spec.filter, list(spec.variables), str(spec.source),
                               allow_empty=True)
    if dropped is not None:
        for key, value in counts.items():
            dropped[key] = dropped.get(key, 0) + value
    return rows


class _Accumulator:
    """Sums of one equation's raw design [1, X] and response (or of the stacked designs and
    the responses of a block of equations: `responses` columns), overall and per county."""

    def __init__(self, columns: int, levels: int, responses: int | None = None) -> None:
        shape = () if responses is None else (responses,)
        self.n = 0
        self.XtX = np.zeros((columns, columns))
        self.Xty = np.zeros((columns, *shape))
        self.yty = np.zeros(shape * 2)
        self.inner_X = np.zeros((levels, columns))
        self.inner_y = np.zeros((levels, *shape))

    def add(self, X: np.ndarray, y: np.ndarray, membership: sparse.csr_matrix) -> None:
        self.n += len(y)
        self.XtX += X.T @ X
        self.Xty += X.T @ y
        self.yty += y.T @ y
        self.inner_X += membership @ X
        self.inner_y += membership @ y

    def joint(self, affines: list[np.ndarray], inner_n: np.ndarray, parent: np.ndarray,
              n_outer: int) -> JointStatistics:
        """A block's statistics on the stacked standardised designs, each equation's
        Z = [1, X] A_k (its own affine map)."""
        affine = block_diag(*affines)
        starts = np.concatenate([[0], np.cumsum([len(a) for a in affines])])
        return from_sums(self.n, affine.T @ self.XtX @ affine, affine.T @ self.Xty,
                         self.yty, inner_n, self.inner_X @ affine, self.inner_y, parent,
                         n_outer, starts)

    def standardised(self, inner_n: np.ndarray, parent: np.ndarray, n_outer: int
                     ) -> tuple[SufficientStatistics, np.ndarray, np.ndarray, tuple]:
        """Statistics on Z = [1, (X - mean) / sd], and the means, sds and y moments."""
        n = self.n
        mean = self.Xty[0] / n, self.XtX[0, 1:] / n
        x_mean = mean[1]
        variance = np.diag(self.XtX)[1:] / n - x_mean**2
        sd = np.sqrt(np.clip(variance, 0, None))
        x_sd = np.where(sd > 1e-12 * np.maximum(np.abs(x_mean), 1), sd, 1.0)
        affine = np.eye(len(self.Xty))
        affine[0, 1:] = -x_mean / x_sd
        affine[1:, 1:] = np.diag(1 / x_sd)
        y_mean = mean[0]
        y_sd = float(np.sqrt(max(float(self.yty) / n - y_mean**2, 0.0)))
        size_values, size_counts = size_table(inner_n)
        stats = SufficientStatistics(
            n=n, ZtZ=affine.T @ self.XtX @ affine, Zty=affine.T @ self.Xty,
            yty=float(self.yty),
            inner_n=inner_n, inner_Z=self.inner_X @ affine, inner_y=self.inner_y,
            inner_parent=parent, n_outer=n_outer, size_values=size_values,
            size_counts=size_counts)
        self.affine = affine
        return stats, x_mean, x_sd, (float(y_mean), y_sd)


@dataclass
class GroupMoments:
    """One equation's per-group sums for holding out whole groups (fundgap.grouped_loo)
    without its rows: for each level of the finest held-out column (counties), the campaigns
    `n` and, on the equation's standardised design Z = [1, X] `affine` and its response less
    `y_centre`, the sums 1'Z, 1'y, Z'Z, Z'y and y'y. `columns` are the held-out columns inner
    to outer, `levels` their codes, `parent[k]` the index of the finest level k's level of
    the next column."""

    columns: tuple[str, ...]
    levels: dict[str, np.ndarray]
    parent: np.ndarray
    n: np.ndarray
    sum_z: np.ndarray
    sum_y: np.ndarray
    zz: np.ndarray
    zy: np.ndarray
    yy: np.ndarray
    affine: np.ndarray
    y_centre: float


class _GroupMomentSums:
    """Per-level sums of [1, X], y and their cross-products, raw, accumulated by chunk."""

    def __init__(self, columns: int, levels: int) -> None:
        self.n = np.zeros(levels)
        self.sum_x = np.zeros((levels, columns))
        self.sum_y = np.zeros(levels)
        self.xx = np.zeros((levels, columns * columns))
        self.xy = np.zeros((levels, columns))
        self.yy = np.zeros(levels)

    def add(self, X: np.ndarray, y: np.ndarray, index: np.ndarray) -> None:
        levels = self.sum_x.shape[0]
        for start in range(0, len(y), _OUTER_ROWS):
            part = slice(start, start + _OUTER_ROWS)
            Xp, yp, ip = X[part], y[part], index[part]
            membership = sparse.csr_matrix((np.ones(len(ip)), (ip, np.arange(len(ip)))),
                                           shape=(levels, len(ip)))
            self.n += np.bincount(ip, minlength=levels)
            self.sum_x += membership @ Xp
            self.sum_y += membership @ yp
            self.xx += membership @ (Xp[:, :, None] * Xp[:, None, :]).reshape(len(ip), -1)
            self.xy += membership @ (Xp * yp[:, None])
            self.yy += membership @ yp**2

    def moments(self, columns: tuple[str, ...], levels: dict[str, np.ndarray],
                parent: np.ndarray, affine: np.ndarray, y_centre: float) -> GroupMoments:
        """On Z = [1, X] A and y - y_centre. The sums were added up raw, as the global
        statistics are; moved to the standardised scale here, the residual sums of squares
        grouped_loo forms from them are differences of numbers near their own size."""
        p = self.sum_x.shape[1]
        xx = self.xx.reshape(-1, p, p)
        sum_y = self.sum_y - self.n * y_centre
        xy = self.xy - y_centre * self.sum_x
        yy = self.yy - 2 * y_centre * self.sum_y + self.n * y_centre**2
        return GroupMoments(columns, levels, parent, self.n, self.sum_x @ affine, sum_y,
                            np.einsum("pi,kpq,qj->kij", affine, xx, affine), xy @ affine,
                            yy, affine, y_centre)


def _template(spec: ModelSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """A few rows holding every level of every categorical predictor."""
    categorical = [c for c in spec.variables if c in rows
                   and not pd.api.types.is_numeric_dtype(rows[c])
                   and c not in group_columns(spec)]
    if not categorical:
        return rows.head(50)
    parts = [rows.drop_duplicates(subset=[c]) for c in categorical]
    return pd.concat([rows.head(50), *parts]).drop_duplicates()


class _Expansion:
    """Each equation's columns of a chunk, from one formulae evaluation of the union of the
    equations' terms where that gives the same columns (checked on the template), else from
    the equation's own formula."""

    def __init__(self, spec: ModelSpec, template: pd.DataFrame) -> None:
        self.own = {name: design_matrices(e.fixed_formula, template, na_action="error")
                    for name, e in spec.equations.items()}
        self.columns = {name: [c for c in d.common.as_dataframe().columns if c != INTERCEPT]
                        for name, d in self.own.items()}
        terms = list(dict.fromkeys(t for d in self.own.values() for t in d.common.terms
                                   if t != INTERCEPT))
        self.union, self.from_union = None, set()
        if not terms:
            return
        try:
            # a response of its own: an equation's response may be another's predictor
            self.union = design_matrices(f"union_response_ ~ {' + '.join(terms)}",
                                         template.assign(union_response_=0.0),
                                         na_action="error")
        except Exception:  # formulae raises many types; the own formulas still work
            return
        union_frame = self.union.common.as_dataframe()
        for name, design in self.own.items():
            frame, wanted = design.common.as_dataframe(), self.columns[name]
            if set(wanted) <= set(union_frame.columns) and np.array_equal(
                    frame[wanted].to_numpy(float), union_frame[wanted].to_numpy(float)):
                self.from_union.add(name)

    def __call__(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """{equation: [1, X] of `rows`} (intercept first)."""
        out = {}
        union = (self.union.common.evaluate_new_data(rows).as_dataframe()
                 if self.from_union else None)
        for name, design in self.own.items():
            frame = (union if name in self.from_union
                     else design.common.evaluate_new_data(rows).as_dataframe())
            X = frame[self.columns[name]].to_numpy(float)
            out[name] = np.column_stack([np.ones(len(X)), X])
        return out


def reduce_prepared(spec: ModelSpec, path: str | Path | pd.DataFrame,
                    chunk_rows: int = CHUNK_ROWS, group_sums_of: str | None = None) -> Design:
    """Read a prepared Parquet table (or a table in memory) chunk by chunk into a Design of
    sufficient statistics.

    Every equation must be Gaussian (the marginalised form); the result fits like any
    design but keeps no per-campaign rows. With `group_sums_of` (an equation) the design
    also keeps that equation's per-county sums (`group_moments`, GroupMoments), from which
    fundgap.grouped_loo holds out whole counties and prefectures, where the data have the
    county and prefecture codes.
    """
    path = path if isinstance(path, pd.DataFrame) else Path(path)
    deep = [n for n, e in spec.equations.items() if len(e.groups) > 2]
    if deep:
        raise SpecError(f"{spec.source}: fitting from sufficient statistics integrates one "
                        f"grouping or two nested ones; {', '.join(deep)} has more")
    not_gaussian = [n for n, e in spec.equations.items() if e.family not in EXACT_FAMILIES]
    if not_gaussian:
        raise SpecError(f"{spec.source}: fitting from sufficient statistics needs every "
                        f"equation to be gaussian; {', '.join(not_gaussian)} is not")
    grouped = group_columns(spec)
    available = _columns(path)
    holding = (HELD_OUT_COLUMNS if group_sums_of is not None
               and all(c in available for c in HELD_OUT_COLUMNS) else ())
    kept = list(dict.fromkeys([*grouped, *holding,
                               *([spec.moderator] if spec.moderator else [])]))
    columns = sorted(set(spec.variables) | set(kept) | set(_filter_columns(spec, available)))

    # pass 1: groups, levels, a template with every categorical level
    groups, template, dropped = [], [], {}
    for chunk in _chunks(path, columns, chunk_rows):
        rows = _rows(chunk, spec, dropped)
        if rows.empty:
            continue
        groups.append(rows[kept].astype(str).drop_duplicates())
        template.append(_template(spec, rows))
    if not groups:
        where = "the table" if isinstance(path, pd.DataFrame) else path
        raise SpecError(f"{spec.source}: no rows of {where} left after the filter and "
                        "missing values")
    table = pd.concat(groups).drop_duplicates().reset_index(drop=True)
    template_rows = pd.concat(template).drop_duplicates().reset_index(drop=True)
    levels = {c: np.sort(table[c].unique()).astype(str) for c in grouped}
    held_levels = {c: np.sort(table[c].unique()).astype(str) for c in holding}
    # nesting from the distinct combinations of levels seen (a row of `table` each)
    spec = nest_groupings(spec, {c: np.searchsorted(levels[c], table[c].to_numpy())
                                 for c in grouped}, levels)
    expand = _Expansion(spec, template_rows)

    inner_column = {name: e.groups[-1] for name, e in spec.equations.items() if e.groups}
    accumulators = {name: _Accumulator(1 + len(expand.columns[name]),
                                       len(levels[inner_column[name]])
                                       if name in inner_column else 0)
                    for name in spec.equations}
    block = spec.correlated_errors
    joint = (_Accumulator(sum(accumulators[name].XtX.shape[0] for name in block),
                          accumulators[block[0]].inner_X.shape[0], len(block))
             if block else None)
    counts = {c: np.zeros(len(levels[c])) for c in grouped}
    moment_sums = (_GroupMomentSums(accumulators[group_sums_of].XtX.shape[0],
                                    len(held_levels[holding[0]])) if holding else None)
    used = 0
    # pass 2: the sums
    for chunk in _chunks(path, columns, chunk_rows):
        rows = _rows(chunk, spec, None)
        if rows.empty:
            continue
        used += len(rows)
        index = {c: np.searchsorted(levels[c], rows[c].astype(str).to_numpy())
                 for c in grouped}
        membership = {c: sparse.csr_matrix((np.ones(len(rows)), (index[c],
                                                                  np.arange(len(rows)))),
                                           shape=(len(levels[c]), len(rows)))
                      for c in grouped}
        for c in grouped:
            counts[c] += np.bincount(index[c], minlength=len(levels[c]))
        expanded = expand(rows)
        empty = sparse.csr_matrix((0, len(rows)))
        for name, equation in spec.equations.items():
            y = rows[equation.response].to_numpy(float)
            accumulators[name].add(expanded[name], y,
                                   membership.get(inner_column.get(name), empty))
        if joint is not None:
            joint.add(np.column_stack([expanded[name] for name in block]),
                      rows[list(block)].to_numpy(float),
                      membership.get(inner_column.get(block[0]), empty))
        if moment_sums is not None:
            moment_sums.add(expanded[group_sums_of], rows[spec.equations[group_sums_of].response]
                            .to_numpy(float), np.searchsorted(
                                held_levels[holding[0]], rows[holding[0]].astype(str)
                                .to_numpy()))

    design = Design(spec, table, {}, levels, {c: np.zeros(0, int) for c in levels},
                    {"filter": 0, "missing": 0, **dropped},
                    statistics={}, n_rows=used)
    for name, equation in spec.equations.items():
        groups_of = equation.groups
        nested = len(groups_of) == 2
        stats, x_mean, x_sd, moments = accumulators[name].standardised(
            counts[groups_of[-1]] if groups_of else np.zeros(0),
            design.parent(groups_of[-1], groups_of[0]) if nested else np.zeros(0, int),
            len(levels[groups_of[0]]) if nested else 0)
        design.statistics[name] = stats
        terms = expand.columns[name]
        design.equations[name] = EquationDesign(
            name, equation.family, np.zeros(0), np.zeros((0, len(terms))), terms, groups_of,
            dict(equation.priors), x_mean=x_mean, x_sd=x_sd, y_moments=moments)
    if moment_sums is not None:
        inner, outer = holding
        parent_of = table.drop_duplicates(inner).set_index(inner)[outer]
        parent = np.searchsorted(held_levels[outer],
                                 parent_of.loc[held_levels[inner]].to_numpy())
        design.group_moments = {group_sums_of: moment_sums.moments(
            holding, held_levels, parent, accumulators[group_sums_of].affine,
            design.equations[group_sums_of].y_moments[0])}
    if joint is not None:
        first = design.statistics[block[0]]
        design.joint_statistics = joint.joint(
            [accumulators[name].affine for name in block], first.inner_n,
            first.inner_parent, first.n_outer)
    return design
