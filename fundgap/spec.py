"""Model specifications: a TOML file in models/ becomes a frozen, checked ModelSpec.

A spec names the exposure, the mediators and the outcome, and gives one mixed-model formula
per equation (`y ~ x + C(g) + (1|prefecture) + (1|county)`), parsed with formulae (the formula
library bambi uses). `{name}` in a formula is replaced by the snippet `name` of the [terms]
table, so a control set is written once. Every problem is collected and raised together,
each naming the file and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from formulae import model_description

from fundgap.defaults import FORMS, TARGET_ACCEPT_RANGE
from fundgap.errors import SpecError
from fundgap.families import EXACT_FAMILIES, FAMILY_NAMES, FREQUENTIST_FAMILIES
from fundgap.groupings import (
    ANY_COLUMNS,
    group_column,
    group_problem,
    grouping_order,
)
from fundgap.rules import EXTRA_COLUMNS, PREPARED_COLUMNS
from fundgap.variants import VARIANTS

PRIOR_KEYS = ("intercept_scale", "coefficient_scale", "sigma_scale", "group_sd_scale")
KNOWN_KEYS = {"name", "description", "exposure", "outcome", "mediators", "terms",
              "equations", "filter", "moderator", "frequentist", "sampler", "robustness",
              "correlated_errors"}
# Sampler settings a spec may set as its own defaults (the command line still overrides).
SAMPLER_KEYS = ("draws", "tune", "chains", "target_accept", "form")
TABLE_MODEL_KEYS = {"table", "model", "formula", "equation", "filter", "family", "cluster",
                    "rename", "posterior_effect", "variant"}


@dataclass(frozen=True)
class Equation:
    """One equation: its response, fixed-effects formula, groups, family and prior scales."""

    response: str
    formula: str
    fixed_formula: str
    variables: tuple[str, ...]
    groups: tuple[str, ...]
    family: str = "gaussian"
    priors: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TableModel:
    """One single-equation frequentist model, keyed as in published_tables.yaml.

    `table` and `model` name the published figure it reproduces (`model` may be a dotted path,
    e.g. `counties_seen_2plus.with_capacity`); `rename` maps our term names to the
    published ones where they differ.
    """

    table: str
    model: str
    formula: str
    response: str
    variables: tuple[str, ...]
    family: str = "gaussian"
    filter: str | None = None
    # the column whose levels cluster the errors; None: each row its own cluster
    cluster: str | None = "county_code"
    rename: dict[str, str] = field(default_factory=dict)
    equation: str | None = None
    # the effects.csv row (effect, mediator, moderator level) that is the Bayesian
    # counterpart of the exposure's coefficient, e.g. {effect = "total", channel = "mixed"}
    posterior_effect: dict[str, str] = field(default_factory=dict)
    # the [robustness] exposure variant whose fit is this model's Bayesian counterpart (its
    # exposure's coefficient), e.g. Table 7's model 2 -> "m2"
    variant: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A checked model specification. Equations are ordered: mediators, then the outcomes.

    `outcome` is the first (primary) outcome, the one KHB and MixedLM decompose; a spec may
    name several (`outcome = ["a", "b"]`), and effects are then reported for each.
    """

    name: str
    description: str
    exposure: str
    outcome: str
    mediators: tuple[str, ...]
    equations: dict[str, Equation]
    filter: str | None = None
    moderator: str | None = None
    source: str = ""
    text: str = ""
    tables: tuple[TableModel, ...] = ()
    khb_table: str | None = None
    sampler: dict[str, int | float | str] = field(default_factory=dict)
    outcomes: tuple[str, ...] = ()
    # [robustness]: `fundgap run` fits Table 4's variants (fundgap.robustness) with these
    # sampler settings over the spec's own, and `variants` (default all that apply); None:
    # the spec has no such table, and runs none
    robustness: dict | None = None
    # Gaussian mediator equations whose campaign-level errors are correlated (an LKJ prior;
    # fundgap.correlated); empty: every equation's errors are independent
    correlated_errors: tuple[str, ...] = ()

    @property
    def all_variables(self) -> tuple[str, ...]:
        """Every column any model of the spec uses, the frequentist table models included."""
        names = list(self.variables)
        for model in self.tables:
            names.extend([model.response, *model.variables, *filter(None, [model.cluster])])
        names.extend((self.robustness or {}).get("exposures", {}).values())
        return tuple(dict.fromkeys(names))

    @property
    def is_bayesian(self) -> bool:
        """Whether the spec declares equations for a joint Bayesian model."""
        return bool(self.equations)

    @property
    def variables(self) -> tuple[str, ...]:
        """Every prepared column the spec uses (responses, predictors, groups, moderator)."""
        names: list[str] = []
        for equation in self.equations.values():
            names.extend([equation.response, *equation.variables, *equation.groups])
        if self.moderator:
            names.append(self.moderator)
        return tuple(dict.fromkeys(names))


