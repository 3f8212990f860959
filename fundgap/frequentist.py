"""The study's own methods on our data, driven by the same specs as the Bayesian fits.

- OLS (logit for bernoulli responses) of every spec equation and of every table model the
  spec declares, with conventional and cluster-robust standard errors (statsmodels; the
  cluster correction is Stata's, G/(G-1)·(N-1)/(N-K)).
- The KHB decomposition of the exposure's effect through the spec's mediators: total (the
  reduced model with the mediators' residuals in place of the mediators), direct, and one
  indirect effect per mediator (a·b), with delta-method errors from the stacked influence
  functions of all equations (conventional and county-clustered), and seeded bootstrap
  intervals resampling counties (campaigns within a county are not independent) and, as the
  study did, campaigns.
- MixedLM of every Gaussian spec equation with the spec's random intercepts (counties as a
  variance component within prefectures), so a reviewer sees what pooling alone changes.

Design matrices come from `design.py`, so the columns are the Bayesian model's by
construction.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as scipy_stats
from statsmodels.regression.mixed_linear_model import VCSpec
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from fundgap.design import Design, build_design, expand_formula, select_rows
from fundgap.spec import ModelSpec, TableModel

# The study's stars (notes under Table 2): ! p<0.10, * p<0.05, ** p<0.01, *** p<0.001.
STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.10, "!"))
BOOTSTRAP_REPLICATES = 999
BOOTSTRAP_SEED = 20250
INTERCEPT = "Intercept"


def stars(p_value: float) -> str:
    """The study's significance mark for a p-value ('' above 0.10 or when missing)."""
    if not np.isfinite(p_value):
        return ""
    return next((mark for bound, mark in STARS if p_value < bound), "")


def published_term(term: str, rename: dict[str, str]) -> str:
    """Our term name as published_tables.yaml spells it (`a:b` is written `a_x_b`)."""
    return rename.get(term, term).replace(":", "_x_")


def _cluster_codes(rows: pd.DataFrame, column: str) -> np.ndarray:
    return pd.factorize(rows[column].astype(str))[0]


# ---------------------------------------------------------------- single equations


