"""The study's own methods on our data, driven by the same specs as the Bayesian fits.

- OLS (logit for bernoulli responses) of every spec equation and of every table model the
  spec declares, with conventional and cluster-robust standard errors (statsmodels; the
  cluster correction is Stata's, G/(G-1)·(N-1)/(N-K)).
- The KHB decomposition of the exposure's effect through the spec's mediators (khb.py).
- MixedLM of the outcome equation (or of every Gaussian equation) with the spec's random
  intercepts (counties as a variance component within prefectures), so a reviewer sees
  what pooling alone changes.

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

from fundgap.design import (
    INTERCEPT,
    Design,
    build_design,
    expand_formula,
    level_codes,
    nest_in_table,
    select_rows,
)
from fundgap.families import FREQUENTIST_FAMILIES, family
from fundgap.khb import BOOTSTRAP_REPLICATES, BOOTSTRAP_SEED, khb_decomposition
from fundgap.spec import ModelSpec, TableModel

# Above twice this many rows, MixedLM starts from a fit on about this many (_pilot_start)
PILOT_ROWS = 30_000
PILOT_SEED = 20250
OLS_COLUMNS = ("table", "model", "term", "published_term", "estimate", "std_error",
               "cluster_std_error", "p_value", "cluster_p_value", "stars", "n", "n_clusters",
               "cluster", "adj_r2", "pseudo_r2", "method")
# the normal quantile of a 95% interval from an estimate and its standard error
Z95 = float(scipy_stats.norm.ppf(0.975))
# the `cluster` of a model whose errors are clustered by row (no grouping): robust errors
ROW_CLUSTERS = "each row"
# The study's stars (notes under Table 2): ! p<0.10, * p<0.05, ** p<0.01, *** p<0.001.
STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.10, "!"))


def stars(p_value: float) -> str:
    """The study's significance mark for a p-value ('' above 0.10 or when missing)."""
    if not np.isfinite(p_value):
        return ""
    return next((mark for bound, mark in STARS if p_value < bound), "")


def published_term(term: str, rename: dict[str, str]) -> str:
    """Our term name as published_tables.yaml spells it (`a:b` is written `a_x_b`)."""
    return rename.get(term, term).replace(":", "_x_")


# ---------------------------------------------------------------- single equations


class TooFewRows(ValueError):
    """A table model whose rows (after its filter) cannot support its coefficients."""


def fit_table_model(model: TableModel, table: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Fit one table model; one row per coefficient with both kinds of standard error."""
    rows, _ = select_rows(table, model.filter,
                          [model.response, *model.variables, *filter(None, [model.cluster])],
                          f"{source}: {model.table}.{model.model}")
    y, X, terms = expand_formula(model.formula, rows)
    exog = np.column_stack([np.ones(len(y)), X])
    clusters = level_codes(rows, model.cluster) if model.cluster else np.arange(len(rows))
    if len(y) <= 2 * exog.shape[1] or clusters.max() < 1:
        raise TooFewRows(f"{model.table}.{model.model}: skipped, {len(y)} rows in "
                         f"{clusters.max() + 1} clusters for {exog.shape[1]} coefficients")
    conventional, clustered, adj_r2, pseudo_r2 = _single_equation_fit(model, y, exog, clusters)
    k = exog.shape[1]  # NB and beta add a dispersion or precision parameter after the terms
    names = [INTERCEPT, *terms]
    return pd.DataFrame({
        "table": model.table,
        "model": model.model,
        "term": names,
        "published_term": [published_term(t, model.rename) for t in names],
        "estimate": conventional.params[:k],
        "std_error": conventional.bse[:k],
        "cluster_std_error": clustered.bse[:k],
        "p_value": conventional.pvalues[:k],
        "cluster_p_value": clustered.pvalues[:k],
        "stars": [stars(p) for p in conventional.pvalues[:k]],
        "n": len(y),
        "n_clusters": int(clusters.max() + 1),
        "cluster": model.cluster or ROW_CLUSTERS,
        "adj_r2": adj_r2,
        "pseudo_r2": pseudo_r2,
        "method": family(model.family).method,
    })


def _single_equation_fit(model: TableModel, y: np.ndarray, exog: np.ndarray,
                         clusters: np.ndarray) -> tuple[object, object, float, float]:
    """(conventional fit, county-clustered fit, adjusted R2, pseudo R2): the family's
    statsmodels counterpart (fundgap.families)."""
    record = family(model.family)
    y = record.prepare_response(y, f"{model.table}.{model.model} ({model.response})")
    return record.statsmodels(y, exog, clusters)


def table_models(spec: ModelSpec) -> list[TableModel]:
    """Every single-equation model of a spec: its equations (keyed by the spec's name and the
    equation, unless a table entry maps one to a published model; errors clustered by the
    equation's innermost grouping, or by row without one: pass a spec nested by
    fundgap.design.nest_in_table) and its table entries."""
    mapped = {m.equation for m in spec.tables if m.equation}
    implicit = [
        TableModel(table=spec.name, model=name, formula=equation.fixed_formula,
                   response=name, variables=equation.variables, family=equation.family,
                   filter=spec.filter, equation=name,
                   cluster=equation.groups[-1] if equation.groups else None)
        for name, equation in spec.equations.items()
        if name not in mapped and equation.family in FREQUENTIST_FAMILIES
    ]
    return [*implicit, *spec.tables]


def ols_table(spec: ModelSpec, table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """All of a spec's single-equation fits as one tidy table, and a note for each model
    skipped for too few rows (a study's subset can be tiny in new data)."""
    frames, notes = [], []
    for model in table_models(nest_in_table(spec, table)):
        try:
            frames.append(fit_table_model(model, table, spec.source))
        except TooFewRows as skipped:
            notes.append(str(skipped))
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=list(OLS_COLUMNS))), notes


