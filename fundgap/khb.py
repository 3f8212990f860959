"""The KHB decomposition (Karlson, Holm and Breen) of the exposure's effect on the outcome
through the spec's mediators, for Gaussian equations.

total is KHB's reduced model (the outcome on its design with each mediator replaced by its
residual from its own equation), direct the full model's exposure coefficient, and each
indirect effect a·b; in linear models total = direct + Σ a·b exactly, and the identity gap is
kept. Standard errors: the delta method on the stacked influence functions of all equations
(conventional and county-clustered), and a seeded bootstrap resampling counties (campaigns
within a county are not independent) and, as the study did, campaigns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import sparse

from fundgap.design import INTERCEPT, Design, level_codes

BOOTSTRAP_REPLICATES = 999
BOOTSTRAP_SEED = 20250
# campaign resamples weighted into the cross-products at once, and rows per block of that
# product (memory: RESAMPLE_BLOCK x n counts, RESAMPLE_BLOCK x ROW_BLOCK in floats)
RESAMPLE_BLOCK = 200
ROW_BLOCK = 32_768


@dataclass
class KHBInputs:
    """The equations of a decomposition as arrays over the same rows."""

    y: np.ndarray                       # outcome
    outcome_design: np.ndarray          # with intercept; mediators in `mediator_columns`
    mediator_columns: list[int]
    exposure_column: int                # in the outcome design
    mediators: np.ndarray               # (n, M) mediator values
    mediator_designs: list[np.ndarray]  # each with intercept
    mediator_exposure_columns: list[int]
    clusters: np.ndarray


def khb_inputs(design: Design) -> KHBInputs:
    """Arrays for the KHB decomposition of a mediation spec's design: its primary outcome
    (`spec.outcome`) through its mediators; further outcomes take no part."""
    spec = design.spec
    outcome = design.equations[spec.outcome]
    terms = [INTERCEPT, *outcome.terms]

    def with_intercept(name: str) -> np.ndarray:
        equation = design.equations[name]
        return np.column_stack([np.ones(len(equation.y)), equation.X])

    return KHBInputs(
        y=outcome.y,
        outcome_design=with_intercept(spec.outcome),
        mediator_columns=[terms.index(m) for m in spec.mediators],
        exposure_column=terms.index(spec.exposure),
        mediators=np.column_stack([design.equations[m].y for m in spec.mediators]),
        mediator_designs=[with_intercept(m) for m in spec.mediators],
        mediator_exposure_columns=[[INTERCEPT, *design.equations[m].terms].index(
            spec.exposure) for m in spec.mediators],
        # the outcome's innermost grouping (counties in the study); each row without one
        clusters=(level_codes(design.table, outcome.groups[-1]) if outcome.groups
                  else np.arange(len(outcome.y))),
    )


def _solve(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    # lstsq tolerates the rank-deficient designs a bootstrap resample can produce
    return np.linalg.lstsq(design, y, rcond=None)[0]


def _reduced_design(inputs: KHBInputs) -> np.ndarray:
    """KHB's reduced design: each mediator column replaced by its residual from its own
    equation."""
    reduced = inputs.outcome_design.copy()
    for k, design in enumerate(inputs.mediator_designs):
        mediator = inputs.mediators[:, k]
        reduced[:, inputs.mediator_columns[k]] = mediator - design @ _solve(design, mediator)
    return reduced


def _coefficient_weights(design: np.ndarray, column: int) -> np.ndarray:
    """Row i's weight in one OLS coefficient: ((Z'Z)^-1 z_i)_column, per row."""
    return design @ np.linalg.pinv(design.T @ design)[:, column]


def khb_delta_covariance(inputs: KHBInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point values and two covariances (conventional, county-clustered) of
    θ = [a_1..a_M, direct, b_1..b_M], from the stacked influence functions of all equations.

    Conventional: Cov(θ_p, θ_q) = s_pq Σ_i w_pi w_qi with s_pq the residual covariance of
    their equations; clustered: G/(G-1)·(N-1)/(N-K) Σ_g (Σ_i∈g w_pi u_pi)(Σ_i∈g w_qi u_qi).
    """
    n = len(inputs.y)
    weights, residuals, ranks, theta = [], [], [], []
    for k, design in enumerate(inputs.mediator_designs):
        coefficients = _solve(design, inputs.mediators[:, k])
        column = inputs.mediator_exposure_columns[k]
        weights.append(_coefficient_weights(design, column))
        residuals.append(inputs.mediators[:, k] - design @ coefficients)
        ranks.append(design.shape[1])
        theta.append(coefficients[column])
    outcome = inputs.outcome_design
    coefficients = _solve(outcome, inputs.y)
    outcome_residual = inputs.y - outcome @ coefficients
    for column in [inputs.exposure_column, *inputs.mediator_columns]:
        weights.append(_coefficient_weights(outcome, column))
        residuals.append(outcome_residual)
        ranks.append(outcome.shape[1])
        theta.append(coefficients[column])
    W, U = np.column_stack(weights), np.column_stack(residuals)
    dof = np.sqrt(n - np.asarray(ranks, dtype=float))
    residual_cov = (U.T @ U) / np.outer(dof, dof)
    conventional = residual_cov * (W.T @ W)
    scores = pd.DataFrame(W * U).groupby(inputs.clusters).sum().to_numpy()
    n_clusters = scores.shape[0]
    small_sample = (n_clusters / (n_clusters - 1)) * (n - 1) / np.outer(dof, dof)
    clustered = small_sample * (scores.T @ scores)
    return np.asarray(theta), conventional, clustered


