"""Response families as data: one record per family, the one place a family is defined.

A record holds everything the rest of fundgap asks of a family:
- `link` and `mean`: the link function's name and the response's mean given the linear
  predictor (the inverse link, with lognormal's variance term), for effects;
- `auxiliary`: the family's own parameters (residual sd, degrees of freedom, dispersion,
  precision) with their priors, saved and reported under `{name}_{equation}`;
- `pymc`: the PyMC distribution and its arguments given the linear predictor, used for the
  likelihood of the explicit form and, through `pm.logp`, for the Laplace form's integrand;
- `scipy`: the predictive distribution for posterior predictive draws and pointwise log
  likelihood;
- `location_scale`: where the response sits on the link scale, for the default priors;
- `statsmodels`: the single-equation frequentist counterpart (and the method's name);
- `integrated`: which forms can integrate the county and prefecture intercepts out of its
  likelihood ("exact" for Gaussian equations, fundgap.marginal; "laplace", fundgap.laplace);
- `curvature`: for the Laplace form, d log p / d eta and -d^2 log p / d eta^2 per campaign
  in closed form (autodiff of PyMC's logp, twice and then once more by the sampler, builds
  graphs that take minutes to compile);
- `higher`: the third and fourth derivatives of log p in eta per campaign, for the Laplace
  form's second-order correction (families without them get the plain approximation);
- `response`: a check or transformation of the observed response (beta's shares moved into
  (0, 1); a capped share checked to lie in (0, 1]).

Adding a family is adding a record to FAMILIES (bambi's families module has the same idea).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import statsmodels.api as sm
from scipy import stats
from scipy.special import expit, logit
from statsmodels.othermod.betareg import BetaModel
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from fundgap import names
from fundgap.censored import (
    CensoredLognormal,
    censored_curvature,
    censored_higher,
    censored_logp,
    censored_pymc,
    censored_regression,
    censored_share_mean,
    check_capped_share,
)
from fundgap.errors import SpecError


@dataclass(frozen=True)
class Auxiliary:
    """A family's own parameter: its name (saved as `{name}_{equation}`) and its prior,
    `prior(variable name, the equation's sigma scale)` -> a PyMC random variable."""

    name: str
    prior: Callable[[str, pt.TensorVariable], pt.TensorVariable]


# (conventional fit, county-clustered fit, adjusted R2, pseudo R2)
FrequentistFit = tuple[object, object, float, float]


@dataclass(frozen=True)
class Family:
    """Everything fundgap needs to know of one response family (see the module docstring)."""

    name: str
    link: str
    mean: Callable[[object, dict], object]
    pymc: Callable[[pt.TensorVariable, dict], tuple[type, dict]]
    scipy: Callable[[np.ndarray, dict], object]
    # (response, its (mean, sd)) -> (location, scale) on the link scale
    location_scale: Callable[[np.ndarray, tuple[float, float]], tuple[float, float]]
    auxiliary: tuple[Auxiliary, ...] = ()
    discrete: bool = False
    statsmodels: Callable[[np.ndarray, np.ndarray, np.ndarray], FrequentistFit] | None = None
    method: str = ""
    integrated: tuple[str, ...] = field(default=())
    curvature: Callable[[object, pt.TensorVariable, dict],
                        tuple[pt.TensorVariable, pt.TensorVariable]] | None = None
    higher: Callable[[object, pt.TensorVariable, dict],
                     tuple[pt.TensorVariable, pt.TensorVariable]] | None = None
    response: Callable[[np.ndarray, str], np.ndarray] | None = None
    # log p(y | eta) in closed form, where PyMC's own is not exact enough to agree with
    # `curvature` at the Laplace form's mode
    logp: Callable[[object, pt.TensorVariable, dict], pt.TensorVariable] | None = None

    @property
    def identity_link(self) -> bool:
        """Whether a coefficient is the response mean's slope (no g-computation needed)."""
        return self.link == "identity"

    def auxiliary_priors(self, equation: str, sigma_scale: pt.TensorVariable) -> dict:
        """The family's own parameters for one equation, as PyMC variables in the model in
        context: {short name: variable}."""
        return {a.name: a.prior(f"{a.name}_{equation}", sigma_scale) for a in self.auxiliary}

    def likelihood(self, name: str, eta: pt.TensorVariable, auxiliary: dict,
                   observed: np.ndarray, dims: str) -> pt.TensorVariable:
        """The observed response as a PyMC random variable given its linear predictor."""
        distribution, kwargs = self.pymc(eta, auxiliary)
        return distribution(name, observed=observed, dims=dims, **kwargs)

    def log_density(self, y: np.ndarray | pt.TensorVariable, eta: pt.TensorVariable,
                    auxiliary: dict) -> pt.TensorVariable:
        """log p(y_i | eta_i) per campaign, as a PyTensor expression (PyMC's own logp unless
        the record has its own)."""
        if self.logp is not None:
            return self.logp(y, eta, auxiliary)
        distribution, kwargs = self.pymc(eta, auxiliary)
        return pm.logp(distribution.dist(**kwargs), y)

    def predictive(self, eta: np.ndarray, auxiliary: dict):
        """The frozen scipy distribution of each response given eta and auxiliary draws
        (arrays that broadcast against eta)."""
        return self.scipy(eta, auxiliary)

    def pointwise_log_likelihood(self, distribution, y: np.ndarray) -> np.ndarray:
        return distribution.logpmf(y) if self.discrete else distribution.logpdf(y)

    def prepare_response(self, y: np.ndarray, where: str) -> np.ndarray:
        """The response as the likelihood sees it (checked; beta's shares squeezed)."""
        return self.response(y, where) if self.response else y