# ---------------------------------------------------------------- multilevel


def _variance_components(outer_codes: np.ndarray, inner_codes: np.ndarray | None,
                         inner_name: str) -> VCSpec | None:
    """Counties (`inner_codes`) as a variance component within MixedLM's outer groups
    (`outer_codes`, 0..G-1); None with one grouping."""
    if inner_codes is None:
        return None
    names, matrices = [], []
    for code in range(outer_codes.max() + 1):
        members = outer_codes == code
        index, levels = pd.factorize(inner_codes[members])
        matrix = np.zeros((members.sum(), len(levels)))
        matrix[np.arange(members.sum()), index] = 1.0
        names.append([str(level) for level in levels])
        matrices.append(matrix)
    return VCSpec([inner_name], [names], [matrices])


def _mixed_lm(endog: np.ndarray, exog: np.ndarray, outer_codes: np.ndarray,
              inner_codes: np.ndarray | None, inner_name: str) -> sm.MixedLM:
    return sm.MixedLM(endog, exog, groups=outer_codes, exog_re=np.ones((len(endog), 1)),
                      exog_vc=_variance_components(outer_codes, inner_codes, inner_name))


def _pilot_start(endog: np.ndarray, exog: np.ndarray, outer_codes: np.ndarray,
                 inner_codes: np.ndarray | None, inner_name: str):
    """Start values for a large data set's REML fit: the fit on about PILOT_ROWS rows of
    whole outer groups (drawn with a fixed seed). From statsmodels' default start, L-BFGS
    can stop well short of the optimum on hundreds of thousands of rows, and takes many
    costly steps getting there (benchmarks/README.md)."""
    groups = outer_codes.max() + 1
    share = min(1.0, PILOT_ROWS / len(endog))
    chosen = np.random.default_rng(PILOT_SEED).random(groups) < share
    rows = chosen[outer_codes]
    if chosen.sum() < 10:
        return None
    codes = np.unique(outer_codes[rows], return_inverse=True)[1]
    pilot = _mixed_lm(endog[rows], exog[rows], codes,
                      None if inner_codes is None else inner_codes[rows], inner_name)
    fit = pilot.fit(reml=True, method=["lbfgs"])
    return fit.params_object if fit.converged else None


def _variances(result) -> list[float]:
    """Group variances (outer level, then the variance component) and the residual's."""
    variances = [float(np.asarray(result.cov_re).ravel()[0])]
    variances.extend(float(v) for v in np.atleast_1d(result.vcomp))
    return [*variances, float(result.scale)]


