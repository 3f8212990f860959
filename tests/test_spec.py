"""Model specifications: the shipped ones parse; each kind of broken spec gets a clear error
naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fundgap.bayesian import settings_for
from fundgap.errors import SpecError
from fundgap.spec import load_spec, parse_spec

from conftest import REPO

GOOD = """
name = "t"
exposure = "development"
mediators = ["core_capacity"]
outcome = "log_amount_raised"
[terms]
levels = "(1|prefecture) + (1|county)"
[equations.core_capacity]
formula = "core_capacity ~ development + C(age_group) + {levels}"
[equations.log_amount_raised]
formula = "log_amount_raised ~ development + core_capacity + male + {levels}"
family = "student_t"
priors = { coefficient_scale = 1.0 }
"""


@pytest.mark.parametrize("path", sorted((REPO / "models").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_parse(path: Path) -> None:
    spec = load_spec(path)
    assert spec.is_bayesian or spec.tables
    if spec.is_bayesian:
        assert spec.outcome in spec.equations
        assert list(spec.equations)[-len(spec.outcomes):] == list(spec.outcomes)


def test_regional_spec_is_the_study_model() -> None:
    spec = load_spec(REPO / "models" / "regional_mediation.toml")
    assert spec.mediators == ("core_capacity", "derived_capacity", "verifier_count",
                              "log_reposts")
    for equation in spec.equations.values():
        assert equation.groups == ("prefecture_code", "county_code")
        assert equation.family == "gaussian"
        assert {"development", "age_group", "disease_type", "sex_ratio_at_birth"} <= set(
            equation.variables)
    assert set(spec.mediators) <= set(spec.equations["log_amount_raised"].variables)


def test_good_spec() -> None:
    spec = parse_spec(GOOD, "good.toml")
    outcome = spec.equations["log_amount_raised"]
    assert outcome.family == "student_t" and outcome.priors == {"coefficient_scale": 1.0}
    assert outcome.fixed_formula == "log_amount_raised ~ development + core_capacity + male"
    assert spec.equations["core_capacity"].variables == ("age_group", "development")


@pytest.mark.parametrize(("change", "message"), [
    (("male + {levels}", "mystery + {levels}"), "equations.log_amount_raised.formula: unknown "
                                                "column 'mystery'"),
    (('family = "student_t"', 'family = "poisson_ish"'),
     "equations.log_amount_raised.family: unknown family 'poisson_ish'"),
    (('mediators = ["core_capacity"]', 'mediators = ["core_capacity", "verifier_count"]'),
     "mediators: 'verifier_count' has no equation"),
    (("C(age_group) + {levels}", "C(age_group + {levels}"), "core_capacity.formula: does not "
                                                            "parse"),
    (("{levels}\"\n[equations.log", "{nothing}\"\n[equations.log"), "unknown snippet {nothing}"),
    (("(1|prefecture) + (1|county)", "(1|village)"), "unknown group 'village'"),
    (("coefficient_scale = 1.0", "coefficient_scale = -1"), "priors.coefficient_scale: must be "
                                                            "a positive number"),
    (("development + core_capacity", "core_capacity"), "the exposure 'development' is missing"),
    (("+ core_capacity + male", "+ male"), "mediator 'core_capacity' is not a predictor"),
    (('name = "t"', 'name = "t"\nflavour = "x"'), "flavour: unknown key"),
])
def test_broken_spec_names_file_and_key(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(SpecError) as raised:
        parse_spec(GOOD.replace(old, new, 1), "broken.toml")
    text = str(raised.value)
    assert text.startswith("broken.toml")
    assert message in text


def test_missing_keys_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="outcome: missing"):
        parse_spec('name = "x"\nexposure = "development"\n[equations]', "m.toml")
    path = tmp_path / "bad.toml"
    path.write_text("name = ")
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot be read"):
        load_spec(tmp_path / "absent.toml")


TABLES = GOOD + """
[frequentist]
khb = "table3_khb_decomposition"
[[frequentist.ols]]
table = "table2_outcome_ols"
model = "m6"
equation = "log_amount_raised"
[[frequentist.ols]]
table = "table2_outcome_ols"
model = "m1"
formula = "log_amount_raised ~ development + male"
filter = "county_campaigns >= 2"
cluster = "prefecture"
rename = { male = "gender" }
"""


def test_frequentist_tables_parse() -> None:
    spec = parse_spec(TABLES, "t.toml")
    assert spec.khb_table == "table3_khb_decomposition"
    m6, m1 = spec.tables
    assert m6.formula == spec.equations["log_amount_raised"].fixed_formula
    assert m6.family == "student_t" and m6.equation == "log_amount_raised"
    assert (m1.response, m1.variables) == ("log_amount_raised", ("development", "male"))
    assert m1.cluster == "prefecture_code" and m1.filter == "county_campaigns >= 2"
    assert m1.rename == {"male": "gender"}
    assert {"county_campaigns", "prefecture_code"} - set(m1.variables) and \
        "prefecture_code" in spec.all_variables


def test_frequentist_only_spec() -> None:
    spec = parse_spec('name = "f"\n[[frequentist.ols]]\ntable = "t"\nmodel = "m"\n'
                      'formula = "recommended ~ development"\nfamily = "bernoulli"', "f.toml")
    assert not spec.is_bayesian and spec.tables[0].family == "bernoulli"


@pytest.mark.parametrize(("change", "message"), [
    (('equation = "log_amount_raised"', 'equation = "nothing"'),
     "frequentist.ols[0].equation: no equation 'nothing'"),
    (('equation = "log_amount_raised"', 'equation = "log_amount_raised"\nformula = "x ~ y"'),
     "frequentist.ols[0]: give exactly one of formula and equation"),
    (('+ male"\n', '+ mystery"\n'), "frequentist.ols[1].formula: unknown column 'mystery'"),
    (('cluster = "prefecture"', 'cluster = "village"'),
     "frequentist.ols[1].cluster: unknown group 'village'"),
    (('model = "m1"', 'model = "m6"'), "table2_outcome_ols.m6 is declared twice"),
    (('model = "m1"', 'model = "m1"\ncolour = 1'), "frequentist.ols[1].colour: unknown key"),
    (('khb = "table3', 'kbh = "table3'), "frequentist.kbh: unknown key"),
    (('rename = { male = "gender" }', 'family = "lognormal"'),
     "the frequentist side fits gaussian, student_t, poisson, negative_binomial, bernoulli, "
     "beta, censored_lognormal, not 'lognormal'"),
])
def test_broken_frequentist_section(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in TABLES
    with pytest.raises(SpecError) as raised:
        parse_spec(TABLES.replace(old, new, 1), "broken.toml")
    assert message in str(raised.value)


@pytest.mark.parametrize(("sampler", "message"), [
    ("draws = 0", "sampler.draws: must be a positive whole number"),
    ("warmup = 10", "sampler.warmup: unknown"),
    ("draws = 1.5", "sampler.draws: must be a positive whole number"),
    ("target_accept = 1.0", "sampler.target_accept: must be a number in"),
    ("target_accept = 0.2", "sampler.target_accept: must be a number in"),
    ('target_accept = "high"', "sampler.target_accept: must be a number in"),
    ('form = "inla"', "sampler.form: 'inla' is not one of auto, marginal, exact"),
])
def test_broken_sampler_table(sampler: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(GOOD + f"\n[sampler]\n{sampler}\n", "s.toml")


def test_sampler_table_sets_target_accept_under_the_command_line() -> None:
    spec = parse_spec(GOOD + "\n[sampler]\ntarget_accept = 0.95\ndraws = 200\n", "s.toml")
    assert settings_for(spec).target_accept == 0.95
    assert settings_for(spec, target_accept=0.85).target_accept == 0.85
    assert settings_for(spec, target_accept=None).draws == 200
    assert settings_for(parse_spec(GOOD, "s.toml")).target_accept == 0.8
    # a spec may pin its form; --form (None when not given) overrides it
    pinned = parse_spec(GOOD + '\n[sampler]\nform = "exact"\n', "s.toml")
    assert settings_for(pinned, form=None).form == "exact"
    assert settings_for(pinned, form="laplace").form == "laplace"
    assert settings_for(parse_spec(GOOD, "s.toml"), form=None).form == "auto"


def test_channel_spec_is_moderated_with_posterior_counterparts() -> None:
    spec = load_spec(REPO / "models" / "channel_moderation.toml")
    assert spec.moderator == "channel"
    for equation in spec.equations.values():
        assert "channel" in equation.variables and "recommended" in equation.variables
    counterparts = {m.model: m.posterior_effect for m in spec.tables}
    assert counterparts["acquaintance_only"] == {"effect": "total", "channel": "acquaintance"}
    assert counterparts["log_reposts"] == {"effect": "a", "mediator": "log_reposts",
                                           "channel": "mixed"}


def test_three_nested_groupings_are_modelled_explicitly_or_refused(small_table) -> None:
    """Province, prefecture and county intercepts: --form auto keeps them explicit (one set
    per level, each sd estimated), the integrated forms refuse them, and MixedLM says it
    leaves the equation out; never a fit whose province and prefecture sds stay at their
    priors."""
    from fundgap.bayesian import FitSettings, choose_form, fit_model
    from fundgap.design import build_design
    from fundgap.errors import FundgapError
    from fundgap.frequentist_tables import run_frequentist

    text = ('name = "three"\nexposure = "development"\noutcome = "log_amount_raised"\n'
            '[equations.log_amount_raised]\nformula = "log_amount_raised ~ development + male'
            ' + (1|province) + (1|prefecture) + (1|county)"\n')
    spec = parse_spec(text, "three.toml")
    design = build_design(spec, small_table)
    assert choose_form(design, "auto").equations == {"log_amount_raised": "explicit"}
    for form in ("marginal", "laplace"):
        with pytest.raises(FundgapError, match="3 nested groupings"):
            choose_form(design, form)
    result = fit_model(spec, small_table, FitSettings(draws=150, tune=150, chains=2,
                                                      progress=False))
    posterior = result.idata.posterior
    assert {"province_sd_log_amount_raised", "prefecture_sd_log_amount_raised",
            "county_sd_log_amount_raised", "province_intercept_log_amount_raised"} <= set(
        posterior.data_vars)
    assert result.record["equation_forms"] == {"log_amount_raised": "explicit"}
    frequentist = run_frequentist(spec, small_table, replicates=5, seed=1)
    assert frequentist.mixedlm.empty
    assert any("MixedLM of log_amount_raised left out" in n for n in frequentist.notes)


@pytest.mark.parametrize(("table", "message"), [
    ("draws = 0", "robustness.draws: must be a positive whole number"),
    ('variants = ["county_only", "by_province"]', "robustness.variants: unknown variant "
                                                   "'by_province'"),
    ("variants = []", "robustness.variants: a list of variant names"),
    ('[robustness.exposures]\nm2 = "gdp_per_head"', "robustness.exposures.m2: unknown column"),
    ('[robustness.exposures]\nm2 = "development"', "is the spec's own exposure"),
    ('[robustness.exposures]\ncounty_only = "urbanisation_rate"',
     "is one of Table 4's variants"),
    ('variants = ["m9"]\n[robustness.exposures]\nm2 = "urbanisation_rate"',
     "unknown variant 'm9'"),
])
def test_broken_robustness_table(table: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(GOOD + f"\n[robustness]\n{table}\n", "s.toml")


def test_a_table_model_names_an_exposure_variant_the_spec_declares() -> None:
    ols = ('[[frequentist.ols]]\ntable = "t7"\nmodel = "m3"\nvariant = "m3"\n'
           'formula = "log_amount_raised ~ urbanisation_rate + male"\n')
    with pytest.raises(SpecError, match="'m3' is not one of the spec's"):
        parse_spec(GOOD + ols, "s.toml")
    spec = parse_spec(GOOD + ols + '[robustness]\n[robustness.exposures]\n'
                      'm3 = "urbanisation_rate"\n', "s.toml")
    assert spec.tables[0].variant == "m3" and "urbanisation_rate" in spec.all_variables


def test_robustness_settings_sit_between_the_sampler_table_and_the_command_line() -> None:
    from fundgap.robustness import VARIANTS, robustness_settings, variant_names

    spec = parse_spec(GOOD + "\n[sampler]\ndraws = 800\ntune = 900\n"
                      '[robustness]\ntune = 300\nvariants = ["complete_pooling"]\n', "s.toml")
    settings = robustness_settings(spec, draws=None, chains=3)
    assert (settings.draws, settings.tune, settings.chains) == (800, 300, 3)
    assert variant_names(spec) == ["complete_pooling"]
    assert parse_spec(GOOD, "s.toml").robustness is None
    every = parse_spec(GOOD + "\n[robustness]\n", "s.toml")
    # the dropped control applies only where the spec uses it
    assert set(variant_names(every)) <= set(VARIANTS) and "county_only" in variant_names(every)
