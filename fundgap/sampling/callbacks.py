"""nutpie's C callbacks, with the gradient copied element by element, cacheable by numba.

nutpie wraps the compiled PyTensor log density in two numba C callbacks (log density with
gradient, and the expansion to the trace's variables). Each copies its result with
`out[...] = values`, and numba compiles that broadcasting assignment together with the
error message it would format on a shape mismatch: its string machinery (str, repr,
concatenation of shapes), seconds in every new process, uncached, whatever the model.
These callbacks do the same with a loop (the shapes are fixed by construction), return
the same codes, and give the same draws; nutpie's own are used when its internals are not
the ones these replace (another nutpie version).

Linking a callback to the log density it calls costs as much again in every process, and
numba cannot cache nutpie's callbacks: its cache key pickles their closures, which hold
functions named afresh in each process. Ours are written from source with no closure and,
where asked (`loop_copy_callbacks(cache_dir=...)`), cached by numba under a key naming
the log density they call: PyTensor's own cache key of its compiled graph.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import inspect
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from weakref import WeakKeyDictionary

import numba
import numpy as np
from numba.core.caching import CacheImpl, _CacheLocator

# nutpie.compile_pymc's factories and the arguments they take (nutpie 0.13-0.16)
_LOGP_ARGS = ["n_dim", "logp_fn", "user_data", "shared_logp", "shared_data"]
_EXPAND_ARGS = ["n_dim", "n_expanded", "expand_fn", "user_data", "shared_vars", "shared_data"]
# nutpie's factories while loop_copy_callbacks has replaced them, and the numba cache folder
_STOCK: dict = {}

# nutpie's codes: -1 wrong size, 1 (log density) or -2 (expansion) an exception, 3 a
# non-finite gradient, 4 a non-finite log density
_LOGP_SOURCE = """
def logp_callback(dim, x_, out_, logp_, user_data_):
    if dim != {n_dim}:
        return -1
    try:
        x = numba.carray(x_, ({n_dim},))
        logp_value, gradient = extract(x, user_data_)
        logp_[0] = logp_value
        finite = True
        for i in range({n_dim}):
            out_[i] = gradient[i]
            finite = finite and np.isfinite(gradient[i])
        if not finite:
            return 3
        if not np.isfinite(logp_value):
            return 4
    except Exception:
        return 1
    return 0
"""
_EXPAND_SOURCE = """
def expand_callback(dim, expanded, x_, out_, user_data_):
    if dim != {n_dim} or expanded != {n_expanded}:
        return -1
    try:
        x = numba.carray(x_, ({n_dim},))
        (values,) = extract(x, user_data_)
        for i in range({n_expanded}):
            out_[i] = values[i]
    except Exception:
        return -2
    return 0
"""


class _CallbackLocator(_CacheLocator):
    """Where numba caches a callback: the folder and key `_callback` registered for it."""

    registered: ClassVar[WeakKeyDictionary] = WeakKeyDictionary()

    def __init__(self, py_file: str, folder: Path, key: str) -> None:
        # numba names the file in its warning when code cannot be cached
        self._py_file, self._folder, self._key = py_file, folder, key

    def ensure_cache_path(self) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)

    def get_cache_path(self) -> str:
        return str(self._folder)

    def get_source_stamp(self) -> int:
        return 0  # the key names the source

    def get_disambiguator(self) -> str:
        return self._key

    @classmethod
    def from_function(cls, py_func, py_file):
        entry = cls.registered.get(py_func)
        return None if entry is None else cls(py_file, *entry)


CacheImpl._locator_classes.insert(0, _CallbackLocator)


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


def graph_key(function) -> str | None:
    """PyTensor's cache key of a function compiled by its numba linker (the hash of the
    rewritten graph, its constants included), or None where PyTensor does not cache it."""
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    py_func = getattr(function, "py_func", None)
    return None if py_func is None else CACHED_SRC_FUNCTIONS.get(py_func)


def _scratch_folder() -> Path:
    """A folder for this process's uncacheable callbacks, removed at exit."""
    if "scratch" not in _STOCK:
        _STOCK["scratch"] = Path(tempfile.mkdtemp(prefix="fundgap-callbacks-"))
        atexit.register(shutil.rmtree, _STOCK["scratch"], ignore_errors=True)
    return _STOCK["scratch"]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _callback(template: str, name: str, inner, user_data, shared: list, shared_data: dict,
              **sizes: int):
    """A callback written from `template` with the sizes as literals, calling `inner`
    through nutpie's extraction of the shared data, and registered for numba's cache."""
    extract = _module().make_extraction_fn(inner, shared_data, shared, user_data.dtype)
    source = template.format(**sizes)
    # a module name: numba's cache rebuilds the callback's environment from its globals
    namespace = {"__name__": __name__, "numba": numba, "np": np, "extract": extract}
    exec(compile(source, "<string>", "exec"), namespace)
    function = namespace[name]
    folder = _STOCK.get("cache_dir")
    if folder is not None:
        import nutpie
        import pytensor

        key = graph_key(inner)
        if key is not None and _writable(folder):
            # shared data are read through the user data when called: only their layout
            # enters the code (nutpie starts from the arrays it was given, then replaces each)
            layout = [(name, shared_data[name].dtype.str, shared_data[name].ndim)
                      for name in shared]
            # the module name too: a cached callback's environment names it, and a module
            # since renamed cannot be imported to rebuild it
            text = "\n".join([source, key, repr(layout), str(user_data.dtype), __name__,
                              nutpie.__version__, pytensor.__version__])
            _CallbackLocator.registered[function] = (
                folder, hashlib.sha256(text.encode()).hexdigest())
        else:  # numba is caching (nutpie was asked to), but nothing names this code
            _CallbackLocator.registered[function] = (_scratch_folder(), uuid.uuid4().hex)
    return function


def _logp_callback(n_dim, logp_fn, user_data, shared_logp, shared_data):
    # nutpie's own factory gives the C signature its sampler calls; its function is dropped
    _, signature = _STOCK["logp"](n_dim, logp_fn, user_data, shared_logp, shared_data)
    return _callback(_LOGP_SOURCE, "logp_callback", logp_fn, user_data, shared_logp,
                     shared_data, n_dim=n_dim), signature


def _expand_callback(n_dim, n_expanded, expand_fn, user_data, shared_vars, shared_data):
    _, signature = _STOCK["expand"](n_dim, n_expanded, expand_fn, user_data, shared_vars,
                                    shared_data)
    return _callback(_EXPAND_SOURCE, "expand_callback", expand_fn, user_data, shared_vars,
                     shared_data, n_dim=n_dim, n_expanded=n_expanded), signature


@contextlib.contextmanager
def loop_copy_callbacks(enabled: bool = True, cache_dir: Path | None = None) -> Iterator[bool]:
    """Within the block, nutpie.compile_pymc_model builds these callbacks (where the
    installed nutpie is supported and `enabled`); yields whether it does. With `cache_dir`,
    call compile_pymc_model with `cache=True` (numba's): callbacks of a log density that
    PyTensor caches are then cached in that folder, and a later process loads them."""
    if not (enabled and supported()):
        yield False
        return
    module = _module()
    _STOCK.update(logp=module._make_c_logp_func, expand=module._make_c_expand_func,
                  cache_dir=cache_dir)
    module._make_c_logp_func, module._make_c_expand_func = _logp_callback, _expand_callback
    try:
        yield True
    finally:
        module._make_c_logp_func, module._make_c_expand_func = _STOCK["logp"], _STOCK["expand"]
        _STOCK["cache_dir"] = None
