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
# # 1. The data, and why the counties must be pooled
#
# The default data (`data/default`, simulated from `fundgap/simulation/development.toml` and
# placed in the real county hierarchy when `../shared/data/china_counties.csv` exists) pass
# through the same contract and preparation as any user's folder of CSVs. This notebook
# shows what that contract checks, how sparse the counties are, how the development
# factor is built, and how the two capacity mediators come out of the donation streams.

# %%
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fundgap import notebook
from fundgap.contract import load_dataset, validate
from fundgap.describe import descriptives, occupancy
from fundgap.prepare import donation_capacities, prepare

folder = notebook.default_data()
problems = validate(folder)
print(f"{folder}: {len(problems)} contract problems")
dataset = load_dataset(folder)
prepared = prepare(dataset)
table, diagnostics = prepared.table, prepared.diagnostics
print(f"{len(table)} campaigns, {table['county_code'].nunique()} counties, "
      f"{table['prefecture_code'].nunique()} prefectures")

# %% [markdown]
# ## The contract
# A folder holds `campaigns.csv` and `counties.csv` (required), `donations.csv` and
# `ratings.csv` (optional); each column has a rule (`fundgap/rules.py`). A bad cell is
# reported with its file, row and column, and every problem at once. Here one amount is made
# negative and one county code unknown, in a copy:

# %%
with tempfile.TemporaryDirectory() as scratch:
    broken = Path(scratch) / "broken"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("donations.csv"))
    campaigns = pd.read_csv(broken / "campaigns.csv", dtype=str)
    campaigns.loc[3, "amount_raised"] = "-12"
    campaigns.loc[7, "county_code"] = "999999"
    campaigns.to_csv(broken / "campaigns.csv", index=False)
    for problem in validate(broken):
        print(problem)

# %% [markdown]
# ## County occupancy: why pooling is needed
# Most counties hold one or two campaigns. A county fixed effect, or a county mean, from one
# campaign is noise; the study therefore drops sparse counties or moves to prefectures. A
# county random intercept nested in a prefecture one keeps every campaign and lets the data
# decide how much a county differs.

# %%
occ = occupancy(table)
per_county = table.groupby("county_code").size()
figure, axis = plt.subplots(figsize=(7, 3))
counts = per_county.value_counts().sort_index()
axis.bar(counts.index.astype(str), counts.to_numpy(), color="#1f5fa8")
axis.set_xlabel("campaigns in the county")
axis.set_ylabel("counties")
axis.set_title(f"{occ['share_campaigns_in_counties_seen_once']:.1%} of campaigns are alone "
               "in their county", fontsize=10)
plt.show()
pd.Series(occ).to_frame("value")

# %% [markdown]
# ## The development factor
# Development is the first common factor of four county indicators (mean years of
# schooling, non-agricultural labour share, urbanisation rate, GDP per capita), each the
# mean of the 2010 and 2020 censuses, scaled to sd 1 over the campaigns. The study reports
# loadings 0.75-0.94, 73.7% of variance and KMO 0.76.

# %%
factor = diagnostics["development_factor"]
loadings = pd.DataFrame({"loading": factor["loadings"],
                         "KMO (per indicator)": factor["kmo_per_indicator"]})
print(f"{factor['variance_explained']:.1%} of variance; KMO {factor['kmo']:.2f}; Bartlett "
      f"chi2({factor['bartlett_df']}) = {factor['bartlett_chi2']:.0f}, "
      f"p = {factor['bartlett_p']:.2g}; eigenvalues "
      + ", ".join(f"{v:.2f}" for v in factor["eigenvalues"]))
loadings

# %% [markdown]
# A map-free view: development by province (campaign-weighted), with the spread within.

# %%
by_province = (table.groupby("province_code")["development"]
               .agg(["count", "mean", "std", "min", "max"])
               .sort_values("mean", ascending=False))
by_province.round(2)

# %% [markdown]
# ## The mediators from the donation streams
# Core-network capacity is the mean of a campaign's first 100 donations, derived-network
# capacity the mean of those after the 300th (in 100 yuan). One campaign's stream, and the
# two windows:

# %%
donations = dataset.donations
campaign = donations.groupby("campaign_id").size().idxmax()
stream = donations[donations["campaign_id"] == campaign]
figure, axis = plt.subplots(figsize=(7, 3))
axis.scatter(stream["seq"], stream["amount"], s=4, color="#888")
for low, high, colour in ((1, 100, "#1f5fa8"), (301, stream["seq"].max(), "#d9731a")):
    window = stream[(stream["seq"] >= low) & (stream["seq"] <= high)]
    axis.hlines(window["amount"].mean(), low, high, color=colour, lw=2)
axis.set_yscale("log")
axis.set_xlabel("donation number")
axis.set_ylabel("yuan (log scale)")
axis.set_title(f"campaign {campaign}: core (blue) and derived (orange) window means",
               fontsize=10)
plt.show()
capacities = donation_capacities(donations)
capacities["derived_capacity_rule"].value_counts()

# %% [markdown]
# Short streams have no donation after the 300th; by default their derived capacity uses the
# donations after the 100th (rule `after_100`), or all of them. Descriptives of the study's
# Table 1 variables, to compare with the published means and sds:

# %%
descriptives(table).round(3)

# %%
assert np.isclose(table["development"].std(), 1.0, atol=1e-3)