def _reduced_standard_error(inputs: KHBInputs) -> float:
    return float(sm.OLS(inputs.y, _reduced_design(inputs)).fit().bse[inputs.exposure_column])


@dataclass
class CrossProducts:
    """Every column the decomposition uses, once (`columns`, n x p), and where each
    equation's columns are among them: a resample's KHB estimates then need only the
    weighted cross-products columns' W columns (p x p), never the rows again."""

    columns: np.ndarray
    outcome: list[int]
    mediator_designs: list[list[int]]
    mediators: list[int]
    y: int


def cross_products(inputs: KHBInputs) -> CrossProducts:
    """The distinct columns of the outcome design, the mediator designs, the mediators and
    the outcome (columns equal in value are one column)."""
    columns: list[np.ndarray] = []
    seen: dict[bytes, int] = {}

    def place(column: np.ndarray) -> int:
        key = np.ascontiguousarray(column, dtype=float).tobytes()
        if key not in seen:
            seen[key] = len(columns)
            columns.append(np.asarray(column, dtype=float))
        return seen[key]

    outcome = [place(c) for c in inputs.outcome_design.T]
    designs = [[place(c) for c in design.T] for design in inputs.mediator_designs]
    mediators = [place(c) for c in inputs.mediators.T]
    y = place(inputs.y)
    return CrossProducts(np.column_stack(columns), outcome, designs, mediators, y)


def _normal_solve(gram: np.ndarray, rows: list[int], target: np.ndarray) -> np.ndarray:
    # lstsq on the normal equations: pinv(X'X) X'y = pinv(X) y, the minimum-norm solution a
    # rank-deficient resample (a category absent from it) needs, as lstsq on the rows gives
    return np.linalg.lstsq(gram[np.ix_(rows, rows)], target, rcond=None)[0]


def khb_from_cross_products(inputs: KHBInputs, parts: CrossProducts,
                            gram: np.ndarray) -> np.ndarray:
    """[total, direct, indirect per mediator..., indirect sum, identity gap] from the
    (weighted) cross-products `gram` = columns' W columns of the rows (or a resample).

    total is KHB's reduced model, so total and direct are on the same scale.
    """
    size = gram.shape[0]
    direct_coefficients = _normal_solve(gram, parts.outcome, gram[parts.outcome, parts.y])
    # the reduced design as a map of the columns: R = columns @ transform
    transform = np.zeros((size, len(parts.outcome)))
    transform[parts.outcome, np.arange(len(parts.outcome))] = 1.0
    a_paths = []
    for k, design in enumerate(parts.mediator_designs):
        mediator = parts.mediators[k]
        coefficients = _normal_solve(gram, design, gram[design, mediator])
        a_paths.append(coefficients[inputs.mediator_exposure_columns[k]])
        residual = np.zeros(size)
        residual[mediator] += 1.0
        np.subtract.at(residual, design, coefficients)
        transform[:, inputs.mediator_columns[k]] = residual
    reduced_gram = transform.T @ gram @ transform
    total = np.linalg.lstsq(reduced_gram, transform.T @ gram[:, parts.y],
                            rcond=None)[0][inputs.exposure_column]
    direct = direct_coefficients[inputs.exposure_column]
    indirect = np.asarray(a_paths) * direct_coefficients[inputs.mediator_columns]
    gap = total - direct - indirect.sum()
    return np.array([total, direct, *indirect, indirect.sum(), gap])