# ---------------------------------------------------------------- pieces several share

def _sigma(name: str, scale: pt.TensorVariable) -> pt.TensorVariable:
    return pm.HalfNormal(name, scale)


def _mean_and_sd(y: np.ndarray, moments: tuple[float, float]) -> tuple[float, float]:
    # from the moments, which a design reduced to sufficient statistics keeps without rows
    mean, sd = moments
    return mean, sd or 1.0


def _log_of_mean(y: np.ndarray, moments: tuple[float, float]) -> tuple[float, float]:
    return float(np.log(max(y.mean(), 1e-3))), 1.0


def _logit_of_mean(y: np.ndarray, moments: tuple[float, float]) -> tuple[float, float]:
    return float(logit(float(np.clip(y.mean(), 0.01, 0.99)))), 1.0


def _ols(y: np.ndarray, exog: np.ndarray, clusters: np.ndarray) -> FrequentistFit:
    conventional = sm.OLS(y, exog).fit()
    clustered = conventional.get_robustcov_results(cov_type="cluster", groups=clusters)
    return conventional, clustered, float(conventional.rsquared_adj), np.nan


def _maximum_likelihood(model_class: Callable, maxiter: int = 200) -> Callable:
    """A statsmodels likelihood model fitted twice: conventional and county-clustered
    (started at the conventional estimates), with McFadden's pseudo R2."""

    def fit(y: np.ndarray, exog: np.ndarray, clusters: np.ndarray) -> FrequentistFit:
        cluster = {"cov_type": "cluster", "cov_kwds": {"groups": clusters}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = model_class(y, exog)
            conventional = model.fit(disp=0, maxiter=maxiter)
            clustered = model.fit(disp=0, maxiter=maxiter, start_params=conventional.params,
                                  **cluster)
        return conventional, clustered, np.nan, float(conventional.prsquared)

    return fit


def squeeze_share(y: np.ndarray, where: str) -> np.ndarray:
    """Shares in [0, 1] moved into (0, 1) for a beta likelihood: (y (n - 1) + 1/2) / n
    (Smithson and Verkuilen 2006), so a campaign that reached its target (share 1) stays in
    the data. A value outside [0, 1] is an error naming `where`."""
    outside = (y < 0) | (y > 1)
    if outside.any():
        raise SpecError(f"{where}: a beta response must lie in [0, 1]; "
                        f"{int(outside.sum())} rows do not (e.g. {y[outside][0]:g})")
    n = len(y)
    return (y * (n - 1) + 0.5) / n


def _beta_regression(share: np.ndarray, exog: np.ndarray,
                     clusters: np.ndarray) -> FrequentistFit:
    """Beta regression of shares already moved into (0, 1) (Family.prepare_response)."""
    cluster = {"cov_type": "cluster", "cov_kwds": {"groups": clusters}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = BetaModel(share, exog)
        conventional = model.fit(disp=0, maxiter=500)
        clustered = model.fit(disp=0, maxiter=500, start_params=conventional.params, **cluster)
    # betareg's pseudo R2 (Ferrari and Cribari-Neto): squared correlation of the logit
    # response and the linear predictor
    eta = exog @ conventional.params[:exog.shape[1]]
    pseudo_r2 = float(np.corrcoef(np.log(share / (1 - share)), eta)[0, 1] ** 2)
    return conventional, clustered, np.nan, pseudo_r2


def _lognormal_location_scale(y: np.ndarray,
                              moments: tuple[float, float]) -> tuple[float, float]:
    logged = np.log(y)
    return float(logged.mean()), float(logged.std() or 1.0)


def _negative_binomial_scipy(eta: np.ndarray, aux: dict):
    dispersion, mu = aux["dispersion"], np.exp(eta)
    return stats.nbinom(dispersion, dispersion / (dispersion + mu))


def _beta_scipy(eta: np.ndarray, aux: dict):
    mean, precision = expit(eta), aux["precision"]
    return stats.beta(mean * precision, (1 - mean) * precision)


def _beta_pymc(eta: pt.TensorVariable, aux: dict) -> tuple[type, dict]:
    # mean-precision form: mean invlogit(eta), variance mean (1 - mean) / (1 + precision)
    mean = pm.math.invlogit(eta)
    return pm.Beta, {"alpha": mean * aux["precision"], "beta": (1 - mean) * aux["precision"]}


def _logistic_higher(scale, share):
    # d^3, d^4 of log p where d^2 log p / d eta^2 = -scale * share (1 - share) and
    # d share / d eta = share (1 - share): Bernoulli (scale 1) and NB2 (scale y + dispersion)
    slope = share * (1 - share)
    return -scale * slope * (1 - 2 * share), -scale * slope * (1 - 6 * slope)


def _negative_binomial_higher(y, eta, aux):
    mu, dispersion = pt.exp(eta), aux["dispersion"]
    return _logistic_higher(y + dispersion, mu / (dispersion + mu))


def _negative_binomial_curvature(y, eta, aux):
    mu, dispersion = pt.exp(eta), aux["dispersion"]
    share = mu / (dispersion + mu)
    return y - (y + dispersion) * share, (y + dispersion) * share * (1 - share)


def trigamma(x: pt.TensorVariable, shift: int = 6) -> pt.TensorVariable:
    """psi'(x) for x > 0 in elementary operations: the recurrence psi'(x) = 1 / x^2 +
    psi'(x + 1) `shift` times, then the asymptotic series at x + shift (relative error below 1e-10).
    PyTensor's own tri_gamma (and its gradient, polygamma) run in Python object mode under
    numba, which nutpie's default backend uses."""
    total = sum(1.0 / (x + k) ** 2 for k in range(shift))
    z = x + shift
    inverse = 1.0 / z
    inverse2 = inverse**2
    series = inverse + inverse2 / 2 + inverse * inverse2 * (
        1 / 6 - inverse2 * (1 / 30 - inverse2 * (1 / 42 - inverse2 / 30)))
    return total + series


def digamma(x: pt.TensorVariable, shift: int = 6) -> pt.TensorVariable:
    """psi(x) for x > 0 in elementary operations, as `trigamma`: psi(x) = psi(x + shift) -
    sum 1 / (x + k), then the asymptotic series (relative error below 1e-10). Its gradient
    is elementary too; PyTensor's psi differentiates to tri_gamma, which numba runs in Python
    object mode."""
    total = sum(1.0 / (x + k) for k in range(shift))
    z = x + shift
    inverse2 = 1.0 / z**2
    series = pt.log(z) - 0.5 / z - inverse2 * (
        1 / 12 - inverse2 * (1 / 120 - inverse2 * (1 / 252 - inverse2 * (
            1 / 240 - inverse2 / 132))))
    return series - total


def _beta_curvature(y, eta, aux):
    # log p = gammaln(phi) - gammaln(m phi) - gammaln((1 - m) phi) + (m phi - 1) log y
    #         + ((1 - m) phi - 1) log(1 - y), with m = invlogit(eta) and dm/deta = m (1 - m)
    mean, precision = pm.math.invlogit(eta), aux["precision"]
    slope = mean * (1 - mean)
    gap = (pt.log(y) - pt.log1p(-y) - digamma(mean * precision)
           + digamma((1 - mean) * precision))
    spread = trigamma(mean * precision) + trigamma((1 - mean) * precision)
    first = precision * slope * gap
    weight = precision**2 * slope**2 * spread - precision * slope * (1 - 2 * mean) * gap
    return first, weight


SIGMA = Auxiliary("sigma", _sigma)

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family(
        name="gaussian", link="identity", auxiliary=(SIGMA,),
        mean=lambda eta, aux: eta,
        pymc=lambda eta, aux: (pm.Normal, {"mu": eta, "sigma": aux["sigma"]}),
        scipy=lambda eta, aux: stats.norm(eta, aux["sigma"]),
        location_scale=_mean_and_sd, statsmodels=_ols, method="ols",
        integrated=("exact", "laplace"),
        curvature=lambda y, eta, aux: ((y - eta) / aux["sigma"]**2,
                                       pt.ones_like(eta) / aux["sigma"]**2)),
    Family(
        name="student_t", link="identity",
        auxiliary=(SIGMA, Auxiliary("nu", lambda name, scale: pm.Gamma(name, alpha=2.0,
                                                                       beta=0.1))),
        mean=lambda eta, aux: eta,
        pymc=lambda eta, aux: (pm.StudentT, {"nu": aux["nu"], "mu": eta,
                                             "sigma": aux["sigma"]}),
        scipy=lambda eta, aux: stats.t(aux["nu"], eta, aux["sigma"]),
        location_scale=_mean_and_sd, statsmodels=_ols, method="ols"),
    Family(
        # eta is the mean of log y; the response's mean is exp(eta + sigma^2 / 2)
        name="lognormal", link="log", auxiliary=(SIGMA,),
        mean=lambda eta, aux: np.exp(eta) * np.exp(aux["sigma"] ** 2 / 2),
        pymc=lambda eta, aux: (pm.LogNormal, {"mu": eta, "sigma": aux["sigma"]}),
        scipy=lambda eta, aux: stats.lognorm(aux["sigma"], scale=np.exp(eta)),
        location_scale=_lognormal_location_scale),
    Family(
        name="poisson", link="log", discrete=True,
        mean=lambda eta, aux: np.exp(eta),
        pymc=lambda eta, aux: (pm.Poisson, {"mu": pt.exp(eta)}),
        scipy=lambda eta, aux: stats.poisson(np.exp(eta)),
        location_scale=_log_of_mean, statsmodels=_maximum_likelihood(sm.Poisson),
        method="poisson", integrated=("laplace",),
        curvature=lambda y, eta, aux: (y - pt.exp(eta), pt.exp(eta)),
        higher=lambda y, eta, aux: (-pt.exp(eta), -pt.exp(eta))),
    Family(
        name="negative_binomial", link="log", discrete=True,
        auxiliary=(Auxiliary("dispersion", lambda name, scale: pm.Exponential(name, 1.0)),),
        mean=lambda eta, aux: np.exp(eta),
        pymc=lambda eta, aux: (pm.NegativeBinomial, {"mu": pt.exp(eta),
                                                     "alpha": aux["dispersion"]}),
        scipy=_negative_binomial_scipy, location_scale=_log_of_mean,
        statsmodels=_maximum_likelihood(
            lambda y, exog: sm.NegativeBinomial(y, exog, loglike_method="nb2")),
        method="negative binomial (NB2)", integrated=("laplace",),
        curvature=_negative_binomial_curvature, higher=_negative_binomial_higher),
    Family(
        name="bernoulli", link="logit", discrete=True,
        mean=lambda eta, aux: expit(eta),
        pymc=lambda eta, aux: (pm.Bernoulli, {"logit_p": eta}),
        scipy=lambda eta, aux: stats.bernoulli(expit(eta)),
        location_scale=_logit_of_mean, statsmodels=_maximum_likelihood(sm.Logit),
        method="logit", integrated=("laplace",),
        curvature=lambda y, eta, aux: (y - pm.math.invlogit(eta),
                                       pm.math.invlogit(eta) * (1 - pm.math.invlogit(eta))),
        higher=lambda y, eta, aux: _logistic_higher(1.0, pm.math.invlogit(eta))),
    Family(
        name="beta", link="logit",
        auxiliary=(Auxiliary("precision", lambda name, scale: pm.Gamma(name, alpha=2.0,
                                                                       beta=0.1)),),
        mean=lambda eta, aux: expit(eta),
        pymc=_beta_pymc, scipy=_beta_scipy, location_scale=_logit_of_mean,
        statsmodels=_beta_regression, method="beta regression",
        integrated=("laplace",), curvature=_beta_curvature, response=squeeze_share),
    Family(
        # a share of a target capped at 1: log share ~ Normal(eta, sigma) censored at 0
        name="censored_lognormal", link="log", auxiliary=(SIGMA,),
        mean=lambda eta, aux: censored_share_mean(eta, aux["sigma"]),
        pymc=censored_pymc,
        scipy=lambda eta, aux: CensoredLognormal(eta, aux["sigma"]),
        location_scale=_lognormal_location_scale, statsmodels=censored_regression,
        method="Tobit (log share censored at 1)", integrated=("laplace",),
        curvature=censored_curvature, higher=censored_higher, logp=censored_logp,
        response=check_capped_share),
)}

