"""Each family's log density and its derivatives at a campaign, and their sums by county:
the per-campaign passes of the compiled Laplace kernel (fundgap.laplace_kernel).

`_jets` gives one campaign's log p(y | eta), its derivatives 1-5 in eta and their
derivatives in the family's own parameter, for every family the kernel compiles. The mode
search needs each county's first derivative and curvature (`_sums`), the value and gradient
need each county's sums of all of them (`_mode_sums`) and, per campaign, only the gradient in
f (`_campaign_gradient`). For log- and logit-link families (FACTORED_CODES) the same passes
are written out from exp(f) and one exp per county (`_factored_*`), which is where a large
table's time went (benchmarks/README.md, "The Laplace kernel's passes over the campaigns");
tests/test_laplace_kernel.py holds both to the graph of fundgap.laplace.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# The families with compiled derivatives (`_jets`), by the code the kernel branches on.
FAMILY_CODES = {"gaussian": 0, "poisson": 1, "negative_binomial": 2, "bernoulli": 3,
                "censored_lognormal": 4}
# jets per campaign: log p and its derivatives 1-5 in eta, then the derivatives of log p and
# of its first four eta-derivatives in the family's own parameter (zero where it has none)
JETS = 11
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@numba.njit(cache=True)
def _digamma(x: float) -> float:
    total = 0.0
    while x < 6.0:
        total -= 1.0 / x
        x += 1.0
    inverse2 = 1.0 / (x * x)
    return total + math.log(x) - 0.5 / x - inverse2 * (
        1 / 12 - inverse2 * (1 / 120 - inverse2 * (1 / 252 - inverse2 * (
            1 / 240 - inverse2 / 132))))


@numba.njit(cache=True)
def _erfcx(x: float) -> float:
    # exp(x^2) erfc(x); the asymptotic series where exp(x^2) would overflow
    if x < 25.0:
        return math.exp(x * x) * math.erfc(x)
    inverse2 = 1.0 / (x * x)
    return (1 - inverse2 * (0.5 - inverse2 * (0.75 - 1.875 * inverse2))) / (
        x * math.sqrt(math.pi))


@numba.njit(cache=True)
def _logistic(scale, share, out):
    # d^k log p for k = 2..5 where d^2 = -scale share (1 - share), d share = share (1 - share)
    slope = share * (1 - share)
    tilt = 1 - 2 * share
    out[2] = -scale * slope
    out[3] = -scale * slope * tilt
    out[4] = -scale * slope * (1 - 6 * slope)
    out[5] = -scale * slope * tilt * (1 - 12 * slope)


@numba.njit(cache=True)
def _gaussian_jets(residual, sigma, out):
    # log p = -residual^2 / (2 sigma^2) - log sigma - ...: derivatives in eta and in sigma
    out[1] = residual / sigma**2
    out[2] = -1 / sigma**2
    out[3] = out[4] = out[5] = 0.0
    out[6] = residual**2 / sigma**3 - 1 / sigma
    out[7] = -2 * residual / sigma**3
    out[8] = 2 / sigma**3
    out[9] = out[10] = 0.0


@numba.njit(cache=True)
def _constants(code, aux):
    """What every campaign's jets share: functions of the family's own parameter alone."""
    constants = np.zeros(3)
    if code == 2:
        alpha = aux[0]
        constants[0] = math.lgamma(alpha)
        constants[1] = _digamma(alpha)
        constants[2] = math.log(alpha)
    elif code in (0, 4):
        constants[0] = math.log(aux[0])
    return constants


# counts up to this take their log-gamma and digamma terms from tables built by recurrence
# once per call (`_count_tables`), not per campaign
TABLE_COUNTS = 1024


@numba.njit(cache=True)
def _count_tables(code, aux, y):
    """For count families: rows lgamma(k + 1), lgamma(k + alpha) - lgamma(alpha) and
    digamma(k + alpha) - digamma(alpha) for k = 0 .. min(max count, TABLE_COUNTS - 1), by
    their recurrences (the sums of log k, log(alpha + k), 1 / (alpha + k)); empty for
    other families."""
    if code not in (1, 2):
        return np.zeros((3, 0))
    largest = 0.0
    for value in y:
        largest = max(largest, value)
    size = int(min(largest, TABLE_COUNTS - 1)) + 1
    tables = np.zeros((3, size))
    alpha = aux[0] if code == 2 else 1.0
    for k in range(1, size):
        tables[0, k] = tables[0, k - 1] + math.log(k)
        tables[1, k] = tables[1, k - 1] + math.log(alpha + k - 1)
        tables[2, k] = tables[2, k - 1] + 1.0 / (alpha + k - 1)
    return tables


@numba.njit(cache=True)
def _count_terms(y, alpha, constants, tables):
    """lgamma(y + 1), lgamma(y + alpha) - lgamma(alpha), digamma(y + alpha) - digamma(alpha):
    from the tables where y is a count they hold."""
    k = int(y)
    if k == y and 0 <= k < tables.shape[1]:
        return tables[0, k], tables[1, k], tables[2, k]
    return (math.lgamma(y + 1), math.lgamma(y + alpha) - constants[0],
            _digamma(y + alpha) - constants[1])


@numba.njit(cache=True)
def _jets(code, y, eta, aux, constants, tables, out, full):
    """log p(y | eta) and its derivatives (JETS values) for one campaign into `out`; without
    `full`, only the first two eta-derivatives (what the mode search needs) are meant to be
    read, and the special functions of log p itself are skipped. `constants`: _constants;
    `tables`: _count_tables."""
    if code == 0:                                   # gaussian, aux = (sigma,)
        sigma = aux[0]
        _gaussian_jets(y - eta, sigma, out)
        out[0] = -0.5 * ((y - eta) / sigma) ** 2 - constants[0] - _HALF_LOG_2PI
    elif code == 1:                                 # poisson
        mean = math.exp(eta)
        out[0] = y * eta - mean - _count_terms(y, 1.0, constants, tables)[0] if full else 0.0
        out[1] = y - mean
        for k in range(2, 6):
            out[k] = -mean
        for k in range(6, 11):
            out[k] = 0.0
    elif code == 2:                                 # negative binomial (NB2), aux = (alpha,)
        alpha = aux[0]
        ratio = alpha * math.exp(-eta)                  # alpha / mu
        share = 1.0 / (1.0 + ratio)                     # mu / (alpha + mu)
        scale = y + alpha
        out[1] = y - scale * share
        _logistic(scale, share, out)
        if not full:
            return
        log_alpha = constants[2]
        log_total = eta + math.log1p(ratio)             # log(alpha + mu)
        log_factorial, log_rising, digamma_rising = _count_terms(y, alpha, constants, tables)
        out[0] = (log_rising - log_factorial
                  + alpha * (log_alpha - log_total) + y * (eta - log_total))
        # t_k = -d^k log p / scale; d share / d alpha = -share (1 - share) / alpha, so
        # d(d^k log p) / d alpha = -t_k + scale t_(k+1) / alpha
        t1 = share
        t2 = -out[2] / scale
        t3 = -out[3] / scale
        t4 = -out[4] / scale
        t5 = -out[5] / scale
        out[6] = (digamma_rising + log_alpha - log_total + share
                  - y * (1 - share) / alpha)
        out[7] = -t1 + scale * t2 / alpha
        out[8] = -t2 + scale * t3 / alpha
        out[9] = -t3 + scale * t4 / alpha
        out[10] = -t4 + scale * t5 / alpha
    elif code == 3:                                 # bernoulli, logit link
        share = 1 / (1 + math.exp(-eta))
        out[0] = y * eta - (max(eta, 0.0) + math.log1p(math.exp(-abs(eta))))
        out[1] = y - share
        _logistic(1.0, share, out)
        for k in range(6, 11):
            out[k] = 0.0
    else:                                           # censored lognormal, aux = (sigma,)
        sigma = aux[0]
        if y < 1.0:
            logged = math.log(y)
            _gaussian_jets(logged - eta, sigma, out)
            out[0] = (-0.5 * ((logged - eta) / sigma) ** 2 - constants[0] - _HALF_LOG_2PI
                      - logged)
        else:
            # log Phi(a), a = eta / sigma: its a-derivatives D_k are polynomials in a and the
            # inverse Mills ratio r (r' = -r (a + r)); d^k/d eta = D_k / sigma^k, and
            # d(D_k / sigma^k) / d sigma = -(a D_(k+1) + k D_k) / sigma^(k+1)
            a = eta / sigma
            x = -a / math.sqrt(2.0)
            r = _SQRT_2_OVER_PI / _erfcx(x)
            if a > 0:
                log_phi = math.log1p(-0.5 * math.erfc(a / math.sqrt(2.0)))
            else:
                log_phi = math.log(0.5 * _erfcx(x)) - 0.5 * a * a
            slope = -r * (a + r)
            d1, d2 = r, slope
            d3 = r * ((a + r) * (a + 2 * r) - 1)
            d4 = (slope * ((a + r) * (a + 2 * r) - 1)
                  + r * ((1 + slope) * (a + 2 * r) + (a + r) * (1 + 2 * slope)))
            d5 = r * (a * a * (a * a - 6) + 3 + r * (a * (15 * a * a - 25) + r * (
                50 * a * a - 20 + r * (60 * a + 24 * r))))
            out[0] = log_phi
            out[1] = d1 / sigma
            out[2] = d2 / sigma**2
            out[3] = d3 / sigma**3
            out[4] = d4 / sigma**4
            out[5] = d5 / sigma**5
            out[6] = -a * d1 / sigma
            out[7] = -(a * d2 + d1) / sigma**2
            out[8] = -(a * d3 + 2 * d2) / sigma**3
            out[9] = -(a * d4 + 3 * d3) / sigma**4
            out[10] = -(a * d5 + 4 * d4) / sigma**5


@numba.njit(cache=True)
def _sums(code, y, eta, aux, inner, n_inner, first, weight):
    """The search's per-county first derivative and curvature (-second) at eta, each county's
    curvature kept non-negative so that the search's H stays positive definite."""
    first[:] = 0.0
    weight[:] = 0.0
    out = np.empty(JETS)
    constants = _constants(code, aux)
    no_tables = np.zeros((3, 0))
    for i in range(len(y)):
        _jets(code, y[i], eta[i], aux, constants, no_tables, out, False)
        first[inner[i]] += out[1]
        weight[inner[i]] -= out[2]
    for c in range(n_inner):
        weight[c] = max(weight[c], 0.0)


