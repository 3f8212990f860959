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
# # 5. Refitting on your own data
#
# The path a new user takes with a folder of CSVs: validate it against the contract, prepare
# it, run every model on it (resumable; on a Dask cluster if you have one), compare with the
# published figures, and read the report. Here "your data" is a small simulated folder in a
# scratch directory; point `my_data` at your own folder instead. From a terminal the same
# steps are `fundgap validate DIR`, `fundgap run --data DIR`, `fundgap report fits/<name>`.

# %%
import tempfile
from pathlib import Path

import pandas as pd

import fundgap
from fundgap import notebook
from fundgap.batch import run_batch, summary_text
from fundgap.report import build_report, write_report

scratch = Path(tempfile.mkdtemp(prefix="fundgap-notebook-"))
my_data = scratch / "my_campaigns"
fundgap.simulate(n_campaigns=600, seed=99).write(my_data)
sorted(p.name for p in my_data.iterdir())

# %% [markdown]
# ## 1. Validate
# The contract (`data/README.md`, `fundgap/rules.py`): `campaigns.csv` and `counties.csv`
# are required; `donations.csv` (the stream the capacities come from) and `ratings.csv`
# (the raters' scores behind the emotional rating) are optional, and without them
# `campaigns.csv` must carry `core_capacity`, `derived_capacity` and `emotional_rating`
# itself. Every problem is listed with file, row and column.

# %%
problems = fundgap.validate(my_data)
print(f"{len(problems)} problems")

# %% [markdown]
# ## 2. Run every model
# `run_batch` prepares the data (into `fits/<name>/prepared.parquet`), then fits each spec:
# the joint Bayesian model, then the frequentist tables with the comparison. Run it again
# and everything current is skipped; pass `client=distributed.Client(...)` to spread the
# fits over a Dask cluster. The regional model alone keeps this quick.

# %%
models = [notebook.repository() / "models" / "regional_mediation.toml"]
settings = {**(notebook.QUICK_SETTINGS if notebook.QUICK else {}), "replicates": 99}
result = run_batch([my_data], models, scratch / "fits", settings, progress=False)
print(summary_text(result))

# %% [markdown]
# Run it again: nothing changed, so nothing is refitted.

# %%
again = run_batch([my_data], models, scratch / "fits", settings, progress=False)
again.rows[["spec", "kind", "action", "status"]]

# %% [markdown]
# ## 3. The index of every fit
# One row per fit folder, as Parquet: for many refits (robustness checks, simulation
# studies) query it instead of walking folders.

# %%
index = pd.read_parquet(result.index)
index[["data", "spec", "kind", "status", "max_r_hat", "min_ess_bulk", "wall_seconds"]]

# %% [markdown]
# ## 4. Compare and report
# The comparison with the published figures is in `fits/<name>/frequentist/<spec>/`
# (`comparison.md`, `.html`); the report gathers everything on one page.

# %%
fits = scratch / "fits" / my_data.name
print((fits / "frequentist" / "regional_mediation" / "comparison.md").read_text()[:1500])
html, markdown = write_report(build_report(fits), fits / "report.html")
print(f"open {html} in a browser (or read {markdown})")
