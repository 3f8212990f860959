# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Published, frequentist and Bayesian, table by table
#
# For each analysis: the published figure (`../shared/spec/published_tables.yaml`), our
# replication of the study's method on the same data (OLS or logit with conventional and
# county-clustered errors; the KHB decomposition with delta-method and bootstrap errors),
# MixedLM with the spec's random intercepts, and the posterior of the joint model. The data
# are simulated, calibrated to the study: our columns should land near the published ones,
# not on them. † marks a published figure outside our frequentist 95% interval, ‡ outside
# the posterior's.

# %%
import pandas as pd
from IPython.display import Image, display

import fundgap
from fundgap import notebook
from fundgap.compare import (
    comparison_frame,
    read_posterior,
    variants_for,
    with_variant_posteriors,
)
from fundgap.figures import sensitivity_figure
from fundgap.render import display_frame
from fundgap.store import frame_fingerprint

table = notebook.default_table()
replicates = 49 if notebook.QUICK else 999
pd.set_option("display.max_colwidth", 40)


def side_by_side(name: str) -> pd.DataFrame:
    spec = notebook.spec(name)
    fitted = notebook.fit_or_load(name, table)
    print(notebook.status_line(fitted))
    result = fundgap.frequentist(spec, table, replicates=replicates, seed=20250)
    folder = notebook.fits_folder(name)
    posterior, reason = (read_posterior(folder, frame_fingerprint(table)) if folder
                         else (None, "quick mode keeps no fit folder"))
    if posterior is None:
        print(f"posterior column empty: {reason}")
    for note in result.notes:
        print("note:", note)
    return comparison_frame(result, posterior), result


# %% [markdown]
# ## Tables 2 and 3: the regional model and its KHB decomposition

# %%
regional, regional_result = side_by_side("regional_mediation")
display_frame(regional)

# %% [markdown]
# **Reading.** Table 2's development coefficient (model 6) is the joint model's direct
# path: OLS, MixedLM and the posterior agree closely, because with 2,057 campaigns and weak
# priors the likelihood dominates; the random intercepts change little for a county-level
# exposure whose county variance is small next to the residual. The KHB rows differ in
# kind: KHB's total is a reduced model with the mediators' residuals, and its standard
# errors come from a delta method; the posterior's total is direct + sum of a x b per draw,
# so its interval carries the joint uncertainty of every path. The published total is
# printed with a reduced-model standard error (as Stata's khb does); our delta-method error
# for the same quantity is about twice as large (see `khb.csv`, `reduced_model_std_error`),
# which is why the total can look more certain in the paper than in either of our columns.

# %%
regional_result.khb[["component", "mediator", "estimate", "std_error",
                     "reduced_model_std_error", "bootstrap_std_error", "share"]].round(4)

# %% [markdown]
# ### How much unmeasured confounding would explain each indirect effect away?
# Neither KHB nor the posterior can check that nothing unmeasured drives both a mediator and
# the outcome. `fundgap.sensitivity` asks how strong such confounding would have to be:
# rho is the correlation of the mediator's and the outcome's campaign-level errors (the fit
# assumes 0), and per draw the outcome's path becomes b - rho / sqrt(1 - rho^2) x
# sigma_outcome / sigma_mediator (Imai, Keele and Yamamoto 2010). The table gives, per
# mediator, the rho at which the posterior mean of the indirect effect reaches 0 and the
# rho at which its 95% interval first includes 0 (0 where it does already), with rho^2 as
# the product of the shares of residual variance a confounder would have to explain in the
# two equations; the figure shows the whole curve (`sensitivity.csv` in the fit folder,
# `fundgap sensitivity FIT --rho ...` for other values).

# %%
regional_fit = notebook.fit_or_load("regional_mediation", table)
for figure in sensitivity_figure(regional_fit.sensitivity,
                                 regional_fit.sensitivity_thresholds):
    display(Image(figure.png))
regional_fit.sensitivity_thresholds.round(3)

# %% [markdown]
# ## Tables 5 and 6: channels

# %%
channels, _ = side_by_side("channel_moderation")
display_frame(channels)

# %% [markdown]
# **Reading.** The study fits each channel separately (Table 5: one OLS per channel; Table 6:
# the mixed channel's mediator equations). The joint model fits both channels at once with
# channel-specific development slopes but shared b paths and shared random intercepts, so
# the acquaintance channel (the smaller one) borrows strength for everything that is not
# its slope. Where the per-channel OLS and the posterior differ, that sharing (and the
# intercepts) is the reason: the OLS of one channel knows nothing of the other.

# %% [markdown]
# ## Table 7: the recommendation logit

# %%
recommendation, recommendation_result = side_by_side("recommendation")
# models 2-5: each indicator's posterior coefficient from its exposure variant (`fundgap
# run` fits them into fits/default/robustness/recommendation/; the report shows the same)
folder = notebook.fits_folder("recommendation")
variants, reason = variants_for(recommendation_result, table,
                                folder.parent if folder else None)
if reason:
    print(reason)
recommendation = with_variant_posteriors(recommendation, notebook.spec("recommendation"),
                                         variants)
display_frame(recommendation)

# %% [markdown]
# **Reading.** The logit coefficients are on the log-odds scale in all columns. The
# hierarchical logit adds county and prefecture intercepts: with most counties seen once,
# their sd is barely identified (the Laplace form integrates them out). Models 2-5 put
# each of the development factor's indicators in its place, one Bayesian fit each. A
# random-intercept logit's coefficients are conditional on the intercepts, the pooled
# logit's are averaged over them, so the former are, if anything, larger in magnitude; with
# a county sd this small the two nearly coincide. The average marginal effect on the
# probability (effects.csv) is the scale-free quantity to compare.