@numba.njit(cache=True)
def _mode_sums(code, y, eta, aux, inner, n_inner):
    """At the mode: per county, the sums of its campaigns' jets (n_inner x JETS). Everything
    the value and the gradient in the sds and the family's parameter need is a county sum;
    only the gradient in f is per campaign (`_campaign_gradient`), so no campaign's jets are
    kept."""
    sums = np.zeros((n_inner, JETS))
    out = np.empty(JETS)
    constants = _constants(code, aux)
    tables = _count_tables(code, aux, y)
    for i in range(len(y)):
        c = inner[i]
        _jets(code, y[i], eta[i], aux, constants, tables, out, True)
        for k in range(JETS):
            sums[c, k] += out[k]
    return sums


@numba.njit(cache=True)
def _factored_mode_sums(code, y, f, exp_f, shift, inner, aux, constants, tables, offset):
    """`_mode_sums` for a family in FACTORED_CODES from exp(f), the county shifts and their
    logs (`offset`): `_jets`'s formulas written out for these families, so that the loop
    holds one log a campaign and no call."""
    sums = np.zeros((len(shift), JETS))
    alpha = aux[0] if code == 2 else 1.0
    log_alpha = constants[2]
    for i in range(len(y)):
        c = inner[i]
        mean = exp_f[i] * shift[c]
        eta = f[i] + offset[c]
        row = sums[c]
        if code == 1:
            row[0] += y[i] * eta - mean - _count_terms(y[i], 1.0, constants, tables)[0]
            row[1] += y[i] - mean
            for k in range(2, 6):
                row[k] -= mean
            continue
        total = alpha + mean
        share = mean / total
        slope = mean * alpha / (total * total)          # share (1 - share)
        tilt = 1 - 2 * share
        t3 = slope * tilt
        t4 = slope * (1 - 6 * slope)
        t5 = t3 * (1 - 12 * slope)
        if code == 3:
            row[0] += y[i] * eta - math.log1p(mean)
            row[1] += y[i] - share
            row[2] -= slope
            row[3] -= t3
            row[4] -= t4
            row[5] -= t5
            continue
        scale = y[i] + alpha                            # negative binomial (NB2)
        log_total = math.log(total)
        log_factorial, log_rising, digamma_rising = _count_terms(y[i], alpha, constants,
                                                                 tables)
        row[0] += (log_rising - log_factorial + alpha * (log_alpha - log_total)
                   + y[i] * (eta - log_total))
        row[1] += y[i] - scale * share
        row[2] -= scale * slope
        row[3] -= scale * t3
        row[4] -= scale * t4
        row[5] -= scale * t5
        row[6] += digamma_rising + log_alpha - log_total + share - y[i] * (1 - share) / alpha
        row[7] += -share + scale * slope / alpha
        row[8] += -slope + scale * t3 / alpha
        row[9] += -t3 + scale * t4 / alpha
        row[10] += -t4 + scale * t5 / alpha
    return sums