def _at_boundary(result) -> bool:
    """Whether a level's sd is estimated at under 1% of the residual sd: (near) REML's
    boundary, where the posterior, which keeps its uncertainty, can differ most."""
    variances = _variances(result)
    return min(variances[:-1]) < 1e-4 * variances[-1]


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
    levels = list(eq.groups)
    outer = design.index[levels[0]]
    inner = design.index[levels[1]] if len(levels) == 2 else None
    model = _mixed_lm(endog, exog, outer, inner, levels[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = (_pilot_start(endog, exog, outer, inner, levels[-1])
                 if len(endog) > 2 * PILOT_ROWS else None)
        fits = [model.fit(reml=True, method=["lbfgs"], start_params=start)]
        # the REML surface can have a second mode with one sd at zero, where L-BFGS may
        # stop; then a derivative-free search from the same start decides, keep the best
        if not fits[0].converged or _at_boundary(fits[0]):
            fits.append(model.fit(reml=True, method=["powell"], start_params=start))
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
    variances = _variances(result)
    variance = pd.DataFrame({
        "equation": equation,
        "term": [f"sd({name.removesuffix('_code')})" for name in levels] + ["sd(residual)"],
        "estimate": y_sd * np.sqrt(np.asarray(variances, dtype=float)),
    })
    frame = pd.concat([frame, variance], ignore_index=True)
    frame["n"] = len(eq.y)
    frame["converged"] = bool(result.converged)
    frame["on_boundary"] = _at_boundary(result)
    return frame


def mixed_table(design: Design, equations: str = "outcome",
                notes: list[str] | None = None) -> pd.DataFrame:
    """MixedLM of the Gaussian outcome equations ("outcome") or of every Gaussian equation
    ("all") that has random intercepts; "none" skips it. An equation statsmodels cannot fit
    (a singular information matrix on small data) is left out with a line in `notes`."""
    wanted = {"outcome": list(design.spec.outcomes or (design.spec.outcome,)),
              "all": list(design.equations),
              "none": []}[equations]
    frames = []
    for name in wanted:
        if design.equations[name].family != "gaussian" or not design.equations[name].groups:
            continue
        if len(design.equations[name].groups) > 2:
            if notes is not None:
                notes.append(f"MixedLM of {name} left out: it is fitted here with one "
                             "grouping or two nested ones (a variance component within the "
                             f"outer one), and {name} has {len(design.equations[name].groups)}")
            continue
        try:
            frames.append(mixed_model(design, name))
        except (np.linalg.LinAlgError, ValueError) as error:
            if notes is None:
                raise
            notes.append(f"MixedLM of {name} failed ({type(error).__name__}: {error}); "
                         "left out")
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
                    seed: int = BOOTSTRAP_SEED,
                    mixed_equations: str = "outcome") -> FrequentistResult:
    """OLS/logit of every model of the spec; KHB and MixedLM (of the outcome, of "all"
    equations, or "none") where it has equations."""
    ols, notes = ols_table(spec, table)
    result = FrequentistResult(spec, ols, notes=notes)
    if not spec.is_bayesian:
        result.notes.append("no joint equations in this spec: OLS/logit tables only")
        return result
    design = build_design(spec, table)
    if spec.moderator:
        result.notes.append(f"KHB skipped: the slopes differ by {spec.moderator}; the "
                            "study's per-channel models are in the OLS table")
    elif spec.mediators and all(e.family == "gaussian" for e in design.equations.values()):
        khb = khb_decomposition(design, replicates, seed)
        khb["p_value"] = 2 * scipy_stats.norm.sf(np.abs(khb["estimate"] / khb["std_error"]))
        khb["stars"] = khb["p_value"].map(stars)
        result.khb = khb
        result.notes.append("KHB identity total = direct + sum of indirects holds to "
                            f"{abs(result.khb.attrs['identity_gap']):.1e}")
        total = khb[khb["component"] == "total"].iloc[0]
        result.notes.append(
            "KHB total: the standard error beside the published one is the reduced model's "
            f"own ({total['reduced_model_std_error']:.4f}), as Stata's khb prints it; it "
            "treats the mediators' residuals as known, and the delta-method error that "
            f"counts them ({total['std_error']:.4f}, cluster "
            f"{total['cluster_std_error']:.4f}) is in khb.csv. Our KHB total equals the "
            "exposure's coefficient in the model without mediators on the same rows, by "
            "construction (the residualised mediators are orthogonal to the other "
            "regressors)" + ("; the study's KHB total (Table 3: 0.048) differs from its "
                             "model without mediators (Table 2 model 1: 0.057), which points "
                             "to other rows or controls in its decomposition, which it does "
                             "not report" if spec.khb_table == "table3_khb_decomposition"
                             else ""))
    elif spec.mediators:
        result.notes.append("KHB skipped: it is defined here for Gaussian equations only")
    result.mixedlm = mixed_table(design, mixed_equations, result.notes)
    return result
