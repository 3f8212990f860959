"""The censored lognormal family's pieces (fundgap.families' record holds them): a share of
a target, y = min(A / T, 1), with log(A / T) ~ Normal(eta, sigma) censored at 0, so a
campaign that reached its target (y = 1) contributes P(log(A / T) >= 0) = Phi(eta / sigma).
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import statsmodels.api as sm
from scipy import stats
from scipy.special import log_ndtr
from statsmodels.base.model import GenericLikelihoodModel
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from fundgap.errors import SpecError


def censored_share_mean(eta, sigma):
    """E[min(exp(eta + sigma z), 1)] for z standard normal (numpy or xarray)."""
    return (np.exp(eta + sigma**2 / 2 + log_ndtr(-eta / sigma - sigma))
            + np.exp(log_ndtr(eta / sigma)))


def check_capped_share(y: np.ndarray, where: str) -> np.ndarray:
    """A share capped at 1 must lie in (0, 1]; anything else is an error naming `where`."""
    outside = ~((y > 0) & (y <= 1))
    if outside.any():
        raise SpecError(f"{where}: a censored_lognormal response must lie in (0, 1] (a share "
                        f"of a target, capped at 1); {int(outside.sum())} rows do not "
                        f"(e.g. {y[outside][0]:g})")
    return y


class CensoredLognormal:
    """The predictive distribution: draws min(lognormal, 1); log density at y < 1, log mass
    at y = 1."""

    def __init__(self, eta: np.ndarray, sigma: np.ndarray):
        self.eta, self.sigma = eta, sigma

    def rvs(self, random_state=None) -> np.ndarray:
        draws = stats.lognorm(self.sigma, scale=np.exp(self.eta)).rvs(
            random_state=random_state)
        return np.minimum(draws, 1.0)

    def mean(self) -> np.ndarray:
        return censored_share_mean(self.eta, self.sigma)

    def logpdf(self, y: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            below = stats.lognorm(self.sigma, scale=np.exp(self.eta)).logpdf(np.minimum(y, 1))
        return np.where(y >= 1, log_ndtr(self.eta / self.sigma), below)


def censored_pymc(eta: pt.TensorVariable, aux: dict) -> tuple[type, dict]:
    return pm.Censored, {"dist": pm.LogNormal.dist(mu=eta, sigma=aux["sigma"]),
                         "lower": None, "upper": 1.0}


def _mills(a):
    # phi(a) / Phi(a), stable for every a: Phi(a) = erfcx(-a / sqrt 2) exp(-a^2 / 2) / 2
    return np.sqrt(2 / np.pi) / pt.erfcx(-a / np.sqrt(2))


def _log_ndtr(a):
    # log Phi(a) without cancellation at either end
    return pt.switch(pt.gt(a, 0.0), pt.log1p(-pt.erfc(a / np.sqrt(2)) / 2),
                     pt.log(pt.erfcx(-a / np.sqrt(2)) / 2) - a**2 / 2)


def censored_logp(y, eta, aux):
    # PyMC's censored lognormal tail is off by about 1e-7, enough for the Laplace mode (found
    # with censored_curvature's exact derivatives) to miss its value's stationary point
    sigma = aux["sigma"]
    logged = pt.log(y)
    below = pm.logp(pm.Normal.dist(mu=eta, sigma=sigma), logged) - logged
    return pt.switch(pt.ge(y, 1.0), _log_ndtr(eta / sigma), below)


def _censored_pieces(y, eta, aux):
    # sigma, a = eta / sigma, the inverse Mills ratio r at a, and which shares are capped
    sigma = aux["sigma"]
    return sigma, eta / sigma, _mills(eta / sigma), pt.ge(y, 1.0)


def censored_curvature(y, eta, aux):
    # y < 1: Gaussian in log y; y = 1: log Phi(a), whose derivatives in a are r and -r (a + r)
    sigma, a, r, censored = _censored_pieces(y, eta, aux)
    first = pt.switch(censored, r / sigma, (pt.log(y) - eta) / sigma**2)
    weight = pt.switch(censored, r * (a + r), 1.0) / sigma**2
    return first, weight


def censored_higher(y, eta, aux):
    # third and fourth derivatives of log Phi(a) in a, with r' = -r (a + r); zero below 1
    sigma, a, r, censored = _censored_pieces(y, eta, aux)
    slope = -r * (a + r)
    third = r * ((a + r) * (a + 2 * r) - 1)
    fourth = (slope * ((a + r) * (a + 2 * r) - 1)
              + r * ((1 + slope) * (a + 2 * r) + (a + r) * (1 + 2 * slope)))
    return (pt.switch(censored, third / sigma**3, 0.0),
            pt.switch(censored, fourth / sigma**4, 0.0))


class _CensoredRegression(GenericLikelihoodModel):
    """Tobit regression of log y censored from above at 0 (statsmodels' generic maximum
    likelihood; the last parameter is log sigma)."""

    def __init__(self, endog: np.ndarray, exog: np.ndarray, **kwargs):
        super().__init__(endog, exog, extra_params_names=["log_sigma"], **kwargs)

    def loglikeobs(self, params: np.ndarray) -> np.ndarray:
        return CensoredLognormal(self.exog @ params[:-1], np.exp(params[-1])).logpdf(
            self.endog)


def censored_regression(y: np.ndarray, exog: np.ndarray,
                         clusters: np.ndarray) -> tuple[object, object, float, float]:
    """Tobit fit of log y (conventional, cluster-robust, no adjusted R2, McFadden's pseudo
    R2), the family record's statsmodels counterpart."""
    logged = np.log(y)
    ols = sm.OLS(logged, exog).fit()
    start = np.append(ols.params, np.log(np.sqrt(ols.scale)))
    cluster = {"cov_type": "cluster", "cov_kwds": {"groups": clusters}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _CensoredRegression(y, exog)
        conventional = model.fit(start_params=start, method="bfgs", maxiter=1000, disp=0)
        clustered = model.fit(start_params=conventional.params, method="bfgs", maxiter=1000,
                              disp=0, **cluster)
        null = _CensoredRegression(y, np.ones((len(y), 1))).fit(
            start_params=[logged.mean(), np.log(logged.std())], method="bfgs", disp=0)
    return conventional, clustered, np.nan, float(1 - conventional.llf / null.llf)