@numba.njit(cache=True)
def _campaign_gradient(code, y, eta, aux, inner, bar_weight, bar_third, bar_fourth, zeta,
                       grad_f):
    """dV/df_i: the campaign's d log p, its share of dPhi (through its county's curvature,
    third and fourth sums) and of the implicit-function term (zeta, per county)."""
    out = np.empty(JETS)
    constants = _constants(code, aux)
    no_tables = np.zeros((3, 0))
    for i in range(len(y)):
        c = inner[i]
        _jets(code, y[i], eta[i], aux, constants, no_tables, out, False)
        grad_f[i] = (out[1] - bar_weight[c] * out[3] + bar_third[c] * out[4]
                     + bar_fourth[c] * out[5] + out[2] * zeta[c])


# The search's pass for a log- or logit-link family (Poisson, negative binomial, Bernoulli)
# takes exp(eta_i) as exp(f_i) exp(tau1 u_c + tau2 v_p): exp(f) once a call, one exp per
# county a step, instead of one per campaign a step. Used where neither factor can overflow.
FACTORED_CODES = (1, 2, 3)
FACTORED_LIMIT = 300.0


@numba.njit(cache=True)
def _shifts(tau1, tau2, u, v, parent, shift):
    """exp(tau1 u_c + tau2 v_p) per county into `shift`; False where one is beyond
    FACTORED_LIMIT."""
    for c in range(len(parent)):
        offset = tau1 * u[c] + tau2 * v[parent[c]]
        if abs(offset) > FACTORED_LIMIT:
            return False
        shift[c] = math.exp(offset)
    return True