def fit_table_model(model: TableModel, table: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Fit one table model; one row per coefficient with both kinds of standard error."""
    rows, _ = select_rows(table, model.filter,
                          [model.response, *model.variables, model.cluster],
                          f"{source}: {model.table}.{model.model}")
    y, X, terms = expand_formula(model.formula, rows)
    exog = np.column_stack([np.ones(len(y)), X])
    clusters = _cluster_codes(rows, model.cluster)
    if model.family == "bernoulli":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            conventional = sm.Logit(y, exog).fit(disp=0)
            clustered = sm.Logit(y, exog).fit(disp=0, cov_type="cluster",
                                              cov_kwds={"groups": clusters})
        adj_r2, pseudo_r2 = np.nan, float(conventional.prsquared)
    else:
        conventional = sm.OLS(y, exog).fit()
        clustered = conventional.get_robustcov_results(cov_type="cluster", groups=clusters)
        adj_r2, pseudo_r2 = float(conventional.rsquared_adj), np.nan
    names = [INTERCEPT, *terms]
    return pd.DataFrame({
        "table": model.table,
        "model": model.model,
        "term": names,
        "published_term": [published_term(t, model.rename) for t in names],
        "estimate": conventional.params,
        "std_error": conventional.bse,
        "cluster_std_error": clustered.bse,
        "p_value": conventional.pvalues,
        "cluster_p_value": clustered.pvalues,
        "stars": [stars(p) for p in conventional.pvalues],
        "n": len(y),
        "n_clusters": int(clusters.max() + 1),
        "cluster": model.cluster,
        "adj_r2": adj_r2,
        "pseudo_r2": pseudo_r2,
        "method": "logit" if model.family == "bernoulli" else "ols",
    })


def table_models(spec: ModelSpec) -> list[TableModel]:
    """Every single-equation model of a spec: its equations (keyed by the spec's name and the
    equation, unless a table entry maps one to a published model) and its table entries."""
    mapped = {m.equation for m in spec.tables if m.equation}
    implicit = [
        TableModel(table=spec.name, model=name, formula=equation.fixed_formula,
                   response=name, variables=equation.variables, family=equation.family,
                   filter=spec.filter, equation=name)
        for name, equation in spec.equations.items()
        if name not in mapped and equation.family in ("gaussian", "bernoulli")
    ]
    return [*implicit, *spec.tables]


def ols_table(spec: ModelSpec, table: pd.DataFrame) -> pd.DataFrame:
    """All of a spec's single-equation fits as one tidy table."""
    return pd.concat([fit_table_model(m, table, spec.source) for m in table_models(spec)],
                     ignore_index=True)


# ---------------------------------------------------------------- KHB


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
    """Arrays for the KHB decomposition of a mediation spec's design."""
    spec = design.spec
    outcome = design.equations[spec.outcome]
    terms = [INTERCEPT, *outcome.terms]
    with_intercept = [np.column_stack([np.ones(len(e.y)), e.X])
                      for e in design.equations.values()]
    return KHBInputs(
        y=outcome.y,
        outcome_design=with_intercept[-1],
        mediator_columns=[terms.index(m) for m in spec.mediators],
        exposure_column=terms.index(spec.exposure),
        mediators=np.column_stack([design.equations[m].y for m in spec.mediators]),
        mediator_designs=with_intercept[:-1],
        mediator_exposure_columns=[[INTERCEPT, *design.equations[m].terms].index(
            spec.exposure) for m in spec.mediators],
        clusters=_cluster_codes(design.table, "county_code"),
    )


def _solve(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    # lstsq tolerates the rank-deficient designs a bootstrap resample can produce
    return np.linalg.lstsq(design, y, rcond=None)[0]


def khb_point(inputs: KHBInputs, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """[total, direct, indirect per mediator..., indirect sum, identity gap] on `rows`.

    total is KHB's reduced model: the outcome on its design with each mediator replaced by
    its residual from its own equation, so total and direct are on the same scale.
    """
    y, outcome = inputs.y[rows], inputs.outcome_design[rows]
    direct_coefficients = _solve(outcome, y)
    a_paths, residuals = [], []
    for k, design in enumerate(inputs.mediator_designs):
        design, mediator = design[rows], inputs.mediators[rows, k]
        coefficients = _solve(design, mediator)
        a_paths.append(coefficients[inputs.mediator_exposure_columns[k]])
        residuals.append(mediator - design @ coefficients)
    reduced = outcome.copy()
    reduced[:, inputs.mediator_columns] = np.column_stack(residuals)
    total = _solve(reduced, y)[inputs.exposure_column]
    direct = direct_coefficients[inputs.exposure_column]
    indirect = np.asarray(a_paths) * direct_coefficients[inputs.mediator_columns]
    gap = total - direct - indirect.sum()
    return np.array([total, direct, *indirect, indirect.sum(), gap])


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
    residuals = []
    for k, design in enumerate(inputs.mediator_designs):
        mediator = inputs.mediators[:, k]
        residuals.append(mediator - design @ _solve(design, mediator))
    reduced = inputs.outcome_design.copy()
    reduced[:, inputs.mediator_columns] = np.column_stack(residuals)
    return float(sm.OLS(inputs.y, reduced).fit().bse[inputs.exposure_column])


def bootstrap_khb(inputs: KHBInputs, replicates: int, seed: int,
                  by: str = "county") -> np.ndarray:
    """KHB estimates on `replicates` resamples, (replicates, M + 3); `by` is "county"
    (resample whole counties) or "campaign" (resample rows)."""
    rng = np.random.default_rng(seed)
    n = len(inputs.y)
    order = np.argsort(inputs.clusters, kind="stable")
    sizes = np.bincount(inputs.clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    draws = []
    for _ in range(replicates):
        if by == "campaign":
            rows = rng.integers(0, n, size=n)
        else:
            chosen = rng.integers(0, len(sizes), size=len(sizes))
            rows = order[np.concatenate([np.arange(starts[g], starts[g] + sizes[g])
                                         for g in chosen])]
        draws.append(khb_point(inputs, rows)[:-1])
    return np.asarray(draws)


def khb_decomposition(design: Design, replicates: int = BOOTSTRAP_REPLICATES,
                      seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """The KHB table: component, mediator, estimate, delta-method errors (conventional and
    county-clustered), bootstrap errors and 95% percentile intervals (counties and
    campaigns resampled), share of the total, and the identity gap."""
    spec = design.spec
    inputs = khb_inputs(design)
    point = khb_point(inputs)
    theta, conventional, clustered = khb_delta_covariance(inputs)
    n_mediators = len(spec.mediators)
    a, b = theta[:n_mediators], theta[n_mediators + 1:]
    direct_index = n_mediators

    def gradient(parts: list[int], direct: bool) -> np.ndarray:
        g = np.zeros(len(theta))
        for k in parts:
            g[k], g[direct_index + 1 + k] = b[k], a[k]
        g[direct_index] = 1.0 if direct else 0.0
        return g

    everything = list(range(n_mediators))
    gradients = [gradient(everything, True), gradient([], True),
                 *[gradient([k], False) for k in everything], gradient(everything, False)]
    std_error = [float(np.sqrt(g @ conventional @ g)) for g in gradients]
    cluster_std_error = [float(np.sqrt(g @ clustered @ g)) for g in gradients]
    by_county = bootstrap_khb(inputs, replicates, seed, "county")
    by_campaign = bootstrap_khb(inputs, replicates, seed + 1, "campaign")
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
    frame["p_value"] = 2 * scipy_stats.norm.sf(
        np.abs(frame["estimate"] / frame["std_error"]))
    frame["stars"] = frame["p_value"].map(stars)
    frame["n"] = len(inputs.y)
    frame["replicates"] = replicates
    frame["seed"] = seed
    frame.attrs["identity_gap"] = float(point[-1])
    return frame


# ---------------------------------------------------------------- multilevel


def _variance_components(rows: pd.DataFrame, groups: tuple[str, ...]
                         ) -> tuple[np.ndarray, VCSpec | None, list[str]]:
    """Outer groups for MixedLM, and counties as a variance component within them."""
    outer = groups[0]
    codes = pd.factorize(rows[outer].astype(str))[0]
    if len(groups) == 1:
        return codes, None, [outer]
    inner = rows[groups[1]].astype(str).to_numpy()
    names, matrices = [], []
    for code in range(codes.max() + 1):
        members = codes == code
        index, levels = pd.factorize(inner[members])
        matrix = np.zeros((members.sum(), len(levels)))
        matrix[np.arange(members.sum()), index] = 1.0
        names.append(list(levels))
        matrices.append(matrix)
    return codes, VCSpec([groups[1]], [names], [matrices]), [outer, groups[1]]


def mixed_model(design: Design, equation: str) -> pd.DataFrame:
    """REML MixedLM of one Gaussian equation with its random intercepts: coefficients with
    standard errors, then the estimated sds of each level and of the residual.

    The fit runs on centred and scaled columns (statsmodels' optimisers stall on raw scales
    as different as verifier counts and capacities in 100 yuan) and is mapped back exactly.
    """
    eq = design.equations[equation]
    x_mean, x_sd = eq.x_mean, eq.x_sd
    y_mean, y_sd = eq.y.mean(), eq.y.std() or 1.0
    exog = np.column_stack([np.ones(len(eq.y)), (eq.X - x_mean) / x_sd])
    endog = (eq.y - y_mean) / y_sd
    groups, components, levels = _variance_components(design.table, eq.groups)
    model = sm.MixedLM(endog, exog, groups=groups, exog_re=np.ones((len(eq.y), 1)),
                       exog_vc=components)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # the REML surface can have a second mode with one sd at zero, where L-BFGS may
        # stop; a derivative-free start from the same point finds the other, keep the best
        fits = [model.fit(reml=True, method=[method]) for method in ("lbfgs", "powell")]
    result = max(fits, key=lambda fit: (fit.converged, fit.llf))
    k = exog.shape[1]
    # back to the data's scale: beta = y_sd * A b + [y_mean, 0, ...]
    to_data = np.eye(k) / np.concatenate([[1.0], x_sd])
    to_data[0, 1:] = -x_mean / x_sd
    to_data *= y_sd
    estimate = to_data @ np.asarray(result.fe_params)
    estimate[0] += y_mean
    covariance = to_data @ np.asarray(result.cov_params())[:k, :k] @ to_data.T
    std_error = np.sqrt(np.diag(covariance))
    p_values = 2 * scipy_stats.norm.sf(np.abs(estimate / std_error))
    frame = pd.DataFrame({
        "equation": equation,
        "term": [INTERCEPT, *eq.terms],
        "estimate": estimate,
        "std_error": std_error,
        "p_value": p_values,
        "stars": [stars(p) for p in p_values],
    })
    variances = [np.asarray(result.cov_re).ravel()[0]]
    if components is not None:
        variances.append(result.vcomp[0])
    variances.append(result.scale)
    variance = pd.DataFrame({
        "equation": equation,
        "term": [f"sd({name.removesuffix('_code')})" for name in levels] + ["sd(residual)"],
        "estimate": y_sd * np.sqrt(np.asarray(variances, dtype=float)),
    })
    frame = pd.concat([frame, variance], ignore_index=True)
    frame["n"] = len(eq.y)
    frame["converged"] = bool(result.converged)
    # a level whose variance is estimated at (nearly) zero: REML's boundary, where the
    # posterior, which keeps its uncertainty, can differ most
    frame["on_boundary"] = bool(min(variances[:-1]) < 1e-6 * variances[-1])
    return frame


def mixed_table(design: Design) -> pd.DataFrame:
    """MixedLM of every Gaussian equation that has random intercepts."""
    frames = [mixed_model(design, name) for name, eq in design.equations.items()
              if eq.family == "gaussian" and eq.groups]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---------------------------------------------------------------- everything of a spec


@dataclass
class FrequentistResult:
    """A spec's frequentist tables (empty frames where a part does not apply)."""

    spec: ModelSpec
    ols: pd.DataFrame
    khb: pd.DataFrame = field(default_factory=pd.DataFrame)
    mixedlm: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


def run_frequentist(spec: ModelSpec, table: pd.DataFrame,
                    replicates: int = BOOTSTRAP_REPLICATES,
                    seed: int = BOOTSTRAP_SEED) -> FrequentistResult:
    """OLS/logit of every model of the spec; KHB and MixedLM where it has equations."""
    result = FrequentistResult(spec, ols_table(spec, table))
    if not spec.is_bayesian:
        result.notes.append("no joint equations in this spec: OLS/logit tables only")
        return result
    design = build_design(spec, table)
    if spec.mediators and all(e.family == "gaussian" for e in design.equations.values()):
        result.khb = khb_decomposition(design, replicates, seed)
        result.notes.append("KHB identity total = direct + sum of indirects holds to "
                            f"{abs(result.khb.attrs['identity_gap']):.1e}")
    elif spec.mediators:
        result.notes.append("KHB skipped: it is defined here for Gaussian equations only")
    result.mixedlm = mixed_table(design)
    return result
