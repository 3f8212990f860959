"""numpyro's NUTS started at the posterior mode, with the mode's curvature as its mass matrix.

numpyro starts from PyMC's initial point with an identity mass matrix; where data are
plentiful the posterior is far narrower than that, and its warm-up must first find both the
bulk and the scales (the million-campaign count model took 550-800 leapfrog steps per
warm-up iteration on an H100; benchmarks/README.md). Here the chains start in the bulk with
the posterior's own scales:

1. the mode, in the sampler's unconstrained space: Adam steps first (each coordinate moves
   at most its learning rate per step, whatever the scale of the gradient), then L-BFGS
   (SciPy) inside a box around where Adam stopped, on the JAX potential;
2. the Hessian there, column by column from Hessian-vector products (JAX, in batches), and
   its inverse: a Laplace approximation of the posterior;
3. each chain's initial point drawn from that approximation (so the chains start apart, as
   R-hat needs), and its marginal variances as numpyro's initial inverse mass matrix.

numpyro's window adaptation then goes on from there as usual. Where the Hessian is not
positive definite (no proper mode, as in a funnel), the variances fall back to the inverse of
its diagonal where that is positive, else 1; none is larger than 1, numpyro's default.

Measured (benchmarks/warm_start.py, count mediator at 20,000 campaigns): 6 % fewer warm-up
steps, the same steps per draw after it. The joint mode of a hierarchy is not where its mass
is, so its Laplace scales for the count equation's intercepts and group sds are off by
factors of 17-200; nutpie's own adaptation (`--backend nutpie-jax`) needs far fewer steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor

from fundgap import names

# Adam: steps, and a learning rate decaying from the first to the second
ADAM_STEPS = 1000
ADAM_RATES = (0.05, 1e-4)
# L-BFGS searches this far (unconstrained units) either side of Adam's point
LBFGS_BOX = 2.0
# Hessian-vector products evaluated at once: at a million campaigns each holds a few
# per-campaign arrays per product, so 64 keep the memory to a few GB
HVP_BATCH = 64


@dataclass
class WarmStart:
    """Where numpyro's chains start, and what finding it cost."""

    initial_points: list[dict[str, np.ndarray]]  # per chain, by free variable (constrained)
    unconstrained: np.ndarray                    # the same, (chains, size), as numpyro sees it
    inverse_mass_matrix: np.ndarray              # flat, in the order of model.value_vars
    iterations: int                              # L-BFGS iterations to the mode
    converged: bool
    hessian: str                                 # "positive definite" or "diagonal fallback"
    seconds: float

    def record(self) -> dict:
        """What a fit records of it (diagnostics.json)."""
        return {"method": "laplace", "lbfgs_iterations": self.iterations,
                "converged": self.converged, "hessian": self.hessian,
                "seconds": round(self.seconds, 2)}


def laplace_start(model: pm.Model, chains: int, seed: int,
                  max_iterations: int = 5000) -> WarmStart:
    """The mode of `model`'s posterior and a Laplace approximation around it: one initial
    point per chain drawn from it (values of the free variables, as PyMC's `initvals`) and
    its marginal variances as a flat inverse mass matrix."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from pymc.sampling.jax import get_jaxified_logp
    from scipy.optimize import minimize

    started = time.perf_counter()
    # PyMC's flag reads backwards: negative_logp=False gives the potential, -logp
    potential = get_jaxified_logp(model, negative_logp=False)
    point = _off_the_fold(model, model.initial_point())
    dtype = pytensor.config.floatX
    flat0, unravel = ravel_pytree([jnp.asarray(point[v.name], dtype=dtype)
                                   for v in model.value_vars])

    def flat_potential(x):
        return potential(unravel(x))

    gradient = jax.grad(flat_potential)
    value_and_grad = jax.jit(jax.value_and_grad(flat_potential))

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, slope = value_and_grad(jnp.asarray(x, dtype=dtype))
        return float(value), np.asarray(slope, dtype=float)

    near = np.asarray(_adam(gradient, flat0), dtype=float)
    found = minimize(objective, near, jac=True, method="L-BFGS-B",
                     bounds=[(x - LBFGS_BOX, x + LBFGS_BOX) for x in near],
                     options={"maxiter": max_iterations, "maxcor": 20})
    # L-BFGS starts at Adam's point, so it ends no worse unless its values broke down
    mode = np.asarray(found.x, dtype=float) if np.isfinite(found.fun) else near
    hessian = _hessian(gradient, jnp.asarray(mode, dtype=dtype))
    variances, kind = _laplace_variances(hessian)
    # a direction the mode barely pins (a group sd whose Hessian is nearly flat) gets no
    # wider start, nor larger mass-matrix variance, than numpyro's own default of 1
    variances = np.minimum(variances, 1.0)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    starts = mode + np.sqrt(variances) * rng.standard_normal((chains, mode.size))
    return WarmStart(_constrained(model, [unravel(jnp.asarray(s, dtype=dtype))
                                          for s in starts]), starts.astype(dtype),
                     variances.astype(dtype), int(found.nit), bool(found.success), kind,
                     time.perf_counter() - started)


def _off_the_fold(model: pm.Model, point: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`point` with every folded sd (fundgap.build._group_sds) at its prior's
    scale rather than at zero. The posterior is symmetric in a signed sd, so its gradient
    there is zero: where the data want a positive sd, zero is a saddle, and the search for
    the mode would stop on it (on the regional model: after 9 L-BFGS iterations, with a
    Hessian that is not positive definite). Done here, not as the sd's `initval` in the
    model: PyMC's model-to-graph conversion (freeze_dims_and_data, which nutpie's compile
    path uses) refuses models with non-default initial values."""
    moved = dict(point)
    for rv in model.free_RVs:
        if names.is_folded(rv.name):
            scale = rv.owner.op.dist_params(rv.owner)[1]
            value = model.rvs_to_values[rv].name
            moved[value] = np.full_like(point[value], scale.eval())
    return moved


