"""nutpie's C callbacks, with the gradient copied element by element.

nutpie wraps the compiled PyTensor log density in two numba C callbacks (log density with
gradient, and the expansion to the trace's variables). Each copies its result with
`out[...] = values`, and numba compiles that broadcasting assignment together with the
error message it would format on a shape mismatch: its string machinery (str, repr,
concatenation of shapes), 5-7 s in every new process, uncached, for the regional model,
whatever the model. These callbacks do the same with a loop (the shapes are fixed by
construction), return the same codes, and give the same draws; nutpie's own are used when
its internals are not the ones these replace (another nutpie version).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import numba
import numpy as np

# nutpie.compile_pymc's factories and the arguments they take (nutpie 0.13-0.16)
_LOGP_ARGS = ["n_dim", "logp_fn", "user_data", "shared_logp", "shared_data"]
_EXPAND_ARGS = ["n_dim", "n_expanded", "expand_fn", "user_data", "shared_vars", "shared_data"]
# nutpie's factories, while loop_copy_callbacks has replaced them
_STOCK: dict = {}


def _module():
    import nutpie.compile_pymc as compile_pymc

    return compile_pymc


def supported() -> bool:
    """Whether the installed nutpie builds its callbacks the way this module replaces."""
    module = _module()
    try:
        return (list(inspect.signature(module._make_c_logp_func).parameters) == _LOGP_ARGS
                and list(inspect.signature(module._make_c_expand_func).parameters)
                == _EXPAND_ARGS and callable(module.make_extraction_fn))
    except AttributeError:
        return False


def _logp_callback(n_dim, logp_fn, user_data, shared_logp, shared_data):
    # nutpie's own factory gives the C signature its sampler calls; its function is dropped
    _, signature = _STOCK["logp"](n_dim, logp_fn, user_data, shared_logp, shared_data)
    extract = _module().make_extraction_fn(logp_fn, shared_data, shared_logp,
                                           user_data.dtype)

    def logp_callback(dim, x_, out_, logp_, user_data_):
        if dim != n_dim:
            return -1
        try:
            x = numba.carray(x_, (n_dim,))
            logp_value, gradient = extract(x, user_data_)
            logp_[0] = logp_value
            finite = True
            for i in range(n_dim):
                out_[i] = gradient[i]
                finite = finite and np.isfinite(gradient[i])
            if not finite:
                return 3
            if not np.isfinite(logp_value):
                return 4
        except Exception:  # nutpie reads the return code, not the exception
            return 1
        return 0

    return logp_callback, signature


def _expand_callback(n_dim, n_expanded, expand_fn, user_data, shared_vars, shared_data):
    _, signature = _STOCK["expand"](n_dim, n_expanded, expand_fn, user_data, shared_vars,
                                    shared_data)
    extract = _module().make_extraction_fn(expand_fn, shared_data, shared_vars,
                                           user_data.dtype)

    def expand_callback(dim, expanded, x_, out_, user_data_):
        if dim != n_dim or expanded != n_expanded:
            return -1
        try:
            x = numba.carray(x_, (n_dim,))
            (values,) = extract(x, user_data_)
            for i in range(n_expanded):
                out_[i] = values[i]
        except Exception:
            return -2
        return 0

    return expand_callback, signature


@contextlib.contextmanager
def loop_copy_callbacks(enabled: bool = True) -> Iterator[bool]:
    """Within the block, nutpie.compile_pymc_model builds these callbacks (where the
    installed nutpie is supported and `enabled`); yields whether it does."""
    if not (enabled and supported()):
        yield False
        return
    module = _module()
    _STOCK.update(logp=module._make_c_logp_func, expand=module._make_c_expand_func)
    module._make_c_logp_func, module._make_c_expand_func = _logp_callback, _expand_callback
    try:
        yield True
    finally:
        module._make_c_logp_func, module._make_c_expand_func = _STOCK["logp"], _STOCK["expand"]