def _substitute(formula: str, terms: dict[str, str], where: str,
                errors: list[str]) -> str:
    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in terms:
            errors.append(f"{where}: unknown snippet {{{key}}} (define it under [terms])")
            return key
        return terms[key]

    # snippets may use snippets; a few passes resolve any sensible nesting
    for _ in range(5):
        if not re.search(r"\{\w+\}", formula):
            break
        formula = re.sub(r"\{(\w+)\}", replace, formula)
    return formula


def _parse_equation(name: str, body: object, terms: dict[str, str], known: set[str],
                    errors: list[str]) -> Equation | None:
    where = f"equations.{name}"
    if not isinstance(body, dict) or "formula" not in body:
        errors.append(f"{where}.formula: missing")
        return None
    formula = _substitute(str(body["formula"]), terms, f"{where}.formula", errors)
    try:
        description = model_description(formula)
    except Exception as error:  # formulae raises several parser error types
        errors.append(f"{where}.formula: does not parse ({error}): {formula}")
        return None
    response_vars = description.response.var_names if description.response else set()
    if response_vars != {name}:
        errors.append(f"{where}.formula: the response must be {name}, not "
                      f"{', '.join(sorted(response_vars)) or 'missing'}")
    groups, fixed_terms = [], []
    for term in description.terms:
        if type(term).__name__ == "GroupSpecificTerm":
            if type(term.expr).__name__ != "Intercept":
                errors.append(f"{where}.formula: only random intercepts (1|group) are "
                              "supported")
            group = next(iter(term.factor.var_names))
            problem = group_problem(group, known)
            if problem:
                errors.append(f"{where}.formula: {problem}")
                continue
            groups.append(group_column(group, known))
        elif type(term).__name__ != "Intercept":
            fixed_terms.append(term)
    variables = sorted(set().union(*(t.var_names for t in fixed_terms)) if fixed_terms
                       else set())
    for variable in [*variables, name]:
        if variable not in known:
            errors.append(f"{where}.formula: unknown column {variable!r}")
    family = body.get("family", "gaussian")
    if family not in FAMILY_NAMES:
        errors.append(f"{where}.family: unknown family {family!r} (use "
                      f"{', '.join(FAMILY_NAMES)})")
    priors = body.get("priors", {})
    for key, value in priors.items():
        if key not in PRIOR_KEYS:
            errors.append(f"{where}.priors.{key}: unknown (use {', '.join(PRIOR_KEYS)})")
        elif not isinstance(value, int | float) or value <= 0:
            errors.append(f"{where}.priors.{key}: must be a positive number")
    fixed = formula.split("~", 1)[1]
    fixed = re.sub(r"\+?\s*\(\s*1\s*\|\s*\w+\s*\)", "", fixed).strip().strip("+").strip()
    return Equation(response=name, formula=formula,
                    fixed_formula=f"{name} ~ {fixed or '1'}", variables=tuple(variables),
                    groups=tuple(sorted(dict.fromkeys(groups), key=grouping_order)),
                    family=family, priors=dict(priors))