def _adam(gradient, start):
    """ADAM_STEPS of Adam (Kingma and Ba 2015) on a function with this `gradient` from
    `start`, the learning rate decaying geometrically through ADAM_RATES; a step whose
    gradient is not finite is skipped."""
    import jax
    import jax.numpy as jnp

    rates = jnp.geomspace(*ADAM_RATES, ADAM_STEPS).astype(start.dtype)
    beta1, beta2 = 0.9, 0.999

    def step(state, inputs):
        x, m, v = state
        rate, t = inputs
        g = gradient(x)
        finite = jnp.all(jnp.isfinite(g))
        g = jnp.where(finite, g, 0)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        update = rate * (m / (1 - beta1**t)) / (jnp.sqrt(v / (1 - beta2**t)) + 1e-12)
        return (jnp.where(finite, x - update, x), m, v), None

    zeros = jnp.zeros_like(start)
    steps = jnp.arange(1, ADAM_STEPS + 1, dtype=start.dtype)
    (x, _, _), _ = jax.jit(lambda: jax.lax.scan(step, (start, zeros, zeros),
                                                (rates, steps)))()
    return x


def _hessian(gradient, at) -> np.ndarray:
    """The Hessian of the function whose `gradient` is given, at `at`: one column per
    Hessian-vector product (forward over reverse), HVP_BATCH at a time."""
    import jax
    import jax.numpy as jnp

    size = at.shape[0]

    def column(index):
        basis = jnp.zeros(size, dtype=at.dtype).at[index].set(1)
        return jax.jvp(gradient, (at,), (basis,))[1]

    columns = jax.jit(lambda: jax.lax.map(column, jnp.arange(size), batch_size=HVP_BATCH))()
    hessian = np.asarray(columns, dtype=float)
    return (hessian + hessian.T) / 2


def _laplace_variances(hessian: np.ndarray) -> tuple[np.ndarray, str]:
    """Marginal variances of the Gaussian with precision `hessian`, and how they were
    found; where it is not positive definite, 1/diagonal where positive, else 1."""
    try:
        factor = np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        factor = None
    if factor is not None:
        inverse_factor = np.linalg.inv(factor)  # H^-1 = L^-T L^-1: variances are column sums
        variances = np.einsum("ij,ij->j", inverse_factor, inverse_factor)
        if np.all(np.isfinite(variances)) and np.all(variances > 0):
            return variances, "positive definite"
    diagonal = np.diag(hessian)
    safe = np.isfinite(diagonal) & (diagonal > 0)
    return np.where(safe, 1 / np.where(safe, diagonal, 1.0), 1.0), "diagonal fallback"


def _constrained(model: pm.Model, points: list[list]) -> list[dict[str, np.ndarray]]:
    """Points in the sampler's unconstrained space (arrays in the order of
    model.value_vars) -> the free variables' values, as PyMC's `initvals` take them."""
    free = {rv.name for rv in model.free_RVs}
    outputs = [v for v in model.unobserved_value_vars if v.name in free]
    to_values = model.compile_fn(outputs, inputs=model.value_vars, on_unused_input="ignore",
                                 point_fn=False)
    return [{v.name: np.asarray(value) for v, value in
             zip(outputs, to_values(*[np.asarray(x) for x in point]), strict=True)}
            for point in points]
