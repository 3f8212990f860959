"""One fit, end to end: spec + data -> posterior, effects, diagnostics -> a fits/ folder.

The form is chosen here, per equation: by default ("auto") every Gaussian equation has its
intercepts integrated out exactly (fundgap.marginal), an equation of a family for which the
Laplace approximation was measured accurate has them integrated out by it (fundgap.laplace,
families in defaults.LAPLACE_AUTO), and the others are explicit (fundgap.build);
"laplace" integrates every equation that can be, "explicit" none, and "marginal" insists
that all are Gaussian. fit.json and diagnostics.json record each equation's choice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from fundgap import names
from fundgap.build import build_model
from fundgap.correlated import draw_intercepts as correlated_intercepts
from fundgap.correlated import (
    error_covariance,
    joint_statistics,
    offsets,
    ols_residual_correlation,
)
from fundgap.defaults import (
    CENTRED_MIN_CAMPAIGNS,
    FORMS,
    LAPLACE_AUTO,
    LAPLACE_FIXED_ITERATIONS,
    LAPLACE_MAX_RESIDUAL,
    LATENT_DRAWS,
    PER_CAMPAIGN_VALUES,
    PREDICTIVE_DRAWS,
    PREDICTIVE_MIN_DRAWS,
    SAMPLER,
)
from fundgap.design import Design, build_design, group_dim
from fundgap.effects import (
    contrast_draws,
    effect_draws,
    moderator_levels,
    summarise_contrasts,
    summarise_effects,
)
from fundgap.errors import FundgapError
from fundgap.families import EXACT_FAMILIES, family
from fundgap.gate import diagnose, parameter_summary
from fundgap.laplace import PREFIX as LAPLACE_PREFIX
from fundgap.laplace import draw_intercepts as laplace_intercepts
from fundgap.lkj import error_pairs
from fundgap.marginal import draw_intercepts, structure_key
from fundgap.predictive import predictive_groups
from fundgap.sampling.sample import sample
from fundgap.sensitivity import response_variance, sensitivity
from fundgap.shrinkage import shrinkage_table
from fundgap.spec import ModelSpec
from fundgap.store import frame_fingerprint, package_versions

# backends whose PyTensor compilation has no while loop (JAX): the Laplace mode is found in
# a fixed number of Newton steps there, and integrated equations are graphs, not compiled
# operations (fundgap.build's `compiled`)
FIXED_STEP_BACKENDS = ("nutpie-jax", "numpyro")
# The integrated forms (exact, Laplace) take one grouping or two nested ones; an equation
# with more (province, prefecture and county) keeps its intercepts explicit, one
# independent set per level, which with codes unique across the country is the nested model.
INTEGRATED_GROUPINGS = 2
# Explicit intercepts: non-centred (sparse groups), centred (every level data-rich), or
# "auto": centred for a grouping whose median level holds CENTRED_MIN_CAMPAIGNS or more.
CENTRINGS = ("auto", "noncentred", "centred")
# Per-campaign quantities (posterior predictive, pointwise log likelihood, observed data):
# "thinned" keeps them for about `predictive_draws` draws, "skip" leaves them out (a design
# reduced to sufficient statistics has no rows to compute them on); "auto" picks.
PER_CAMPAIGN = ("auto", "thinned", "skip")



@dataclass(frozen=True)
class FitSettings:
    """How to sample; defaults from fundgap/defaults.py."""

    draws: int = int(SAMPLER["draws"])
    tune: int = int(SAMPLER["tune"])
    chains: int = int(SAMPLER["chains"])
    seed: int = int(SAMPLER["seed"])
    backend: str = str(SAMPLER["backend"])
    target_accept: float = float(SAMPLER["target_accept"])
    form: str = "auto"
    predictive_draws: int = PREDICTIVE_DRAWS
    progress: bool = True
    full_summary: bool = False
    # keep the compiled model for later fits of the same structure in this process
    # (batches, simulation studies); a one-off fit compiles faster without. A model kept
    # earlier in the process is reused either way.
    reuse_compiled: bool = False
    per_campaign: str = "auto"
    centring: str = "auto"
    # draws of the latent intercepts kept in posterior.nc (fundgap.fitfolder); 0: all
    latent_draws: int = LATENT_DRAWS
    # the sensitivity curve (fundgap.sensitivity); robustness variants, which do not show
    # it, leave it out
    sensitivity: bool = True


def settings_for(spec: ModelSpec, **overrides: object) -> FitSettings:
    """Fit settings: the defaults, then the spec's [sampler] table, then `overrides` that
    are not None (the command line's)."""
    values = {**spec.sampler, **{k: v for k, v in overrides.items() if v is not None}}
    return FitSettings(**values)


@dataclass
class FitResult:
    """Everything one fit produced, before it is written."""

    spec: ModelSpec
    design: Design
    idata: az.InferenceData
    effects: pd.DataFrame
    summary: pd.DataFrame
    diagnostics: dict
    record: dict = field(default_factory=dict)
    contrasts: pd.DataFrame = field(default_factory=pd.DataFrame)
    shrinkage: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the indirect effects' sensitivity to mediator-outcome confounding (fundgap.sensitivity)
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity_thresholds: pd.DataFrame = field(default_factory=pd.DataFrame)

    def save(self, folder: str | Path) -> Path:
        """Write the fit folder (fundgap.fitfolder.write_fit), atomically."""
        from fundgap.fitfolder import write_fit

        return write_fit(self, folder)


@dataclass(frozen=True)
class FormChoice:
    """The form of each equation ("exact", "laplace", "explicit") and the model's label:
    "marginal" (all exact), "laplace" (all integrated, some by Laplace), "explicit" (none
    integrated) or "mixed"."""

    equations: dict[str, str]

    @property
    def label(self) -> str:
        forms = set(self.equations.values())
        if forms == {"exact"}:
            return "marginal"
        if forms == {"explicit"}:
            return "explicit"
        return "laplace" if "explicit" not in forms else "mixed"

    def named(self, form: str) -> tuple[str, ...]:
        return tuple(n for n, f in self.equations.items() if f == form)


def _laplace_applies(design: Design, name: str) -> bool:
    """Whether the Laplace form can integrate this equation's intercepts: a family that
    supports it and one grouping or two (counties nested in prefectures, as the exact form
    takes them)."""
    equation = design.equations[name]
    return ("laplace" in family(equation.family).integrated
            and 1 <= len(equation.groups) <= INTEGRATED_GROUPINGS)


def choose_form(design: Design, requested: str) -> FormChoice:
    """Each equation's form: exact for a Gaussian one (unless "explicit"), Laplace where the
    family supports it and ("auto") was measured accurate (defaults.LAPLACE_AUTO) or
    ("laplace") wherever it applies, explicit otherwise; "exact" integrates the Gaussian
    ones only. "marginal" needs every equation Gaussian."""
    if requested not in FORMS:
        raise FundgapError(f"unknown form {requested!r}: use {', '.join(FORMS)}")
    families = {n: e.family for n, e in design.equations.items()}
    if requested == "marginal" and not all(f in EXACT_FAMILIES for f in families.values()):
        raise FundgapError("the marginalised form needs every equation to be gaussian "
                           "(the default form marginalises the Gaussian ones only)")
    deep = [n for n, e in design.equations.items() if len(e.groups) > INTEGRATED_GROUPINGS]
    if deep and requested in ("marginal", "laplace"):
        raise FundgapError(
            f"{', '.join(deep)}: {len(design.equations[deep[0]].groups)} nested groupings; "
            f"the integrated forms take one or {INTEGRATED_GROUPINGS} (counties in "
            "prefectures), so these intercepts can only be explicit: use --form auto (which "
            "keeps them explicit) or explicit")
    forms = {}
    for name, family_name in families.items():
        if requested == "explicit" or name in deep:
            forms[name] = "explicit"
        elif family_name in EXACT_FAMILIES:
            forms[name] = "exact"
        elif (requested != "exact" and _laplace_applies(design, name)
              and (requested == "laplace" or family_name in LAPLACE_AUTO)):
            forms[name] = "laplace"
        else:
            forms[name] = "explicit"
    return FormChoice(forms)


def choose_centring(design: Design, requested: str) -> tuple[str, ...]:
    """The group columns (county, prefecture) whose explicit intercepts are centred."""
    if requested not in CENTRINGS:
        raise FundgapError(f"unknown centring {requested!r}: use {', '.join(CENTRINGS)}")
    columns = tuple(dict.fromkeys(c for e in design.equations.values() for c in e.groups))
    if requested != "auto":
        return columns if requested == "centred" else ()
    return tuple(c for c in columns
                 if np.median(np.bincount(design.index[c])) >= CENTRED_MIN_CAMPAIGNS)


def _level_draws(design: Design, name: str, dim: str, values: np.ndarray,
                 posterior: xr.Dataset) -> xr.DataArray:
    """(chain, draw, level) draws of one equation's intercepts as a named DataArray."""
    equation = design.equations[name]
    column = next(c for c in equation.groups if group_dim(c) == dim)
    shaped = values.reshape(posterior.sizes["chain"], posterior.sizes["draw"], -1)
    return xr.DataArray(shaped, dims=("chain", "draw", dim),
                        coords={"chain": posterior["chain"], "draw": posterior["draw"],
                                dim: design.levels[column]})


def _add_intercepts(posterior: xr.Dataset, design: Design, forms: FormChoice,
                    seed: int) -> xr.Dataset:
    """Draw the intercepts of each integrated equation from their conditional posterior
    (exact for a Gaussian one, the Laplace approximation's for the others) and drop the
    Laplace form's per-draw pieces."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    added = {}
    for name in forms.named("laplace"):
        for dim, values in laplace_intercepts(posterior, design, name, rng).items():
            added[names.group_intercept(dim, name)] = _level_draws(design, name, dim,
                                                                   values, posterior)
    posterior = posterior.drop_vars([v for v in posterior.data_vars
                                     if str(v).startswith(LAPLACE_PREFIX)])
    marginal = forms.named("exact")
    stacked = posterior.stack(sample=("chain", "draw")) if marginal else None
    correlated = [n for n in design.spec.correlated_errors if n in marginal]
    drawn = {}
    if correlated and design.equations[correlated[0]].groups:
        groups = design.equations[correlated[0]].groups
        drawn = correlated_intercepts(
            design, tuple(correlated), [_theta(stacked, name) for name in correlated],
            error_covariance(stacked, tuple(correlated)),
            _sds(stacked, correlated, groups[-1]),
            _sds(stacked, correlated, groups[0]) if len(groups) == 2 else None, rng)
    for name in marginal:
        equation = design.equations[name]
        if not equation.groups or name in correlated:
            continue
        outer = group_dim(equation.groups[0])
        inner = group_dim(equation.groups[-1])
        drawn[name] = draw_intercepts(
            design, name, _theta(stacked, name), stacked[names.sigma(name)].values,
            stacked[names.group_sd(inner, name)].values,
            stacked[names.group_sd(outer, name)].values if len(equation.groups) == 2
            else None, rng)
    for name, draws in drawn.items():
        for dim, values in draws.items():
            added[names.group_intercept(dim, name)] = _level_draws(design, name, dim,
                                                                   values, posterior)
    return posterior.assign(added)


def _theta(stacked: xr.Dataset, name: str) -> np.ndarray:
    """(draws, 1 + terms) draws of an equation's [alpha, beta_std]."""
    return np.column_stack([stacked[names.alpha(name)].values,
                            stacked[names.beta_std(name)].values.T])


def _sds(stacked: xr.Dataset, equations: list[str], column: str) -> np.ndarray:
    """(draws, equations) draws of each equation's sd of one grouping."""
    dim = group_dim(column)
    return np.column_stack([stacked[names.group_sd(dim, name)].values for name in equations])


def _laplace_search(posterior: xr.Dataset, laplace: tuple[str, ...]) -> dict:
    """How the Laplace equations' mode searches went, over every draw: the Newton steps they
    took, and the largest step (on the linear predictor's scale) left at the stopped mode;
    where that is not tiny the search ran out of steps and the gradient the sampler saw was
    not the approximation's."""
    residuals = [float(posterior[f"{LAPLACE_PREFIX}residual_{name}"].max())
                 for name in laplace]
    steps = {name: posterior[f"{LAPLACE_PREFIX}iterations_{name}"] for name in laplace}
    return {"laplace_max_residual": max(residuals, default=0.0),
            "laplace_newton_steps": {name: {"mean": round(float(s.mean()), 2),
                                            "max": int(s.max())}
                                     for name, s in steps.items()}}


def _per_campaign(design: Design, requested: str, keep: int) -> tuple[str, int]:
    """The per-campaign option in force and the draws to keep: "auto" thins to the value
    budget of fundgap/defaults.py and skips when that leaves too few draws."""
    if requested not in PER_CAMPAIGN:
        raise FundgapError(f"unknown per-campaign option {requested!r}: use "
                           f"{', '.join(PER_CAMPAIGN)}")
    if design.reduced and requested == "thinned":
        raise FundgapError("a design reduced to sufficient statistics keeps no rows: "
                           "per-campaign quantities cannot be computed (use skip)")
    if requested == "skip" or (requested == "auto" and design.reduced):
        return "skip", 0
    if requested == "thinned":
        return "thinned", keep
    affordable = PER_CAMPAIGN_VALUES // max(design.rows * len(design.equations), 1)
    if affordable < PREDICTIVE_MIN_DRAWS:
        return "skip", 0
    return "thinned", min(keep, affordable)


def _per_campaign_groups(posterior: xr.Dataset, design: Design, keep: int,
                         seed: int) -> dict[str, xr.Dataset]:
    """Posterior predictive and pointwise log likelihood for about `keep` draws, with the
    observed responses and group codes."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    predictive, loglik = predictive_groups(posterior, design, keep, rng)
    observed = xr.Dataset({name: xr.DataArray(e.y, dims="campaign",
                                              coords={"campaign": design.campaigns})
                           for name, e in design.equations.items()})
    constant = xr.Dataset({column: xr.DataArray(design.table[column].astype(str).to_numpy(),
                                                dims="campaign")
                           for column in design.levels})
    return {"posterior_predictive": predictive, "log_likelihood": loglik,
            "observed_data": observed, "constant_data": constant}


def fit_model(spec: ModelSpec, table: pd.DataFrame,
              settings: FitSettings | None = None) -> FitResult:
    """Fit a spec to a prepared table: sample, add intercepts and per-campaign draws,
    compute effects and diagnostics."""
    started = time.perf_counter()
    return fit_design(build_design(spec, table), settings, frame_fingerprint(table), started)


def fit_design(design: Design, settings: FitSettings | None = None,
               data_fingerprint: str | None = None,
               started: float | None = None) -> FitResult:
    """Fit a design (from `build_design`, or `fundgap.reduce.reduce_prepared` for data too
    large to hold): sample, add intercepts and (unless skipped) per-campaign draws, compute
    effects and diagnostics. `started` is when the wall-time clock began (default now)."""
    settings = settings or FitSettings()
    started = started if started is not None else time.perf_counter()
    spec = design.spec
    per_campaign, keep = _per_campaign(design, settings.per_campaign,
                                       settings.predictive_draws)
    forms = choose_form(design, settings.form)
    form, marginal, laplace = forms.label, forms.named("exact"), forms.named("laplace")
    if design.reduced and form != "marginal":
        raise FundgapError("a design reduced to sufficient statistics needs the "
                           "marginalised form (every equation gaussian)")
    centred = choose_centring(design, settings.centring) if form != "marginal" else ()
    iterations = (LAPLACE_FIXED_ITERATIONS
                  if laplace and settings.backend in FIXED_STEP_BACKENDS else None)
    model = build_model(design, marginal, centred, laplace, iterations,
                        compiled=settings.backend not in FIXED_STEP_BACKENDS)
    structure = (tuple(forms.equations.items()), tuple(centred), iterations,
                 spec.correlated_errors, *structure_key(design))
    result = sample(model, settings.backend, settings.draws, settings.tune, settings.chains,
                    settings.seed, settings.progress, structure,
                    data_as_inputs=form == "marginal", keep_compiled=settings.reuse_compiled,
                    target_accept=settings.target_accept)
    idata = result.idata
    # The sampler's internals (non-centred z's, nested levels, log-transformed sds) are not
    # kept: the intercepts are saved as deviations whatever the parameterisation.
    posterior = idata.posterior.drop_vars([v for v in idata.posterior.data_vars
                                           if names.is_sampler_internal(str(v),
                                                                            design.grouping_dims)])
    search = _laplace_search(posterior, laplace)   # before the per-draw pieces are dropped
    if marginal or laplace:
        posterior = _add_intercepts(posterior, design, forms, settings.seed)
    groups = (_per_campaign_groups(posterior, design, keep, settings.seed)
              if per_campaign == "thinned" else {})
    idata = az.InferenceData(posterior=posterior, sample_stats=idata.sample_stats, **groups)

    draws = effect_draws(posterior, design)
    effects = summarise_effects(draws)
    contrasts = (summarise_contrasts(contrast_draws(draws, spec.moderator))
                 if spec.moderator else pd.DataFrame())
    summary = parameter_summary(idata, design.grouping_dims, settings.full_summary)
    timing = {"compile_seconds": result.compile_seconds,
              "compile_cache": result.compile_cache,
              "sample_seconds": result.sample_seconds,
              "wall_seconds": time.perf_counter() - started}
    checked = pd.concat([effects, contrasts], ignore_index=True)
    diagnostics = diagnose(idata, checked, summary, timing)
    if laplace:
        diagnostics.update(search)
        residual = search["laplace_max_residual"]
        if not residual <= LAPLACE_MAX_RESIDUAL:
            diagnostics["passed"] = False
            diagnostics["reasons"].append(
                f"Laplace mode not reached: a Newton step of {residual:.2g} remained "
                f"(> {LAPLACE_MAX_RESIDUAL:g}) at some draw")
    diagnostics["form"] = form
    diagnostics["equation_forms"] = dict(forms.equations)
    diagnostics["marginalised"] = list(marginal)
    diagnostics["laplace"] = list(laplace)
    diagnostics["centred"] = list(centred)
    diagnostics["backend"] = settings.backend
    if result.warm_start:
        diagnostics["warm_start"] = result.warm_start
    record = {
        "spec_name": spec.name,
        "spec_source": spec.source,
        "form": form,
        "equation_forms": dict(forms.equations),
        "marginalised": list(marginal),
        "laplace": list(laplace),
        "centred": list(centred),
        "correlated_errors": list(spec.correlated_errors),
        **_ols_error_correlation(design),
        "settings": asdict(settings),
        "data_fingerprint": data_fingerprint,
        "rows_used": design.rows,
        "rows_dropped": design.dropped,
        "data_form": "sufficient statistics (chunked)" if design.reduced else "rows",
        "per_campaign": per_campaign,
        "predictive_draws_kept": (int(groups["posterior_predictive"].sizes["chain"]
                                      * groups["posterior_predictive"].sizes["draw"])
                                  if groups else 0),
        "versions": package_versions(),
    }
    # the responses' variances: the R^2 equivalents of the sensitivity thresholds, here and
    # in `fundgap sensitivity` (which has no data)
    record["response_variance"] = {name: response_variance(design, name)
                                   for name in design.equations}
    if settings.sensitivity:
        curve, limits, unsupported = sensitivity(posterior, spec, moderator_levels(design),
                                                 record["response_variance"])
        record["sensitivity"] = unsupported or "computed (sensitivity.csv)"
    else:
        curve, limits = pd.DataFrame(), pd.DataFrame()
        record["sensitivity"] = "not computed (settings.sensitivity is off)"
    idata.posterior.attrs.update({"spec": spec.name, "data_fingerprint":
                                  record["data_fingerprint"], "seed": settings.seed})
    return FitResult(spec, design, idata, effects, summary, diagnostics, record, contrasts,
                     shrinkage_table(posterior, design), curve, limits)


def _ols_error_correlation(design: Design) -> dict:
    """fit.json's frequentist figure for the error correlations: {"ols_error_correlation":
    {pair: the OLS residuals' correlation}}, or nothing without correlated errors."""
    block = design.spec.correlated_errors
    if not block:
        return {}
    matrix = ols_residual_correlation(joint_statistics(design, block), offsets(design, block))
    rows, columns = np.triu_indices(len(block), 1)
    return {"ols_error_correlation": {
        pair: float(matrix[i, j])
        for pair, i, j in zip(error_pairs(block), rows, columns, strict=True)}}


def prior_predictive(spec: ModelSpec, table: pd.DataFrame, draws: int = 500,
                     seed: int = 20250) -> az.InferenceData:
    """Prior and prior predictive draws of every equation (explicit form, which has the
    responses as random variables), to check that the default priors allow the data.

    Correlated errors are left out: each response's prior predictive is the same with them
    (an error's marginal is N(0, sigma^2) whatever the correlation), and the LKJ prior's
    unconstrained values (fundgap.correlated) cannot be drawn forward."""
    design = build_design(replace(spec, correlated_errors=()), table)
    with build_model(design):
        return pm.sample_prior_predictive(draws=draws, random_seed=seed)
