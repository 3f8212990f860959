"""Correlated campaign-level errors across Gaussian equations, intercepts integrated out exactly.

A spec's `correlated_errors` names Gaussian mediator equations with the same groupings. Their
errors, one K-vector per campaign, are N(0, Sigma) with Sigma = diag(sigma) R diag(sigma)
and an LKJ prior on the correlation R (as brms's residual correlations); each equation keeps
its own county and prefecture intercepts, independent across equations (T = diag(tau_c^2),
W = diag(tau_p^2)). Without this, the mediators' equations are independent while their
errors are not (the data's residual correlations reach 0.45), and the interval of the total
effect and of any sum of indirect effects misses the cross terms.

For residuals r_i = y_i - (Z_k theta_k)_k, county sums s_c and campaign counts n_c, the
stacked covariance of a county's campaigns is I (x) Sigma + J (x) T: within-county deviations
have covariance Sigma, and s_c | prefecture level v ~ N(n_c v, n_c (Sigma + n_c T)). With
H_c = (Sigma + n_c T)^-1 (one per distinct county size), M_p = sum_{c in p} n_c H_c,
b_p = sum_{c in p} H_c s_c, D = diag(tau_p) and B_p = I + D M_p D:

    -2 log L = n K log(2 pi) + (n - C) log|Sigma| + sum_c log|Sigma + n_c T|
               + tr(Sigma^-1 (R - sum_c s_c s_c' / n_c)) + sum_c s_c' H_c s_c / n_c
               + sum_p (log|B_p| - b_p' D B_p^-1 D b_p)

where R = sum_i r_i r_i' comes from the stacked cross-products of the designs and responses,
so a gradient costs O(counties x K^2 + prefectures x K^3) whatever the number of campaigns.
With one grouping the last line is absent; with none, C = 0 and only the first two lines'
Sigma terms remain. `draw_intercepts` then draws every equation's intercepts jointly from
their exact conditional posterior, so the saved posterior has the same variables as the
independent form.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
from scipy import sparse

from fundgap import names
from fundgap.correlated_kernel import JointGaussianMarginal
from fundgap.design import Design, group_dim
from fundgap.lkj import add_error_covariance
from fundgap.marginal import size_table, standardised_design

# the draws whose intercepts are drawn at once (each holds draws x prefectures x K^2)
DRAW_CHUNK = 256
# the statistics the graph form reads (the compiled form reads its Op's STATISTICS)
GRAPH_STATISTICS = ("n", "ZtZ", "ZtY", "YtY", "inner_n", "inner_Z", "inner_Y", "inner_parent",
                    "n_outer", "size_values", "size_counts", "size_index", "outer_sizes")
# the dim of the block's responses in the explicit form's joint likelihood
ERROR_EQUATION_DIM = "error_equation"


@dataclass
class JointMember:
    """One equation of a correlated block, as fundgap.build leaves it: its coefficients
    ([alpha, beta_std], the exact form) or linear predictor per campaign (explicit), its
    group sds by dim, and its sigma's prior scale."""

    predictor: pt.TensorVariable
    sds: dict[str, pt.TensorVariable]
    sigma_scale: pt.TensorVariable


@dataclass
class JointStatistics:
    """What the joint marginal likelihood of K Gaussian equations needs.

    The equations' standardised designs are stacked side by side (P columns in all; equation
    k's are columns offsets[k]:offsets[k + 1]); the inner level is the innermost grouping.
    """

    n: int
    ZtZ: np.ndarray            # (P, P) cross-products of the stacked designs
    ZtY: np.ndarray            # (P, K)
    YtY: np.ndarray            # (K, K)
    inner_n: np.ndarray        # (C,) campaigns per inner level
    inner_Z: np.ndarray        # (C, P) sums of the stacked design per inner level
    inner_Y: np.ndarray        # (C, K) sums of the responses per inner level
    inner_parent: np.ndarray   # (C,) outer level of each inner level (empty without one)
    n_outer: int
    size_values: np.ndarray    # (S,) the distinct inner level sizes
    size_counts: np.ndarray    # (S,) how many inner levels have each
    size_index: np.ndarray     # (C,) each inner level's size, as an index into size_values
    outer_sizes: np.ndarray    # (O, S) how many inner levels of each size each outer one has
    # inner_Z with the equations' identical blocks once (mediator equations usually share
    # their design): the compiled kernel reads a quarter of the memory for four mediators.
    # Block g is columns distinct_starts[g]:distinct_starts[g + 1]; equation k uses
    # block distinct_of[k].
    distinct_Z: np.ndarray     # (C, P_distinct)
    distinct_starts: np.ndarray
    distinct_of: np.ndarray    # (K,)
    # the inner levels ordered by size: size s's are size_order[size_starts[s]:...[s + 1]]
    size_order: np.ndarray
    size_starts: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