def _formula_parts(formula: str, where: str, known: set[str],
                   errors: list[str]) -> tuple[str, tuple[str, ...]] | None:
    """Response and predictor columns of a fixed-effects formula, checked against `known`."""
    try:
        description = model_description(formula)
    except Exception as error:  # formulae raises several parser error types
        errors.append(f"{where}: does not parse ({error}): {formula}")
        return None
    if description.response is None:
        errors.append(f"{where}: no response: {formula}")
        return None
    response = next(iter(description.response.var_names))
    names = set().union(*(t.var_names for t in description.terms
                          if type(t).__name__ != "Intercept")) if description.terms else set()
    if any(type(t).__name__ == "GroupSpecificTerm" for t in description.terms):
        errors.append(f"{where}: a frequentist table model takes no (1|group) terms")
    for variable in sorted({response, *names}):
        if variable not in known:
            errors.append(f"{where}: unknown column {variable!r}")
    return response, tuple(sorted(names))


def _parse_tables(raw: object, terms: dict[str, str], equations: dict[str, Equation],
                  spec_filter: str | None, known: set[str],
                  errors: list[str]) -> tuple[tuple[TableModel, ...], str | None]:
    if not isinstance(raw, dict):
        errors.append("frequentist: must be a table")
        return (), None
    unknown = set(raw) - {"khb", "ols"}
    errors.extend(f"frequentist.{key}: unknown key (use khb, ols)" for key in sorted(unknown))
    models = []
    for number, body in enumerate(raw.get("ols", [])):
        where = f"frequentist.ols[{number}]"
        if not isinstance(body, dict):
            errors.append(f"{where}: must be a table")
            continue
        errors.extend(f"{where}.{key}: unknown key" for key in sorted(set(body)
                                                                       - TABLE_MODEL_KEYS))
        missing = [key for key in ("table", "model") if key not in body]
        errors.extend(f"{where}.{key}: missing" for key in missing)
        equation = body.get("equation")
        if ("formula" in body) == (equation is not None):
            errors.append(f"{where}: give exactly one of formula and equation")
            continue
        family = body.get("family", "gaussian")
        if equation is not None:
            if equation not in equations:
                errors.append(f"{where}.equation: no equation {equation!r} in this spec")
                continue
            formula, response, variables = (equations[equation].fixed_formula, equation,
                                            equations[equation].variables)
            family = equations[equation].family
        else:
            formula = _substitute(str(body["formula"]), terms, f"{where}.formula", errors)
            parts = _formula_parts(formula, f"{where}.formula", known, errors)
            if parts is None:
                continue
            response, variables = parts
        if family not in FREQUENTIST_FAMILIES:
            errors.append(f"{where}.family: the frequentist side fits "
                          f"{', '.join(FREQUENTIST_FAMILIES)}, not {family!r}")
        cluster = str(body.get("cluster", "county"))
        problem = group_problem(cluster, known)
        if problem:
            errors.append(f"{where}.cluster: {problem}")
        if missing:
            continue
        models.append(TableModel(
            table=str(body["table"]), model=str(body["model"]), formula=formula,
            response=response, variables=variables, family=family,
            filter=body.get("filter", spec_filter),
            cluster=group_column(cluster, known), rename=dict(body.get("rename", {})),
            equation=equation, posterior_effect={str(k): str(v) for k, v in
                                                 body.get("posterior_effect", {}).items()},
            variant=str(body["variant"]) if "variant" in body else None))
    keys = [(m.table, m.model) for m in models]
    errors.extend(f"frequentist.ols: {t}.{m} is declared twice"
                  for t, m in sorted({k for k in keys if keys.count(k) > 1}))
    return tuple(models), raw.get("khb")


