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

from fundgap.design import GROUP_DIMS, Design


def shrinkage_table(posterior: xr.Dataset, design: Design) -> pd.DataFrame:
    """One row per equation, group level and group: `equation, level, code, campaigns,
    intercept_mean, intercept_sd, no_pooling` (mean residual of its campaigns from the
    posterior-mean fixed part and, for counties, their prefecture's intercept)."""
    frames = []
    for name, equation in design.equations.items():
        if not equation.groups:
            continue
        coefficients = posterior[f"coefficients_{name}"].mean(("chain", "draw")).values
        fixed = posterior[f"intercept_{name}"].mean().item() + equation.X @ coefficients
        residual = equation.y - fixed
        means = {}
        for column in equation.groups:
            dim = GROUP_DIMS[column]
            means[column] = posterior[f"{dim}_intercept_{name}"].mean(("chain", "draw")).values
        for position, column in enumerate(equation.groups):
            dim = GROUP_DIMS[column]
            index = design.index[column]
            adjusted = residual.copy()
            # a county's raw deviation is measured within its prefecture
            for outer in equation.groups[:position]:
                adjusted = adjusted - means[outer][design.index[outer]]
            counts = np.bincount(index, minlength=len(design.levels[column]))
            raw = np.bincount(index, weights=adjusted, minlength=len(counts)) / np.maximum(
                counts, 1)
            draws = posterior[f"{dim}_intercept_{name}"]
            frames.append(pd.DataFrame({
                "equation": name, "level": dim, "code": design.levels[column],
                "campaigns": counts, "intercept_mean": means[column],
                "intercept_sd": draws.std(("chain", "draw")).values,
                "no_pooling": np.where(counts > 0, raw, np.nan)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