def bootstrap_khb(inputs: KHBInputs, replicates: int, seed: int, by: str = "county",
                  parts: CrossProducts | None = None) -> np.ndarray:
    """KHB estimates on `replicates` resamples, (replicates, M + 3); `by` is "county"
    (resample whole counties) or "campaign" (resample rows).

    A resample is a count per county (or per campaign) of the times it was drawn, and its
    estimates follow from the cross-products weighted by those counts: per-county
    cross-products are summed once, so a county resample costs O(counties), not O(rows).
    """
    rng = np.random.default_rng(seed)
    parts = parts or cross_products(inputs)
    columns = parts.columns
    n = len(inputs.y)
    draws = []
    if by == "campaign":
        # a block of resamples at a time: their counts times the rows' pairwise products,
        # one matrix product (a resample's cross-products alone are a pass over every row)
        for start in range(0, replicates, RESAMPLE_BLOCK):
            # (a campaign drawn over 65,535 times in n draws of 1/n: probability < 1e-100000)
            counts = np.empty((min(RESAMPLE_BLOCK, replicates - start), n), np.uint16)
            for resample in counts:
                resample[:] = np.bincount(rng.integers(0, n, size=n), minlength=n)
            draws.extend(khb_from_cross_products(inputs, parts, gram)[:-1]
                         for gram in weighted_cross_products(columns, counts))
        return np.asarray(draws)
    n_clusters = int(inputs.clusters.max()) + 1
    membership = sparse.csr_matrix((np.ones(n), (inputs.clusters, np.arange(n))),
                                   shape=(n_clusters, n))
    per_county = np.stack([membership @ (columns * columns[:, [j]])
                           for j in range(columns.shape[1])], axis=1)
    for _ in range(replicates):
        chosen = np.bincount(rng.integers(0, n_clusters, size=n_clusters),
                             minlength=n_clusters).astype(float)
        gram = np.tensordot(chosen, per_county, axes=1)
        draws.append(khb_from_cross_products(inputs, parts, gram)[:-1])
    return np.asarray(draws)


def weighted_cross_products(columns: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each resample's cross-products Σ_i counts[r, i] x_i x_i' of the rows x_i of
    `columns` (n, k), from `counts` (R, n): (R, k, k). The upper triangle of every row's
    x_i x_i' is formed a block of rows at a time, and the counts multiply it in one matrix
    product per block."""
    size = columns.shape[1]
    upper, lower = np.triu_indices(size)
    packed = np.zeros((len(counts), len(upper)))
    for start in range(0, len(columns), ROW_BLOCK):
        block = columns[start:start + ROW_BLOCK]
        packed += counts[:, start:start + ROW_BLOCK].astype(float) @ (
            block[:, upper] * block[:, lower])
    grams = np.empty((len(counts), size, size))
    grams[:, upper, lower] = packed
    grams[:, lower, upper] = packed
    return grams


def khb_decomposition(design: Design, replicates: int = BOOTSTRAP_REPLICATES,
                      seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """The KHB table: component, mediator, estimate, delta-method errors (conventional and
    county-clustered), bootstrap errors and 95% percentile intervals (counties and
    campaigns resampled), share of the total, and the identity gap."""
    spec = design.spec
    inputs = khb_inputs(design)
    parts = cross_products(inputs)
    point = khb_from_cross_products(inputs, parts, parts.columns.T @ parts.columns)
    theta, conventional, clustered = khb_delta_covariance(inputs)
    n_mediators = len(spec.mediators)
    a, b = theta[:n_mediators], theta[n_mediators + 1:]
    direct_index = n_mediators

    def gradient(included: list[int], direct: bool) -> np.ndarray:
        g = np.zeros(len(theta))
        for k in included:
            g[k], g[direct_index + 1 + k] = b[k], a[k]
        g[direct_index] = 1.0 if direct else 0.0
        return g

    everything = list(range(n_mediators))
    gradients = [gradient(everything, True), gradient([], True),
                 *[gradient([k], False) for k in everything], gradient(everything, False)]
    std_error = [float(np.sqrt(g @ conventional @ g)) for g in gradients]
    cluster_std_error = [float(np.sqrt(g @ clustered @ g)) for g in gradients]
    by_county = bootstrap_khb(inputs, replicates, seed, "county", parts)
    by_campaign = bootstrap_khb(inputs, replicates, seed + 1, "campaign", parts)
    components = ["total", "direct", *["indirect"] * n_mediators, "indirect_total"]
    mediators = ["", "", *spec.mediators, ""]
    estimates = point[:-1]
    frame = pd.DataFrame({
        "component": components,
        "mediator": mediators,
        "estimate": estimates,
        "std_error": std_error,
        "cluster_std_error": cluster_std_error,
        "bootstrap_std_error": by_county.std(axis=0, ddof=1),
        "bootstrap_ci_lower": np.quantile(by_county, 0.025, axis=0),
        "bootstrap_ci_upper": np.quantile(by_county, 0.975, axis=0),
        "campaign_bootstrap_std_error": by_campaign.std(axis=0, ddof=1),
        "campaign_bootstrap_ci_lower": np.quantile(by_campaign, 0.025, axis=0),
        "campaign_bootstrap_ci_upper": np.quantile(by_campaign, 0.975, axis=0),
        "share": estimates / estimates[0],
        # what Stata's khb prints for the total: the reduced model's own standard error,
        # which treats the mediators' residuals as fixed and so understates it
        "reduced_model_std_error": [_reduced_standard_error(inputs), *[np.nan] * (
            n_mediators + 2)],
    })
    frame["n"] = len(inputs.y)
    frame["replicates"] = replicates
    frame["seed"] = seed
    frame.attrs["identity_gap"] = float(point[-1])
    return frame
