"""Table 4 without throwing data away: the joint model on all campaigns beside the study's
subsets and pooling variants, and a PSIS-LOO comparison of the pooling structures.

The study drops counties seen once (or twice), or moves up to prefectures, because counties
are sparse. Here every variant is the same spec with a filter or with other random
intercepts, fitted the same way, so the effects, the group sds and the out-of-sample fit can
be read side by side:

- all campaigns, county-in-prefecture intercepts (the spec as written);
- the study's subsets: counties seen at least twice / three times;
- pooling variants on all campaigns: prefecture intercepts only, county only, none;
- the spec without a control that is post-treatment for the mediators (`recommended`);
- the spec with another exposure in its place, as its [robustness] `exposures` name them
  (Table 7's models 2-5: each of the development factor's four indicators instead of it).

LOO compares the pooling variants on the outcome equation three ways (thinned draws): a
campaign held out, conditional on the drawn intercepts (counties seen once can give high
Pareto k: their counts are reported with the comparison); and, for a Gaussian outcome, a
whole county and a whole prefecture held out, their intercepts integrated out in closed form
(fundgap.grouped_loo), which is the comparison that asks how each structure predicts a
county it has not seen.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import arviz as az
import pandas as pd

from fundgap import grouped_loo, names
from fundgap.bayesian import FitResult, FitSettings, fit_design, fit_model, settings_for
from fundgap.design import Design, build_design, named_columns
from fundgap.fitfolder import SavedFit, with_intercepts
from fundgap.groupings import GROUPS
from fundgap.reduce import reduce_prepared
from fundgap.spec import ModelSpec
from fundgap.variants import DROPPED_CONTROLS, POOLING, SPEC_AS_WRITTEN, SUBSETS, VARIANTS

# variants fitted at once (threads: the sampler runs outside Python's lock)
VARIANTS_AT_ONCE = 2
# draws a variant fitted from sufficient statistics holds out whole groups with (each is a
# pass over the counties' cross-products)
STATISTICS_LOO_DRAWS = 1000


def _without_term(formula: str, column: str) -> str:
    """`formula` with every fixed term that uses `column` left out (terms are joined by +;
    a term such as C(x) or x:C(y) uses the columns named in it)."""
    response, _, right = formula.partition("~")
    kept = [t.strip() for t in right.split("+")
            if column not in named_columns(t)]
    return f"{response.strip()} ~ {' + '.join(kept) or '1'}"


def exposures(spec: ModelSpec) -> dict[str, str]:
    """The spec's exposure variants, {variant name: the column in the exposure's place}."""
    return dict((spec.robustness or {}).get("exposures", {}))


def _with_exposure(formula: str, exposure: str, column: str) -> str:
    return re.sub(rf"\b{re.escape(exposure)}\b", column, formula)


def applies(spec: ModelSpec, name: str) -> bool:
    """Whether a dropped-control variant changes the spec (it uses the control, and not as
    its exposure or moderator)."""
    column = DROPPED_CONTROLS[name]
    return (column not in (spec.exposure, spec.moderator)
            and any(column in e.variables for e in spec.equations.values()))


def variant(spec: ModelSpec, name: str) -> ModelSpec:
    """The spec restricted to a study subset, with other random intercepts, without a
    control, or with another exposure."""
    if name in exposures(spec):
        column, exposure = exposures(spec)[name], spec.exposure
        equations = {key: dataclasses.replace(
            equation, formula=_with_exposure(equation.formula, exposure, column),
            fixed_formula=_with_exposure(equation.fixed_formula, exposure, column),
            variables=tuple(sorted({column if v == exposure else v
                                    for v in equation.variables})))
            for key, equation in spec.equations.items()}
        return dataclasses.replace(spec, name=f"{spec.name}.{name}", exposure=column,
                                   equations=equations)
    if name in DROPPED_CONTROLS:
        column = DROPPED_CONTROLS[name]
        equations = {key: dataclasses.replace(
            equation, formula=_without_term(equation.formula, column),
            fixed_formula=_without_term(equation.fixed_formula, column),
            variables=tuple(v for v in equation.variables if v != column))
            for key, equation in spec.equations.items()}
        return dataclasses.replace(spec, name=f"{spec.name}.{name}", equations=equations)
    if name in SUBSETS:
        rule = SUBSETS[name]
        return dataclasses.replace(spec, name=f"{spec.name}.{name}",
                                   filter=f"({spec.filter}) and ({rule})" if spec.filter
                                   else rule)
    groups = POOLING[name]
    equations = {key: dataclasses.replace(equation, groups=groups)
                 for key, equation in spec.equations.items()}
    return dataclasses.replace(spec, name=f"{spec.name}.{name}", equations=equations)


def _interval(frame: pd.DataFrame, **keys: str) -> dict:
    for column, value in keys.items():
        frame = frame[frame[column] == value]
    if frame.empty:
        return {"mean": None, "ci_lower": None, "ci_upper": None}
    row = frame.iloc[0]
    return {"mean": row["mean"], "ci_lower": row["ci_lower"], "ci_upper": row["ci_upper"]}


def _row(name: str, fit: FitResult | SavedReference) -> dict:
    spec, summary = fit.spec, fit.summary
    county = GROUPS["county"]
    # a design reduced to statistics holds one row per group combination, not campaigns
    row = {"variant": name, "campaigns": fit.design.rows,
           "counties": (fit.design.table[county].nunique() if county in fit.design.table
                        else None),
           "passed": fit.diagnostics["passed"],
           "max_r_hat": fit.diagnostics["max_r_hat"],
           "min_ess_bulk": fit.diagnostics["min_ess_bulk"],
           "divergences": fit.diagnostics["divergences"],
           "sample_seconds": fit.diagnostics.get("sample_seconds"),
           "wall_seconds": fit.diagnostics.get("wall_seconds")}
    for effect in ("direct", "total"):
        values = _interval(fit.effects, effect=effect, mediator="")
        row.update({f"{effect}_{key}": value for key, value in values.items()})
    # the exposure's coefficient in the outcome equation (on its link scale, as the
    # published tables give it)
    row["exposure"] = spec.exposure
    row.update(_parameter(summary, f"{names.coefficients(spec.outcome)}[{spec.exposure}]",
                          "exposure_coefficient"))
    for level in ("county", "prefecture"):
        row.update(_parameter(summary, names.group_sd(level, spec.outcome), f"{level}_sd"))
    return row


def _parameter(summary: pd.DataFrame, parameter: str, prefix: str) -> dict:
    """A summary.csv parameter's mean and 95% HDI as {prefix}_mean, _ci_lower, _ci_upper
    (None where the variant has no such parameter)."""
    present = parameter in summary.index
    return {f"{prefix}_{key}": summary.loc[parameter, column] if present else None
            for key, column in (("mean", "mean"), ("ci_lower", "hdi_2.5%"),
                                ("ci_upper", "hdi_97.5%"))}


def loo_inputs(fit: FitResult | SavedReference, outcome: str) -> dict[str, az.ELPDData]:
    """A pooling variant's PSIS-LOO of the outcome per unit held out: a campaign
    (conditional on the drawn intercepts; fitted from rows only) and, for a Gaussian
    outcome, a whole county and a whole prefecture (their intercepts integrated out,
    grouped_loo; from the counties' sums where the fit was made from sufficient statistics).
    Computed as each variant finishes, so that every variant's draws are not kept until the
    comparison (benchmarks/README.md: memory at 300,000 campaigns)."""
    reduced = fit.design.reduced
    inputs = {} if reduced else {"campaign": grouped_loo.elpd(fit.idata, outcome)}
    grouped = (fit.design.group_moments or {}).get(outcome) is not None or not reduced
    if fit.design.equations[outcome].family in grouped_loo.CLOSED_FORM and grouped:
        keep = (STATISTICS_LOO_DRAWS if reduced else
                fit.idata.log_likelihood.sizes["chain"]
                * fit.idata.log_likelihood.sizes["draw"])
        for held_out in grouped_loo.HELD_OUT:
            inputs[held_out] = grouped_loo.elpd(grouped_loo.held_out_data(
                fit.idata.posterior, fit.design, outcome, held_out, keep), outcome)
    return inputs


def loo_comparison(inputs: dict[str, dict[str, az.ELPDData]]) -> pd.DataFrame:
    """ArviZ's compare of the pooling variants (name -> loo_inputs), one block per unit held
    out that every variant has; with the count of held-out units whose Pareto k exceeds
    0.7."""
    blocks = [grouped_loo.compare({name: loo[held_out] for name, loo in inputs.items()})
              .assign(held_out=held_out)
              for held_out in ("campaign", *grouped_loo.HELD_OUT)
              if all(held_out in loo for loo in inputs.values())]
    table = pd.concat(blocks, ignore_index=True)
    return table[["held_out", *[c for c in table.columns if c != "held_out"]]]


def variant_names(spec: ModelSpec) -> list[str]:
    """The variants to fit: the spec's [robustness] `variants` (default all, its exposure
    variants included), less a dropped control the spec does not use."""
    every = (*VARIANTS, *exposures(spec))
    chosen = (spec.robustness or {}).get("variants", every)
    return [name for name in every if name in chosen
            and (name not in DROPPED_CONTROLS or applies(spec, name))]


def robustness_settings(spec: ModelSpec, **overrides: object) -> FitSettings:
    """The variants' fit settings: the defaults, the spec's [sampler], its [robustness]
    sampler settings, then `overrides` that are not None (the command line's)."""
    own = {k: v for k, v in (spec.robustness or {}).items()
           if k not in ("variants", "exposures")}
    return settings_for(spec, **{**own, **{k: v for k, v in overrides.items()
                                           if v is not None}})


@dataclass
class SavedReference:
    """The spec's own fit read from its folder, as the rows and the comparison read a fit:
    it serves as the variant `county_in_prefecture` (the spec as written), so that row is
    the reported fit itself, not another run of it."""

    spec: ModelSpec
    design: Design
    diagnostics: dict
    effects: pd.DataFrame
    summary: pd.DataFrame
    idata: az.InferenceData       # posterior with the intercepts kept, and log likelihood

    @classmethod
    def read(cls, saved: SavedFit, table: pd.DataFrame,
             statistics: bool = False) -> SavedReference | None:
        """From a fit folder read with load_fit, or None where it cannot serve (fitted from
        sufficient statistics while the variants are fitted from rows: no per-campaign log
        likelihood). With `statistics` its design is the table's statistics, as the
        variants' are."""
        idata = saved.idata
        if statistics:
            return cls(saved.spec, reduce_prepared(saved.spec, table,
                                                   group_sums_of=saved.spec.outcome),
                       saved.diagnostics, saved.effects, saved.summary,
                       az.InferenceData(posterior=with_intercepts(idata)))
        if "log_likelihood" not in idata.groups():
            return None
        return cls(saved.spec, build_design(saved.spec, table), saved.diagnostics,
                   saved.effects, saved.summary,
                   az.InferenceData(posterior=with_intercepts(idata),
                                    log_likelihood=idata.log_likelihood))


def _expected_cost(spec: ModelSpec, name: str, table: pd.DataFrame) -> int:
    """A variant's cost, roughly: its campaigns times one plus its levels of intercepts."""
    rows = int(table.eval(SUBSETS[name]).sum()) if name in SUBSETS else len(table)
    return rows * (1 + len(variant(spec, name).equations[spec.outcome].groups))


def robustness(spec: ModelSpec, table: pd.DataFrame, settings: FitSettings | None = None,
               variants: list[str] | None = None,
               reference: SavedReference | None = None,
               statistics: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit each variant (default `variant_names(spec)`), `county_in_prefecture` taken from
    `reference` where given; return (effects and sds side by side, the LOO comparison of the
    pooling variants among them; empty where fewer than two). With `statistics` each variant
    is fitted from the table's sufficient statistics (fundgap.reduce; every equation
    Gaussian), as `fundgap fit` fits a large table, and compared by whole counties and
    prefectures held out."""
    # each variant compiles once, frozen: keeping an unfrozen model for reuse costs more to
    # compile than the two subsets that could reuse it would save. Two at a time: one's
    # post-processing (intercept draws, effects, summaries: one core) runs while the other
    # samples; each fit's draws are its seed's whatever runs beside it.
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    settings = settings or robustness_settings(spec)
    chosen = variants or variant_names(spec)

    def summarised(name: str, fit: FitResult | SavedReference) -> tuple[dict, dict | None]:
        # a variant's row and LOO inputs; the fit itself is let go
        return _row(name, fit), (loo_inputs(fit, spec.outcome) if name in POOLING else None)

    given = ({SPEC_AS_WRITTEN: summarised(SPEC_AS_WRITTEN, reference)}
             if reference and SPEC_AS_WRITTEN in chosen else {})
    # one progress bar, over the variants; no sensitivity curve (not shown here), and
    # per-campaign draws only where LOO compares the variant
    quiet = dataclasses.replace(settings, progress=False, sensitivity=False)
    pool = ThreadPoolExecutor(max_workers=VARIANTS_AT_ONCE)
    with tqdm(total=len(chosen), desc="variants", unit="fit",
              disable=not settings.progress) as bar:
        def fit(name: str) -> tuple[dict, dict | None]:
            chosen_settings = (quiet if name in POOLING and not statistics
                               else dataclasses.replace(quiet, per_campaign="skip"))
            if statistics:
                design = reduce_prepared(variant(spec, name), table, group_sums_of=(
                    spec.outcome if name in POOLING else None))
                result = fit_design(design, chosen_settings)
            else:
                result = fit_model(variant(spec, name), table, chosen_settings)
            bar.update()
            return summarised(name, result)

        bar.update(len(given))
        # the costliest first, so that the last to finish is a cheap one, not one left
        # running alone on the cores
        fitted = sorted((name for name in chosen if name not in given),
                        key=lambda name: -_expected_cost(spec, name, table))
        try:
            fits = {**given, **dict(zip(fitted, pool.map(fit, fitted), strict=True))}
        finally:  # an error or Ctrl-C: the variants not started are not
            pool.shutdown(wait=True, cancel_futures=True)
        fits = {name: fits[name] for name in chosen}
    side_by_side = pd.DataFrame([row for row, _ in fits.values()])
    pooled = {name: loo for name, (_, loo) in fits.items() if loo is not None}
    if len(pooled) < 2:
        return side_by_side, pd.DataFrame()
    loo = loo_comparison(pooled)
    # a variant that failed its diagnostics is marked where it is compared too
    loo["passed"] = loo["variant"].map(side_by_side.set_index("variant")["passed"])
    return side_by_side, loo