def offsets(design: Design, equations: tuple[str, ...]) -> np.ndarray:
    """Where each equation's standardised columns (intercept first) start in the stack."""
    widths = [len(design.equations[name].terms) + 1 for name in equations]
    return np.concatenate([[0], np.cumsum(widths)])


def joint_statistics(design: Design, equations: tuple[str, ...]) -> JointStatistics:
    """The stacked cross-products and per-level sums of `equations` (one pass over the rows;
    a design reduced in chunks by fundgap.reduce already holds them)."""
    block = tuple(equations) == design.spec.correlated_errors
    if block and design.joint_statistics is not None:   # reduced in chunks, or computed before
        return design.joint_statistics
    Z = np.column_stack([standardised_design(design.equations[name]) for name in equations])
    Y = np.column_stack([design.equations[name].y for name in equations])
    groups = design.equations[equations[0]].groups
    if groups:
        index = design.index[groups[-1]]
        levels = len(design.levels[groups[-1]])
    else:
        index, levels = np.zeros(len(Y), dtype=int), 0
    inner_Z, inner_Y = np.zeros((levels, Z.shape[1])), np.zeros((levels, Y.shape[1]))
    if groups:
        np.add.at(inner_Z, index, Z)
        np.add.at(inner_Y, index, Y)
    inner_n = np.bincount(index, minlength=levels).astype(float) if groups else np.zeros(0)
    nested = len(groups) == 2
    # kept on the design: the model, the intercept draws and fit.json's OLS figure read them
    stats = from_sums(
        len(Y), Z.T @ Z, Z.T @ Y, Y.T @ Y, inner_n, inner_Z, inner_Y,
        design.parent(groups[-1], groups[0]) if nested else np.zeros(0, int),
        len(design.levels[groups[0]]) if nested else 0, offsets(design, equations))
    if block:
        design.joint_statistics = stats
    return stats


def from_sums(n: int, ZtZ: np.ndarray, ZtY: np.ndarray, YtY: np.ndarray,
              inner_n: np.ndarray, inner_Z: np.ndarray, inner_Y: np.ndarray,
              parent: np.ndarray, n_outer: int, starts: np.ndarray) -> JointStatistics:
    """JointStatistics from the sums (on the standardised designs, equation k's columns
    starts[k]:starts[k + 1]) and the levels' layout."""
    blocks = [inner_Z[:, starts[k]:starts[k + 1]] for k in range(len(starts) - 1)]
    distinct: list[np.ndarray] = []
    distinct_of = []
    for block in blocks:
        # equal designs (sums accumulated in chunks and mapped per equation can differ in
        # the last bits)
        same = next((g for g, seen in enumerate(distinct) if seen.shape == block.shape
                     and np.allclose(seen, block, rtol=1e-12,
                                     atol=1e-12 * max(1.0, float(np.abs(block).max(
                                         initial=0.0))))), None)
        if same is None:
            distinct.append(block)
            same = len(distinct) - 1
        distinct_of.append(same)
    widths = [block.shape[1] for block in distinct]
    size_values, size_counts = size_table(inner_n)
    size_index = np.searchsorted(size_values, inner_n)
    outer_sizes = np.zeros((n_outer, len(size_values)))
    if n_outer:
        np.add.at(outer_sizes, (parent, size_index), 1.0)
    return JointStatistics(
        n=n, ZtZ=ZtZ, ZtY=ZtY, YtY=YtY, inner_n=inner_n, inner_Z=inner_Z, inner_Y=inner_Y,
        inner_parent=parent, n_outer=n_outer, size_values=size_values,
        size_counts=size_counts, size_index=size_index, outer_sizes=outer_sizes,
        distinct_Z=np.column_stack(distinct) if distinct else np.zeros((len(inner_n), 0)),
        distinct_starts=np.concatenate([[0], np.cumsum(widths)]).astype(int),
        distinct_of=np.asarray(distinct_of, dtype=int),
        size_order=np.argsort(size_index, kind="stable"),
        size_starts=np.concatenate([[0], np.cumsum(size_counts)]).astype(int))


