"""Shrinkage of the group intercepts, as data for a plot: per county (and prefecture) and
equation, its campaign count, the posterior intercept, and the no-pooling estimate the
multilevel model pulls toward zero (the group's mean residual from the fixed part).

Counties seen once are pulled hardest; that is how the model keeps them instead of dropping
them as the study's robustness checks do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from fundgap import names
from fundgap.design import Design, group_dim
from fundgap.marginal import standardised_design, sufficient_statistics


def shrinkage_table(posterior: xr.Dataset, design: Design) -> pd.DataFrame:
    """One row per equation, group level and group: `equation, level, code, campaigns,
    intercept_mean, intercept_sd, no_pooling` (mean residual of its campaigns from the
    posterior-mean fixed part and, for counties, their prefecture's intercept).

    Computed from the per-level sums (fundgap.marginal), so a design reduced to sufficient
    statistics has it too."""
    frames = []
    for name, equation in design.equations.items():
        if not equation.groups:
            continue
        stats = sufficient_statistics(design, name)
        theta = np.concatenate([[posterior[names.alpha(name)].mean().item()],
                                posterior[names.beta_std(name)].mean(("chain", "draw")).values])
        inner_residual = stats.inner_y - stats.inner_Z @ theta   # per inner level
        inner_n = stats.inner_n
        means = {column: posterior[names.group_intercept(group_dim(column), name)].mean(
            ("chain", "draw")).values for column in equation.groups}
        sums = {equation.groups[-1]: inner_residual}
        counts = {equation.groups[-1]: inner_n}
        if len(equation.groups) > 2:   # from the rows (a reduced design has at most two)
            sums, counts = _nested_sums(design, name, theta, means)
        elif len(equation.groups) == 2:
            outer, inner = equation.groups
            # a county's raw deviation is measured within its prefecture
            sums[inner] = inner_residual - inner_n * means[outer][stats.inner_parent]
            sums[outer] = np.bincount(stats.inner_parent, weights=inner_residual,
                                      minlength=stats.n_outer)
            counts[outer] = np.bincount(stats.inner_parent, weights=inner_n,
                                        minlength=stats.n_outer)
        for column in equation.groups:
            dim = group_dim(column)
            draws = posterior[names.group_intercept(dim, name)]
            n = counts[column]
            frames.append(pd.DataFrame({
                "equation": name, "level": dim, "code": design.levels[column],
                "campaigns": n.astype(int), "intercept_mean": means[column],
                "intercept_sd": draws.std(("chain", "draw")).values,
                "no_pooling": np.where(n > 0, sums[column] / np.maximum(n, 1), np.nan)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _nested_sums(design: Design, name: str, theta: np.ndarray, means: dict[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per level of each grouping (outermost first), the sum of its campaigns' residuals
    from the fixed part and the levels above it, and its campaign count."""
    equation = design.equations[name]
    residual = equation.y - standardised_design(equation) @ theta
    sums, counts = {}, {}
    for column in equation.groups:
        index, size = design.index[column], len(design.levels[column])
        sums[column] = np.bincount(index, weights=residual, minlength=size)
        counts[column] = np.bincount(index, minlength=size).astype(float)
        residual = residual - means[column][index]
    return sums, counts
