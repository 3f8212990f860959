"""The development factor: first factor of the county indicators, with KMO and Bartlett.

Extraction is statsmodels' `Factor`: by default principal-component factoring (Stata's
`factor, pcf`, SPSS's default), whose first eigenvalue over the number of indicators is the
"cumulative variance explained" the study reports (73.7%); `method="pa"` iterates principal
axes instead (communalities below one, smaller loadings). Scores are regression scores,
oriented so that higher means more developed (positive loading on mean schooling) and then
standardised to mean 0, sd 1 (n - 1) over the rows given, which are campaigns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from statsmodels.multivariate.factor import Factor
from statsmodels.stats.multivariate import test_cov_diagonal

FactorMethod = Literal["pcf", "pa"]


@dataclass(frozen=True)
class FactorDiagnostics:
    """What a reader needs to judge the factor: the study reports the same quantities."""

    indicators: list[str]
    method: str
    n_rows: int
    loadings: dict[str, float]
    variance_explained: float
    eigenvalues: list[float]
    kmo: float
    kmo_per_indicator: dict[str, float]
    bartlett_chi2: float
    bartlett_df: int
    bartlett_p: float
    orientation_flipped: bool

    def to_dict(self) -> dict:
        return asdict(self)


def kaiser_meyer_olkin(correlation: np.ndarray) -> tuple[float, np.ndarray]:
    """Overall and per-variable KMO from a correlation matrix.

    KMO compares correlations r with partial correlations q (from the inverse):
    sum r^2 / (sum r^2 + sum q^2) over off-diagonal pairs.
    """
    inverse = np.linalg.inv(correlation)
    scale = np.sqrt(np.outer(np.diag(inverse), np.diag(inverse)))
    partial = -inverse / scale
    off = ~np.eye(len(correlation), dtype=bool)
    r2 = np.where(off, correlation**2, 0.0)
    q2 = np.where(off, partial**2, 0.0)
    overall = r2.sum() / (r2.sum() + q2.sum())
    per_variable = r2.sum(axis=0) / (r2.sum(axis=0) + q2.sum(axis=0))
    return float(overall), per_variable


def development_factor(indicators: pd.DataFrame, method: FactorMethod = "pcf",
                       orient_by: str | None = None) -> tuple[pd.Series, FactorDiagnostics]:
    """First-factor scores (mean 0, sd 1 over rows) and diagnostics for indicator columns.

    `indicators` has one row per campaign (its county's averaged indicators) and no missing
    values. `orient_by` names the column whose loading must be positive (default: the first).
    """
    if indicators.isna().any().any():
        raise ValueError("development indicators must not contain missing values")
    if len(indicators) <= indicators.shape[1]:
        raise ValueError("too few rows to extract a factor")
    names = list(indicators.columns)
    values = indicators.to_numpy(dtype=float)
    correlation = np.corrcoef(values, rowvar=False)
    if method == "pcf":
        fit = Factor(values, n_factor=1, method="pa", smc=False).fit(maxiter=1)
    elif method == "pa":
        fit = Factor(values, n_factor=1, method="pa", smc=True).fit()
    else:
        raise ValueError(f"unknown factor method {method!r}: use 'pcf' or 'pa'")
    loadings = np.asarray(fit.loadings).ravel()
    anchor = names.index(orient_by) if orient_by else 0
    flipped = bool(loadings[anchor] < 0)
    sign = -1.0 if flipped else 1.0
    scores = sign * np.asarray(fit.factor_scoring(method="regression")).ravel()
    scores = (scores - scores.mean()) / scores.std(ddof=1)

    eigenvalues = np.sort(np.linalg.eigvalsh(correlation))[::-1]
    communality = float(np.sum(loadings**2))
    kmo, kmo_each = kaiser_meyer_olkin(correlation)
    bartlett = test_cov_diagonal(correlation, len(values))
    diagnostics = FactorDiagnostics(
        indicators=names,
        method=method,
        n_rows=len(values),
        loadings={n: float(sign * v) for n, v in zip(names, loadings, strict=True)},
        variance_explained=communality / len(names),
        eigenvalues=[float(e) for e in eigenvalues],
        kmo=kmo,
        kmo_per_indicator={n: float(v) for n, v in zip(names, kmo_each, strict=True)},
        bartlett_chi2=float(bartlett.statistic),
        bartlett_df=int(bartlett.df),
        bartlett_p=float(bartlett.pvalue),
        orientation_flipped=flipped,
    )
    return pd.Series(scores, index=indicators.index, name="development"), diagnostics