def _stacked_coefficients(thetas: list, starts: np.ndarray):
    """Theta as a (P, K) matrix: equation k's coefficients in its own rows of column k."""
    matrix = pt.zeros((int(starts[-1]), len(thetas)))
    for k, theta in enumerate(thetas):
        matrix = pt.set_subtensor(matrix[int(starts[k]):int(starts[k + 1]), k], theta)
    return matrix


def _cholesky(entry, size: int) -> dict:
    """The lower Cholesky factor {(i, j): tensor} of symmetric positive definite matrices
    given by `entry(i, j)` (i >= j), each entry a tensor over a batch (or a scalar).

    Written out entry by entry: K is small (the mediators), and a batch of thousands of
    K x K factorisations as elementwise vector operations is cheap, where PyTensor's
    batched LAPACK calls and their gradients (one call per matrix) dominated the sampler's
    time (benchmarks/README.md)."""
    factor = {}
    for j in range(size):
        factor[j, j] = pt.sqrt(entry(j, j) - sum(factor[j, k] ** 2 for k in range(j)))
        for i in range(j + 1, size):
            factor[i, j] = (entry(i, j) - sum(factor[i, k] * factor[j, k] for k in range(j))
                            ) / factor[j, j]
    return factor


def _logdet(factor: dict, size: int):
    return 2 * sum(pt.log(factor[i, i]) for i in range(size))


def _forward_solve(factor: dict, values: list, size: int) -> list:
    """w with L w = values (entry by entry)."""
    solved = []
    for i in range(size):
        solved.append((values[i] - sum(factor[i, k] * solved[k] for k in range(i)))
                      / factor[i, i])
    return solved


def _inverse(factor: dict, size: int) -> dict:
    """{(i, j): tensor} of A^-1 = L^-T L^-1 (i >= j; symmetric) from A's factor L."""
    lower = {}
    for i in range(size):
        lower[i, i] = 1 / factor[i, i]
        for j in range(i):
            lower[i, j] = -sum(factor[i, k] * lower[k, j] for k in range(j, i)) / factor[i, i]
    return {(i, j): sum(lower[k, i] * lower[k, j] for k in range(i, size))
            for i in range(size) for j in range(i + 1)}


def _trace(inverse: dict, matrix, size: int):
    """tr(A^-1 M) for symmetric M, from the entries of A^-1 (i >= j)."""
    return sum((1 if i == j else 2) * inverse[i, j] * matrix[i, j]
               for i in range(size) for j in range(i + 1))