@numba.njit(cache=True)
def _factored_sums(code, y, exp_f, tau1, tau2, u, v, inner, parent, aux, shift, first,
                   weight):
    """As `_sums` in the search (first derivative and curvature per county) for a family in
    FACTORED_CODES, from exp(f) (per campaign) and the county shifts' exponentials (`shift`,
    written here). False, with nothing summed, where a shift is beyond FACTORED_LIMIT."""
    if not _shifts(tau1, tau2, u, v, parent, shift):
        return False
    first[:] = 0.0
    weight[:] = 0.0
    alpha = aux[0] if code == 2 else 1.0
    for i in range(len(y)):
        c = inner[i]
        mean = exp_f[i] * shift[c]
        if code == 1:                               # poisson: d = y - mu, -d2 = mu
            first[c] += y[i] - mean
            weight[c] += mean
        else:                                       # share = mu / (alpha + mu)
            total = alpha + mean
            scale = y[i] + alpha if code == 2 else 1.0
            first[c] += y[i] - scale * mean / total
            weight[c] += scale * mean * alpha / (total * total)
    return True


@numba.njit(cache=True)
def _factored_gradient(code, y, exp_f, shift, inner, aux, bar_weight, bar_third, bar_fourth,
                       zeta, grad_f):
    """`_campaign_gradient` for a family in FACTORED_CODES from exp(f) and the county shifts:
    the eta-derivatives 1-5 written out (d2-d5 as `_logistic` gives them; Poisson's are all
    -mu), so that the loop is a few multiplications a campaign."""
    alpha = aux[0] if code == 2 else 1.0
    for i in range(len(y)):
        c = inner[i]
        mean = exp_f[i] * shift[c]
        if code == 1:
            d1, d2 = y[i] - mean, -mean
            d3 = d4 = d5 = d2
        else:
            total = alpha + mean
            share = mean / total
            scale = y[i] + alpha if code == 2 else 1.0
            slope = mean * alpha / (total * total)      # share (1 - share)
            tilt = 1 - 2 * share
            d1 = y[i] - scale * share
            d2 = -scale * slope
            d3 = d2 * tilt
            d4 = d2 * (1 - 6 * slope)
            d5 = d3 * (1 - 12 * slope)
        grad_f[i] = (d1 - bar_weight[c] * d3 + bar_third[c] * d4 + bar_fourth[c] * d5
                     + d2 * zeta[c])
