"""Sampling: everything between a built PyMC model and its draws.

- `sample`: the sampler call (nutpie's numba or JAX backend, PyMC's NUTS, numpyro), with
  the compiled model taken from or put into the compile cache.
- `compile_cache`: the compile cache on disk (a repeat fit in a new process loads its
  compiled model) and the patches to numba and nutpie internals that make it possible.
- `callbacks`: nutpie's C callbacks with a loop copy, cached by numba.
- `warm_start`: numpyro's starting points and initial mass matrix (the posterior mode and
  its Laplace approximation).
"""