def joint_marginal_loglik(stats: JointStatistics, thetas: list, starts: np.ndarray,
                          chol_sigma, tau_inner=None, tau_outer=None):
    """The joint marginal log likelihood (a PyTensor scalar) of K Gaussian equations with
    correlated errors (Sigma = chol_sigma chol_sigma') and independent intercepts with sds
    `tau_inner` and `tau_outer` (K-vectors; None where the equations have no such level).
    `thetas` are the equations' [alpha, beta_std] vectors, `starts` their offsets."""
    K = len(thetas)
    coefficients = _stacked_coefficients(thetas, starts)
    ZtTheta = pt.dot(stats.ZtY.T, coefficients)                    # Y'Z Theta
    residual_products = (stats.YtY - ZtTheta - ZtTheta.T
                         + coefficients.T @ pt.dot(stats.ZtZ, coefficients))
    sigma = chol_sigma @ chol_sigma.T
    sigma_factor = _cholesky(lambda i, j: sigma[i, j], K)
    logdet_sigma = _logdet(sigma_factor, K)
    sigma_inverse = _inverse(sigma_factor, K)
    if tau_inner is None:
        value = stats.n * logdet_sigma + _trace(sigma_inverse, residual_products, K)
        return -0.5 * (stats.n * K * np.log(2 * np.pi) + value)
    sums = stats.inner_Y - pt.dot(stats.inner_Z, coefficients)    # (C, K)
    within = residual_products - pt.dot((sums / stats.inner_n[:, None]).T, sums)
    inner_var = tau_inner**2
    # H_s = (Sigma + n_s T)^-1 per distinct county size s, each entry an (S,) vector
    size_factor = _cholesky(lambda i, j: sigma[i, j] + (stats.size_values * inner_var[i]
                                                        if i == j else 0.0), K)
    size_precision = _inverse(size_factor, K)
    # per county: H_c s_c
    precision = {key: value[stats.size_index] for key, value in size_precision.items()}
    columns = [sums[:, k] for k in range(K)]
    weighted = [sum(precision[max(i, j), min(i, j)] * columns[j] for j in range(K))
                for i in range(K)]
    value = ((stats.n - stats.inner_n.shape[0]) * logdet_sigma
             + pt.sum(stats.size_counts * _logdet(size_factor, K))
             + _trace(sigma_inverse, within, K)
             + sum(pt.sum(weighted[i] * columns[i] / stats.inner_n) for i in range(K)))
    if tau_outer is not None:
        # B_p = I + D M_p D with M_p = sum over sizes of (levels of that size in p) n_s H_s,
        # and b_p = sum_{c in p} H_c s_c
        outer_m = {key: pt.dot(stats.outer_sizes, stats.size_values * h)
                   for key, h in size_precision.items()}
        d = tau_outer
        block = _cholesky(lambda i, j: (1.0 if i == j else 0.0) + d[i] * d[j] * outer_m[i, j],
                          K)
        zeros = pt.zeros(stats.n_outer)
        scaled_b = [d[i] * pt.inc_subtensor(zeros[stats.inner_parent], weighted[i])
                    for i in range(K)]
        solved = _forward_solve(block, scaled_b, K)
        value = value + pt.sum(_logdet(block, K)) - sum(pt.sum(w**2) for w in solved)
    return -0.5 * (stats.n * K * np.log(2 * np.pi) + value)


def ols_residual_correlation(stats: JointStatistics, starts: np.ndarray) -> np.ndarray:
    """The correlations of the equations' OLS residuals (each equation by least squares on
    its own design, intercepts not separated): the frequentist figure beside the posterior
    error correlations, from the same cross-products (rows or chunks alike)."""
    K = len(starts) - 1
    coefficients = np.zeros((int(starts[-1]), K))
    for k in range(K):
        block = slice(int(starts[k]), int(starts[k + 1]))
        coefficients[block, k] = np.linalg.lstsq(stats.ZtZ[block, block], stats.ZtY[block, k],
                                                 rcond=None)[0]
    fitted = stats.ZtY.T @ coefficients
    products = stats.YtY - fitted - fitted.T + coefficients.T @ stats.ZtZ @ coefficients
    scale = np.sqrt(np.diag(products))
    return products / np.outer(scale, scale)


def correlation_table(summary: pd.DataFrame, record: dict) -> pd.DataFrame:
    """The error correlations as the report shows them: per pair the posterior mean and
    95% interval (highest density), R-hat and bulk ESS from summary.csv, beside the OLS
    residual correlation fit.json records. Empty where the fit has none."""
    ols = record.get("ols_error_correlation", {})
    rows = [{"pair": label[len(names.ERROR_CORRELATION) + 1:-1], **row}
            for label, row in summary.iterrows()
            if str(label).startswith(f"{names.ERROR_CORRELATION}[")]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    return pd.DataFrame({
        "errors of": frame["pair"],
        "posterior mean": frame["mean"].map(lambda v: f"{v:.3f}"),
        "95% interval": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in
                         zip(frame["hdi_2.5%"], frame["hdi_97.5%"], strict=True)],
        "R-hat": frame["r_hat"].map(lambda v: f"{v:.3f}"),
        "bulk ESS": frame["ess_bulk"].map(lambda v: f"{v:,.0f}"),
        "OLS residuals": frame["pair"].map(lambda p: f"{ols[p]:.3f}" if p in ols else "–")})


