"""Defaults as data: prior scales, sampler settings, the diagnostic gate, dimension names.

Priors are weakly informative and scaled to the data, in one place (a spec may override the
scales per equation under [equations.X.priors]). Predictors are standardised inside the
model, so with s_y the response's scale on the link scale (its sd for gaussian, student_t and
lognormal (of log y); 1 for negative_binomial and bernoulli), m_y its location and K the
number of terms:
  intercept at the predictors' means ~ Normal(m_y, intercept_scale * s_y)
  coefficient per sd of a predictor   ~ Normal(0, coefficient_scale * s_y / sqrt(K))
  residual sd                         ~ HalfNormal(sigma_scale * s_y)
  county and prefecture sds           ~ HalfNormal(group_sd_scale * s_y)
  student_t degrees of freedom        ~ Gamma(2, 0.1)
  negative_binomial dispersion       ~ Exponential(1)
The coefficients' scale is spread over the terms so that the linear predictor's prior sd is
about coefficient_scale * s_y whatever K is: with one scale per coefficient, an equation of
25 terms put its responses' prior predictive some 40 s_y wide (benchmarks/README.md, "The
default priors"), where the data span a few s_y.
Reported coefficients are converted back to the predictors' own units.
"""

from __future__ import annotations

PRIOR_SCALES: dict[str, float] = {
    "intercept_scale": 1.0,
    "coefficient_scale": 2.5,
    "sigma_scale": 1.0,
    "group_sd_scale": 0.5,
}

# nutpie with numba (the default) or JAX (for a GPU), PyMC's own NUTS, numpyro (JAX)
BACKENDS = ("nutpie", "nutpie-jax", "pymc", "numpyro")

SAMPLER: dict[str, object] = {
    "draws": 1000,
    "tune": 1000,
    "chains": 4,
    "seed": 20250,
    "backend": "nutpie",
    # the step size's target acceptance rate (NUTS's usual 0.8); a spec whose funnel
    # diverges at 0.8 sets a higher one in its [sampler] table
    "target_accept": 0.8,
}
# what a spec or the command line may set it to: from, and up to (not including)
TARGET_ACCEPT_RANGE = (0.5, 1.0)

# A fit passes only with no divergence, R-hat <= 1.01, bulk and tail ESS >= 400 on every
# reported quantity (effects, coefficients, intercepts, residual and group sds) and E-BFMI
# >= 0.3 in every chain; hits of the maximum tree depth are reported as warnings.
GATE: dict[str, float] = {"max_divergences": 0, "max_r_hat": 1.01, "min_ess_bulk": 400,
                          # the 95% intervals' ends are tail quantiles (Vehtari et al. 2021)
                          "min_ess_tail": 400,
                          # E-BFMI below 0.3 (Betancourt): the energy is not explored
                          "min_bfmi": 0.3}

# Per-campaign draws (posterior predictive, pointwise log likelihood) are kept for this many
# draws, thinned evenly over the chains; the posterior itself is kept whole.
PREDICTIVE_DRAWS = 500
# ...but at most this many values in all (campaigns x equations x draws, about 400 MB in
# float64 per group), so a large data set keeps fewer draws, and none below
# PREDICTIVE_MIN_DRAWS: then per-campaign quantities are skipped (and the fit records it).
PER_CAMPAIGN_VALUES = 50_000_000
PREDICTIVE_MIN_DRAWS = 20
# The latent county and prefecture intercepts are saved (posterior.nc) for about this many
# draws, the same draws as the per-campaign ones; 0 keeps every draw. Effects, shrinkage and
# summaries are computed from every draw before the fit is written.
LATENT_DRAWS = PREDICTIVE_DRAWS
# g-computation effects average over campaigns in blocks of at most this many values
# (draws x campaigns, 160 MB in float64), so a million campaigns fit in memory
EFFECT_CHUNK_VALUES = 20_000_000
# Explicit (non-Gaussian) equations centre a grouping's intercepts when its median level
# holds this many campaigns: then the data, not the prior, pin each intercept down, and the
# non-centred form's z's would put the funnel back (fundgap.bayesian.choose_centring)
CENTRED_MIN_CAMPAIGNS = 50

# The dimension names every posterior uses.
DIMS = {
    "campaign": "campaign",
    "county": "county",
    "prefecture": "prefecture",
    "province": "province",
    "equation": "equation",
    "mediator": "mediator",
    "channel": "channel",
}

# `--form auto` integrates the intercepts of an equation of these families out by the Laplace
# approximation (fundgap.laplace): those whose calibration (benchmarks/laplace_calibration.py;
# figures in benchmarks/README.md) shows them as accurate as the explicit form, where the
# explicit form's group sds mix many times slower. Not beta (its shares of 1 are better a
# censored_lognormal; not calibrated). `--form laplace` asks for the approximation wherever
# it applies.
LAPLACE_AUTO: tuple[str, ...] = ("negative_binomial", "censored_lognormal", "bernoulli",
                                 "poisson")
# how the county and prefecture intercepts are handled (fit.choose_form)
FORMS = ("auto", "marginal", "exact", "laplace", "explicit")
# Newton steps for the Laplace mode on a backend without while loops (JAX); where the mode
# is not reached (see LAPLACE_MAX_RESIDUAL) the fit fails its gate, never silently.
LAPLACE_FIXED_ITERATIONS = 20
# the largest Newton step (linear-predictor scale) that may remain at the stopped mode
LAPLACE_MAX_RESIDUAL = 1e-6