# The families a spec may name, and those the frequentist side can fit.
FAMILY_NAMES = tuple(FAMILIES)
FREQUENTIST_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.statsmodels is not None)
# Families whose intercepts fundgap.marginal integrates out exactly.
EXACT_FAMILIES = tuple(n for n, f in FAMILIES.items() if "exact" in f.integrated)
# Every family's own parameters' names (the prefixes of their saved variables).
AUXILIARY_NAMES = tuple(dict.fromkeys(a.name for f in FAMILIES.values() for a in f.auxiliary))


def family(name: str) -> Family:
    """The record of a family by name (parse_spec admits only the names in FAMILIES)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}: use {', '.join(FAMILIES)}") from None


class _SavedDraws(Mapping):
    """A family's own parameters for one equation, read from a posterior when asked for (a
    mean that needs no dispersion does not need it saved)."""

    def __init__(self, posterior, record: Family, equation: str, per_campaign: bool):
        self._posterior, self._equation, self._per_campaign = posterior, equation, per_campaign
        self._names = [a.name for a in record.auxiliary]

    def __getitem__(self, key: str):
        draws = self._posterior[names.auxiliary(key, self._equation)]
        return draws.values[..., None] if self._per_campaign else draws

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def auxiliary_draws(posterior, name: str, equation: str, per_campaign: bool = False) -> Mapping:
    """The saved draws of family `name`'s own parameters for one equation, {short name:
    draws}, read when used: DataArrays (chain, draw), or with `per_campaign` arrays shaped to
    broadcast against (chain, draw, campaign) ones."""
    return _SavedDraws(posterior, family(name), equation, per_campaign)