def add_joint_likelihood(design: Design, equations: tuple[str, ...],
                         members: dict[str, JointMember], exact: bool,
                         compiled: bool = True) -> None:
    """The block's likelihood in the model in context: its errors' covariance, then (`exact`)
    the joint marginal with every intercept integrated out, its statistics as pm.Data, or
    (explicit) a multivariate normal for each campaign's responses around the linear
    predictors, which hold the intercepts. `compiled` takes the one-operation form of the
    joint marginal (fundgap.correlated_kernel: numba and PyMC backends); otherwise the
    graph, which JAX can trace."""
    chol = add_error_covariance(equations, [pm.HalfNormal(names.sigma(n),
                                                          members[n].sigma_scale)
                                            for n in equations])
    if not exact:
        Y = np.column_stack([design.equations[name].y for name in equations])
        observed = pm.Data(f"y_{ERROR_EQUATION_DIM}", Y,
                           dims=("campaign", ERROR_EQUATION_DIM))
        mean = pt.stack([members[name].predictor for name in equations], axis=1)
        pm.MvNormal(f"responses_{ERROR_EQUATION_DIM}", mu=mean, chol=chol, observed=observed,
                    dims=("campaign", ERROR_EQUATION_DIM))
        return
    values = joint_statistics(design, equations).as_dict()
    # only what the chosen form reads: a model compiled with its data as inputs takes new
    # values for exactly its own pm.Data
    used = JointGaussianMarginal.STATISTICS if compiled else GRAPH_STATISTICS
    data = {key: pm.Data(f"joint_{key}", values[key]) for key in used}
    groups = [group_dim(c) for c in design.equations[equations[0]].groups]

    def level(dim: str):
        return pt.stack([members[name].sds[dim] for name in equations])

    thetas = [members[name].predictor for name in equations]
    starts = offsets(design, equations)
    if compiled:
        zeros = pt.zeros(len(equations))
        value = JointGaussianMarginal(len(groups), tuple(starts))(
            pt.concatenate(thetas), chol @ chol.T, level(groups[-1]) if groups else zeros,
            level(groups[0]) if len(groups) == 2 else zeros,
            *(data[key] for key in JointGaussianMarginal.STATISTICS))[0]
    else:
        value = joint_marginal_loglik(SimpleNamespace(**data), thetas, starts, chol,
                                      level(groups[-1]) if groups else None,
                                      level(groups[0]) if len(groups) == 2 else None)
    pm.Potential("marginal_loglik_correlated", value)


