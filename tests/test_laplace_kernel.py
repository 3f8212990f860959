"""The compiled Laplace kernel (fundgap.laplace_kernel) against the graph it replaces
(fundgap.laplace.laplace_terms, whose gradient PyTensor takes and whose value is tested
against quadrature in test_laplace.py): the same value and the same gradient, per family,
with one grouping and with counties nested in prefectures."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from fundgap.families import family
from fundgap.laplace import Levels, laplace_terms
from fundgap.laplace_jets import FACTORED_LIMIT, FAMILY_CODES
from fundgap.laplace_kernel import LaplaceMarginal

from conftest import grouped_table

AUXILIARY = {"sigma": 0.7, "dispersion": 2.5}


def _problem(name: str, nested: bool, seed: int = 3):
    table = grouped_table(name, 300, 40, 6, seed, county_sd=0.5, prefecture_sd=0.4)
    inner = table["county_code"].astype(int).to_numpy()
    counties = np.unique(inner)
    inner = np.searchsorted(counties, inner)
    parent = (counties % 6) if nested else np.arange(len(counties))
    rng = np.random.default_rng(seed)
    f = 0.5 + 0.4 * table["x"].to_numpy() + rng.normal(0, 0.1, len(table))
    return table["y"].to_numpy(), f, inner, parent


def _reference(name, y, inner, parent, nested, correct=True):
    record = family(name)
    f, tau_inner, tau_outer = pt.dvector("f"), pt.dscalar("tau_inner"), pt.dscalar("tau_outer")
    aux = {a.name: pt.dscalar(a.name) for a in record.auxiliary}
    levels = Levels(inner, int(parent.size), parent if nested else None,
                    int(parent.max()) + 1 if nested else 0)
    taus = (tau_inner, tau_outer) if nested else (tau_inner,)
    value = laplace_terms(name, y, f, aux, levels, taus, correct=correct).value
    wrt = [f, tau_inner, tau_outer, *aux.values()]
    gradients = pytensor.grad(value, wrt, disconnected_inputs="ignore")
    return pytensor.function(wrt, [value, *gradients], on_unused_input="ignore")


def _kernel(name, y, inner, parent, correct=True):
    record = family(name)
    op = LaplaceMarginal(FAMILY_CODES[name], correct and record.higher is not None)
    f, tau_inner, tau_outer = pt.dvector("f"), pt.dscalar("tau_inner"), pt.dscalar("tau_outer")
    aux = [pt.dscalar(a.name) for a in record.auxiliary]
    outputs = op(y, f, tau_inner, tau_outer, pt.stack(aux) if aux else np.zeros(0), inner,
                 parent, int(parent.max()) + 1)
    value = outputs[0]
    wrt = [f, tau_inner, tau_outer, *aux]
    gradients = pytensor.grad(value, wrt, disconnected_inputs="ignore")
    return pytensor.function(wrt, [value, *gradients], on_unused_input="ignore", mode="NUMBA")


@pytest.mark.parametrize("nested", [False, True], ids=["county", "nested"])
@pytest.mark.parametrize("name", list(FAMILY_CODES))
def test_kernel_value_and_gradient_are_the_graphs(name: str, nested: bool) -> None:
    y, f, inner, parent = _problem(name, nested)
    record = family(name)
    reference = _reference(name, y, inner, parent, nested)
    kernel = _kernel(name, y, inner, parent)
    for tau_inner, tau_outer in [(0.5, 0.4), (-1.3, 0.8), (0.05, -1.1)]:
        args = [f, tau_inner, tau_outer if nested else 0.0,
                *[AUXILIARY[a.name] for a in record.auxiliary]]
        expected, got = reference(*args), kernel(*args)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-9)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-9)
        for k in range(2, len(expected)):
            if k == 3 and not nested:
                continue
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-8,
                                       err_msg=f"gradient {k}")


def test_the_search_per_campaign_where_exp_f_would_overflow() -> None:
    # the search takes exp(eta) as exp(f) exp(county shift) for log- and logit-link
    # families; a linear predictor beyond FACTORED_LIMIT sends it back to one exp per
    # campaign, with the same answer as the graph
    y, f, inner, parent = _problem("bernoulli", True)
    f = f.copy()
    f[0] = FACTORED_LIMIT + 50
    expected = _reference("bernoulli", y, inner, parent, True)(f, 0.5, 0.4)
    got = _kernel("bernoulli", y, inner, parent)(f, 0.5, 0.4)
    for k in range(len(expected)):
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-8)


_PROBE = """
import hashlib, sys
import numpy as np
import pytensor
import pytensor.tensor as pt
from fundgap.laplace_jets import FAMILY_CODES
from fundgap.laplace_kernel import LaplaceMarginal
rng = np.random.default_rng(0)
n, counties, prefectures = 400, 60, 9
inner, parent = rng.integers(0, counties, n), rng.integers(0, prefectures, counties)
f, tau_inner, tau_outer, aux = pt.dvector(), pt.dscalar(), pt.dscalar(), pt.dvector()
y = rng.negative_binomial(2, 0.4, n).astype(float)
value = LaplaceMarginal(FAMILY_CODES["negative_binomial"], True)(
    y, f, tau_inner, tau_outer, aux, inner, parent, prefectures)[0]
function = pytensor.function([f, tau_inner, tau_outer, aux],
                             [value, *pytensor.grad(value, [f, tau_inner, tau_outer, aux])],
                             mode="NUMBA")
digest = hashlib.sha256()
for _ in range(20):
    point = (rng.normal(1, 1, n), rng.normal(0, 1), rng.normal(0, 1), rng.uniform(0.5, 4, 1))
    digest.update(b"".join(np.asarray(o).tobytes() for o in function(*point)))
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_values_do_not_depend_on_whether_the_kernel_was_compiled_or_loaded(tmp_path) -> None:
    # the first process compiles the kernel (numba builds it into PyTensor's wrapper), the
    # second loads it from numba's cache; each compiles PyTensor's graph afresh
    import os
    import subprocess
    import sys

    digests = []
    for run in range(2):
        env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
               "PYTENSOR_FLAGS": f"base_compiledir={tmp_path / f'pytensor{run}'}"}
        result = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True,
                                capture_output=True, text=True)
        digests.append(result.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]


def test_count_tables_are_log_gamma_and_digamma() -> None:
    from scipy.special import digamma, gammaln

    from fundgap.laplace_jets import TABLE_COUNTS, _constants, _count_tables, _count_terms

    alpha = np.array([2.7])
    counts = np.array([0.0, 1, 5, 40, TABLE_COUNTS - 1, TABLE_COUNTS, 5000, 2.5])
    constants = _constants(2, alpha)
    tables = _count_tables(2, alpha, counts)
    assert tables.shape == (3, TABLE_COUNTS)
    for y in counts:
        log_factorial, log_rising, digamma_rising = _count_terms(y, alpha[0], constants, tables)
        np.testing.assert_allclose(log_factorial, gammaln(y + 1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(log_rising, gammaln(y + alpha[0]) - gammaln(alpha[0]),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(digamma_rising, digamma(y + alpha[0]) - digamma(alpha[0]),
                                   rtol=1e-10, atol=1e-10)
