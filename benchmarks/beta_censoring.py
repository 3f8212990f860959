"""Why the beta equation for target completion finds county variation: the shares of 1.

Target completion is min(amount / target, 1): a campaign that reached its target has a share
of exactly 1, a point mass that no beta density has, and fundgap moves it just inside (0, 1)
(families.squeeze_share), where its logit is far above every other campaign's. This fits a
Gaussian mixed model (statsmodels MixedLM, county intercepts) to the logit of the share with
the ses_gradient spec's right-hand side, with and without the campaigns at 1, beside the
same model for log amount raised (the share's source), and prints the county and residual sds.

    .venv/bin/python benchmarks/beta_censoring.py [DATA]   (default data/default)
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from fundgap.families import squeeze_share
from fundgap.pipeline import load_prepared

RHS = ("ses_index:C(channel) + recommended + target_amount_10k + male + development"
       " + C(age_group) + C(disease_type) + verifier_count + core_capacity + text_rating")


def county_sd(table: pd.DataFrame, response: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.mixedlm(f"{response} ~ {RHS}", table, groups=table["county_code"]).fit()
    return {"county sd": float(np.sqrt(fit.cov_re.iloc[0, 0])),
            "residual sd": float(np.sqrt(fit.scale)), "campaigns": int(fit.nobs)}


def main(data: str) -> None:
    table = load_prepared(data).table
    share = squeeze_share(table["target_completion"].to_numpy(), "target_completion")
    table = table.assign(logit_share=np.log(share / (1 - share)))
    reached = table["target_completion"] >= 1
    rows = {"log amount raised": county_sd(table, "log_amount_raised"),
            "logit share, all campaigns": county_sd(table, "logit_share"),
            "logit share, without shares of 1": county_sd(table[~reached], "logit_share")}
    print(f"{reached.mean():.1%} of campaigns reached their target (share 1, moved to "
          f"{share[reached.to_numpy()].max():.5f}, logit {table['logit_share'].max():.2f}; "
          f"the median logit is {table['logit_share'].median():.2f})")
    print(pd.DataFrame(rows).T.to_string(float_format="%.3f"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/default")