def draw_intercepts(design: Design, equations: tuple[str, ...], thetas: list[np.ndarray],
                    covariance: np.ndarray, tau_inner: np.ndarray,
                    tau_outer: np.ndarray | None,
                    rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Draw every equation's intercepts jointly from their exact conditional posterior.

    Arrays are per draw (leading axis): thetas[k] (draws, p_k), the errors' `covariance`
    (draws, K, K), the sds (draws, K). The outer levels first, with the inner ones integrated out:
        v_p | y ~ N(D B_p^-1 D b_p, D B_p^-1 D)
    then each inner level given its outer one:
        u_c | v, y ~ N(T H_c (s_c - n_c v_p), T - n_c T H_c T)
    Returns {equation: {dim: (draws, levels)}}.
    """
    stats = joint_statistics(design, equations)
    starts = offsets(design, equations)
    groups = design.equations[equations[0]].groups
    K, C = len(equations), len(stats.inner_n)
    # every county-level matrix depends on the county's size only: the counties are taken
    # in order of size, so each size's are one slice, and put back in order at the end
    order = stats.size_order
    by_size = [slice(stats.size_starts[s], stats.size_starts[s + 1])
               for s in range(len(stats.size_values))]
    design_rows, responses = stats.inner_Z[order], stats.inner_Y[order]
    nested = len(groups) == 2
    if nested:
        sizes, parent = stats.inner_n[order], stats.inner_parent[order]
        membership = sparse.csr_matrix((np.ones(C), (parent, np.arange(C))),
                                       shape=(stats.n_outer, C))
    inner = np.empty((len(covariance), C, K))
    outer = np.empty((len(covariance), stats.n_outer, K)) if nested else None
    for begin in range(0, len(covariance), DRAW_CHUNK):
        chunk = slice(begin, begin + DRAW_CHUNK)
        sigma = covariance[chunk]
        draws = len(sigma)
        # each equation's block of the stacked design times its own coefficients
        sums = responses[None] - np.stack(
            [thetas[k][chunk] @ design_rows[:, starts[k]:starts[k + 1]].T for k in range(K)],
            axis=-1)                                                          # (d, C, K)
        t = _diagonal(tau_inner[chunk] ** 2)                                  # (d, K, K)
        per_size = sigma[:, None] + stats.size_values[None, :, None, None] * t[:, None]
        precision_size = np.linalg.inv(per_size)                           # H_s, (d, S, K, K)
        if nested:
            weighted = np.empty_like(sums)                                 # H_c s_c
            for s, rows in enumerate(by_size):
                weighted[:, rows] = sums[:, rows] @ _transposed(precision_size[:, s])
            outer_m = np.tensordot(stats.outer_sizes,
                                   stats.size_values[None, :, None, None] * precision_size,
                                   axes=([1], [1])).transpose(1, 0, 2, 3)
            outer_b = (membership @ weighted.transpose(1, 0, 2).reshape(C, -1)).reshape(
                stats.n_outer, draws, K).transpose(1, 0, 2)
            d = np.abs(tau_outer[chunk])[:, None, :]                          # (d, 1, K)
            block = np.eye(K) + d[..., :, None] * outer_m * d[..., None, :]   # B_p
            # v_p = D B^-1 D b + D L^-T z, with B = L L' (B is well conditioned even where
            # an sd is near zero, D B^-1 D is not)
            factor = np.linalg.cholesky(block)
            mean = d * np.linalg.solve(block, (d * outer_b)[..., None])[..., 0]
            noise = rng.standard_normal(outer_b.shape)[..., None]
            outer[chunk] = mean + d * np.linalg.solve(np.swapaxes(factor, -1, -2), noise)[..., 0]
            sums -= sizes[None, :, None] * outer[chunk][:, parent]
        # u_c | v, y ~ N(T H_c (s_c - n_c v_p), T - n_c T H_c T), per size
        gain = t[:, None] @ precision_size                                  # T H_s
        spread = t[:, None] - stats.size_values[None, :, None, None] * (gain @ t[:, None])
        root = _symmetric_root(spread)
        noise = rng.standard_normal(sums.shape)
        for s, rows in enumerate(by_size):
            inner[chunk, rows] = (sums[:, rows] @ _transposed(gain[:, s])
                                  + noise[:, rows] @ _transposed(root[:, s]))
    inner[:, order] = inner.copy()          # back from size order to the levels' order
    out = {}
    for k, name in enumerate(equations):
        out[name] = {group_dim(groups[-1]): np.ascontiguousarray(inner[..., k])}
        if outer is not None:
            out[name][group_dim(groups[0])] = np.ascontiguousarray(outer[..., k])
    return out


def error_covariance(posterior, equations: tuple[str, ...]) -> np.ndarray:
    """The errors' covariance per draw, (draws, K, K), from the saved sigmas and correlations
    of a posterior stacked over (chain, draw) into `sample`."""
    sds = np.stack([posterior[names.sigma(name)].values for name in equations], axis=-1)
    K = len(equations)
    correlation = np.broadcast_to(np.eye(K), (len(sds), K, K)).copy()
    rows, columns = np.triu_indices(K, 1)
    pairs = posterior[names.ERROR_CORRELATION].transpose("sample", ...).values
    correlation[:, rows, columns] = pairs
    correlation[:, columns, rows] = pairs
    return sds[:, :, None] * correlation * sds[:, None, :]


def _transposed(matrices: np.ndarray) -> np.ndarray:
    """(..., K, L) -> (..., L, K): x @ _transposed(A) applies A to each row vector of x."""
    return np.swapaxes(matrices, -1, -2)


def _diagonal(values: np.ndarray) -> np.ndarray:
    """(..., K) -> (..., K, K) diagonal matrices."""
    return values[..., :, None] * np.eye(values.shape[-1])


def _symmetric_root(covariance: np.ndarray) -> np.ndarray:
    """A square root of each (..., K, K) covariance (its symmetric one, which exists where an
    sd is zero and the covariance singular, where a Cholesky factor does not)."""
    values, vectors = np.linalg.eigh(covariance)
    return vectors * np.sqrt(np.clip(values, 0.0, None))[..., None, :]