def parse_spec(text: str, source: str = "<spec>",
               columns: set[str] | frozenset[str] | None = None) -> ModelSpec:
    """Parse TOML text into a ModelSpec; raises SpecError naming `source` and each key.
    `columns`: the columns of the table it will be fitted to; None: the study's prepared
    table's; ANY_COLUMNS: no column check."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{source}: not valid TOML: {error}") from None
    known = (columns if columns is ANY_COLUMNS else set(columns)
             if columns is not None else {*PREPARED_COLUMNS, *EXTRA_COLUMNS})
    errors: list[str] = [f"{key}: unknown key" for key in raw if key not in KNOWN_KEYS]
    # A spec may declare only frequentist tables (its Bayesian equations still to come).
    required = ("name", "exposure", "outcome", "equations") if "equations" in raw or \
        "frequentist" not in raw else ("name",)
    for key in required:
        if key not in raw:
            errors.append(f"{key}: missing")
    if errors and any(e.endswith("missing") for e in errors):
        raise SpecError(f"{source}:\n  " + "\n  ".join(errors))
    terms = {k: str(v) for k, v in raw.get("terms", {}).items()}
    if "equations" not in raw:
        tables, khb = _parse_tables(raw["frequentist"], terms, {}, raw.get("filter"), known,
                                    errors)
        if khb is not None:
            errors.append("frequentist.khb: a KHB decomposition needs the spec's equations")
        if errors:
            raise SpecError(f"{source}:\n  " + "\n  ".join(errors))
        return ModelSpec(name=str(raw["name"]), description=str(raw.get("description", "")),
                         exposure=str(raw.get("exposure", "")), outcome="", mediators=(),
                         equations={}, filter=raw.get("filter"), source=source, text=text,
                         tables=tables)
    mediators = tuple(raw.get("mediators", ()))
    exposure = raw["exposure"]
    outcomes = (raw["outcome"],) if isinstance(raw["outcome"], str) else tuple(raw["outcome"])
    if not outcomes or not all(isinstance(o, str) for o in outcomes):
        raise SpecError(f"{source}:\n  outcome: a response name or a list of them")
    equations: dict[str, Equation] = {}
    for name, body in raw["equations"].items():
        equation = _parse_equation(name, body, terms, known, errors)
        if equation is not None:
            equations[name] = equation
    for mediator in mediators:
        if mediator not in raw["equations"]:
            errors.append(f"mediators: {mediator!r} has no equation (add [equations.{mediator}])")
        if mediator in outcomes:
            errors.append(f"mediators: {mediator!r} is also an outcome")
        for outcome in outcomes:
            if outcome in equations and mediator not in equations[outcome].variables:
                errors.append(f"equations.{outcome}.formula: mediator {mediator!r} is not a "
                              "predictor of the outcome")
    for outcome in outcomes:
        if outcome not in raw["equations"]:
            errors.append(f"outcome: {outcome!r} has no equation")
    for name, equation in equations.items():
        if exposure not in equation.variables:
            errors.append(f"equations.{name}.formula: the exposure {exposure!r} is missing")
    extra = set(raw["equations"]) - {*mediators, *outcomes}
    for name in sorted(extra):
        errors.append(f"equations.{name}: neither a mediator nor an outcome")
    moderator = raw.get("moderator")
    if moderator is not None and moderator not in known:
        errors.append(f"moderator: unknown column {moderator!r}")
    tables, khb = _parse_tables(raw.get("frequentist", {}), terms, equations,
                                raw.get("filter"), known, errors)
    if khb is not None and not mediators:
        errors.append("frequentist.khb: the spec has no mediators to decompose")
    sampler = raw.get("sampler", {})
    errors += _sampler_errors("sampler", sampler)
    robustness = raw.get("robustness")
    if robustness is not None:
        errors += _robustness_errors(robustness, exposure, known)
    declared = robustness.get("exposures", {}) if isinstance(robustness, dict) else {}
    errors += [f"frequentist.ols: {m.table}.{m.model}.variant: {m.variant!r} is not one of "
               "the spec's [robustness] exposures" for m in tables
               if m.variant is not None and m.variant not in declared]
    correlated = raw.get("correlated_errors", [])
    errors += _correlated_errors(correlated, equations, mediators)
    if errors:
        raise SpecError(f"{source}:\n  " + "\n  ".join(errors))
    ordered = {name: equations[name] for name in dict.fromkeys((*mediators, *outcomes))}
    return ModelSpec(name=str(raw["name"]), description=str(raw.get("description", "")),
                     exposure=exposure, outcome=outcomes[0], outcomes=outcomes,
                     mediators=mediators,
                     equations=ordered, filter=raw.get("filter"), moderator=moderator,
                     source=source, text=text, tables=tables, khb_table=khb,
                     sampler=dict(sampler),
                     robustness=dict(robustness) if robustness is not None else None,
                     correlated_errors=tuple(correlated))


def _sampler_errors(table: str, values: dict) -> list[str]:
    """What is wrong with a table of sampler settings ([sampler], [robustness])."""
    errors = []
    for key, value in values.items():
        if key not in SAMPLER_KEYS:
            errors.append(f"{table}.{key}: unknown (use {', '.join(SAMPLER_KEYS)})")
        elif key == "target_accept":
            low, high = TARGET_ACCEPT_RANGE
            if isinstance(value, bool) or not isinstance(value, float | int) \
                    or not low <= value < high:
                errors.append(f"{table}.target_accept: must be a number in [{low}, {high:g})")
        elif key == "form":
            if value not in FORMS:
                errors.append(f"{table}.form: {value!r} is not one of {', '.join(FORMS)}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(f"{table}.{key}: must be a positive whole number")
    return errors


def _robustness_errors(values: object, exposure: str, known: set[str]) -> list[str]:
    """What is wrong with a [robustness] table: sampler settings, `exposures` (variant name
    = a column to put in the exposure's place) and `variants`."""
    if not isinstance(values, dict):
        return ["robustness: a table of sampler settings, `exposures` and `variants`"]
    errors = _sampler_errors("robustness", {k: v for k, v in values.items()
                                            if k not in ("variants", "exposures")})
    exposures = values.get("exposures", {})
    if not isinstance(exposures, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in exposures.items()):
        errors.append("robustness.exposures: a table of variant name = column")
        exposures = {}
    for name, column in exposures.items():
        where = f"robustness.exposures.{name}"
        if name in VARIANTS:
            errors.append(f"{where}: {name!r} is one of Table 4's variants; name it otherwise")
        if column not in known:
            errors.append(f"{where}: unknown column {column!r}")
        elif column == exposure:
            errors.append(f"{where}: {column!r} is the spec's own exposure")
    every = [*VARIANTS, *exposures]
    variants = values.get("variants", every)
    if not isinstance(variants, list) or not variants \
            or not all(isinstance(v, str) for v in variants):
        errors.append("robustness.variants: a list of variant names")
    else:
        errors += [f"robustness.variants: unknown variant {v!r} (use {', '.join(every)})"
                   for v in variants if v not in every]
    return errors


def _correlated_errors(values: object, equations: dict[str, Equation],
                       mediators: tuple[str, ...]) -> list[str]:
    """What is wrong with `correlated_errors`: two or more Gaussian mediator equations with
    the same groupings. The outcome is not among them: its correlation with a mediator's
    errors is what the data cannot tell (the sensitivity analysis's rho)."""
    where = "correlated_errors"
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return [f"{where}: a list of mediator equations"]
    if not values:
        return []
    errors = [f"{where}: {v!r} is not a mediator (an outcome's correlation with the "
              "mediators is the sensitivity analysis's rho, not estimable)"
              for v in values if v not in mediators]
    errors += [f"{where}: {v!r} is named twice" for v in sorted(set(values))
               if values.count(v) > 1]
    if len(set(values)) < 2:
        errors.append(f"{where}: name two or more equations")
    present = [equations[v] for v in values if v in equations and v in mediators]
    errors += [f"{where}: {e.response!r} is {e.family}; correlated errors need gaussian "
               "equations" for e in present if e.family not in EXACT_FAMILIES]
    if len({e.groups for e in present}) > 1:
        errors.append(f"{where}: the equations must have the same (1|group) terms")
    return errors


def load_spec(path: str | Path, columns: set[str] | None = None) -> ModelSpec:
    """Read and check a spec file (see parse_spec)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise SpecError(f"{path}: cannot be read ({error.strerror})") from None
    return parse_spec(text, str(path), columns)
