"""Compiled models kept on disk, so a repeat fit in a new process does not compile again.

nutpie compiles a PyMC model in two costly steps, and a new process repeats both: PyTensor
rewrites the log density, its gradient and the trace's expansion into the graphs numba
runs (numba's code for those graphs is cached on disk, the rewriting is not), and numba
links them into C callbacks (cached in `fundgap.sampling.callbacks`); benchmarks/README.md
has what each costs. Here the rewritten PyTensor functions are pickled (a pickled PyTensor
function is linked again without being rewritten again) under a key of everything the
model is built from: its structure, every number in its graph, fundgap's source and the
versions of the packages that compile it. A model compiled with its data as inputs is kept
under its data's layout instead, and serves any data of that layout.

The folder is $FUNDGAP_COMPILE_CACHE (set it empty to switch the cache off), else
$XDG_CACHE_HOME/fundgap/compiled, else ~/.cache/fundgap/compiled; the newest
`MAX_ENTRIES` models are kept. Its entries are pickles, as PyTensor's and numba's own caches
are: point it only at a folder that no one else writes to.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import pickle
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pymc as pm

from fundgap.store import source_digest

MAX_ENTRIES = 24
# the packages whose code a compiled model holds or whose pickles it is made of
PACKAGES = ("pymc", "pytensor", "nutpie", "numba", "numpy")
_FORMAT = 1
_MAKE_ARGS = ["model", "mode", "compute_grad", "join_expanded", "pymc_initial_point_fn",
              "var_names"]


def cache_dir() -> Path | None:
    """The cache folder, or None where $FUNDGAP_COMPILE_CACHE switches it off."""
    chosen = os.environ.get("FUNDGAP_COMPILE_CACHE")
    if chosen is not None:
        return Path(chosen).expanduser() if chosen.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fundgap" / "compiled"


def callbacks_dir(folder: Path) -> Path:
    """Where numba keeps the cached callbacks (fundgap.sampling.callbacks) of the models in
    `folder`."""
    return folder / "callbacks"


def model_key(model: pm.Model, structure: tuple, data_values: bool = True) -> str:
    """The key of a model: a hash of `structure` (what fixes its graph, given fundgap's
    source: equations, families, terms, groups, form), every number in it (pm.Data values,
    observed values and the other constants of its log density and deterministics),
    coordinates, free variables, fundgap's source and the packages' versions. Without
    `data_values`, for a model compiled with its data as inputs (nutpie's `with_data` then
    gives it its data), the pm.Data's types and dimensions stand in for their values and
    coordinates."""
    import pytensor
    from pytensor.graph.basic import Constant

    try:
        from pytensor.graph.traversal import ancestors
    except ImportError:  # PyTensor before 2.32
        from pytensor.graph.basic import ancestors

    digest = hashlib.sha256()
    digest.update(repr((_FORMAT, structure, source_digest(),
                        [(name, version(name)) for name in PACKAGES],
                        pytensor.config.floatX, model.check_bounds,
                        [v.name for v in model.free_RVs], data_values)).encode())
    for var in sorted(model.data_vars, key=lambda v: v.name):
        value = np.asarray(var.get_value())
        if data_values:
            _update(digest, var.name, value)
        else:
            digest.update(f"{var.name}|{value.dtype.str}|{value.ndim}".encode())
    if data_values:
        digest.update(repr(sorted((k, tuple(v)) for k, v in model.coords.items())).encode())
    # observed values, group indices and the like: in the graph's order, which the same
    # code builds the same way
    for variable in ancestors([model.logp(), *model.deterministics]):
        if isinstance(variable, Constant):
            _update(digest, "constant", variable.data)
    return digest.hexdigest()


def _update(digest, name: str, value: object) -> None:
    array = np.asarray(value)
    if array.dtype.hasobject:  # slices, None: their text, not their addresses
        digest.update(f"{name}|{value!r}".encode())
        return
    digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())


def supported() -> bool:
    """Whether the installed nutpie makes its PyTensor functions the way this module
    caches them."""
    import nutpie.compile_pymc as compile_pymc

    try:
        return (list(inspect.signature(compile_pymc._make_functions).parameters)
                == _MAKE_ARGS and callable(compile_pymc._rv_dict_to_flat_array_wrapper))
    except AttributeError:
        return False


class _Unpickler(pickle.Unpickler):
    """pickle's, with the state PyTensor's __getstate__ drops restored: ReplaceValidate's
    history and its FunctionGraph's execute_callbacks_times. Without them every in-place
    rewrite PyTensor runs as it relinks an unpickled Scan's inner graph (the Laplace form's
    mode search) fails and logs a traceback."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("pytensor.graph.features", "ReplaceValidate"):
            return _ReplaceValidate
        return super().find_class(module, name)


def _replace_validate() -> type:
    from pytensor.graph.features import ReplaceValidate

    class Restored(ReplaceValidate):
        def unpickle(self, fgraph) -> None:  # FunctionGraph.__setstate__ calls it
            self.__dict__.setdefault("history", {})
            if not hasattr(fgraph, "execute_callbacks_times"):
                fgraph.execute_callbacks_times = defaultdict(float)
            super().unpickle(fgraph)

    Restored.__name__ = Restored.__qualname__ = "ReplaceValidate"
    return Restored


_ReplaceValidate = _replace_validate()


def _load(path: Path) -> tuple | None:
    try:
        with path.open("rb") as handle:
            return _Unpickler(handle).load()
    except OSError:  # none yet, or no folder to hold one
        return None
    except Exception:  # a file from a foreign write, or a package changed: compile afresh
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None


def _store(path: Path, entry: tuple) -> None:
    """Write atomically, then keep the newest MAX_ENTRIES entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            pickle.dump(entry, stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(scratch, path)
    finally:
        Path(scratch).unlink(missing_ok=True)
    _prune(path.parent)


def _prune(folder: Path) -> None:
    """Keep the newest MAX_ENTRIES models, and numba's callbacks (two per model: log
    density, expansion; fundgap.sampling.callbacks) for twice as many."""
    models = sorted(folder.glob("*.pkl"), key=_modified, reverse=True)
    for old in models[MAX_ENTRIES:]:
        old.unlink(missing_ok=True)
    callbacks: dict[str, list[Path]] = {}
    for file in callbacks_dir(folder).glob("*.nb[ic]"):
        callbacks.setdefault(file.name.split(".py")[0], []).append(file)
    groups = sorted(callbacks.values(), key=lambda files: max(map(_modified, files)),
                    reverse=True)
    for files in groups[2 * MAX_ENTRIES:]:
        for file in files:
            file.unlink(missing_ok=True)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by another process meanwhile
        return 0.0


@contextlib.contextmanager
def cached_functions(key: str | None, folder: Path | None) -> Iterator[dict]:
    """Within the block, nutpie.compile_pymc_model takes its rewritten PyTensor functions
    from `folder`/`key`.pkl where that exists, and stores them there where not. Yields a
    dict whose "compile_cache" is then "hit", "stored", "not stored (...)", or "off" (no
    key or folder, or another nutpie)."""
    outcome = {"compile_cache": "off"}
    if key is None or folder is None or not supported():
        yield outcome
        return
    import nutpie.compile_pymc as compile_pymc

    stock = compile_pymc._make_functions
    path = folder / f"{key}.pkl"

    def make_functions(model, **kwargs):
        entry = _load(path)
        free = [model.rvs_to_values[var].name for var in model.free_RVs]
        if entry is not None and entry[-1][0][:len(free)] == free:
            n_dim, n_expanded, logp_fn, expand_fn, shape_info = entry
            names, _, shapes = shape_info
            initial_point = compile_pymc._rv_dict_to_flat_array_wrapper(
                kwargs["pymc_initial_point_fn"], names=names[:len(free)],
                shapes=shapes[:len(free)])
            os.utime(path)  # the newest entries are the ones kept
            outcome["compile_cache"] = "hit"
            return n_dim, n_expanded, logp_fn, expand_fn, initial_point, shape_info
        made = stock(model, **kwargs)
        n_dim, n_expanded, logp_fn, expand_fn, _, shape_info = made
        try:
            _store(path, (n_dim, n_expanded, logp_fn, expand_fn, shape_info))
            outcome["compile_cache"] = "stored"
        except (OSError, pickle.PicklingError, TypeError, AttributeError) as error:
            # a full disk or a graph that does not pickle costs the next fit time, not this one
            outcome["compile_cache"] = f"not stored ({type(error).__name__})"
        return made

    compile_pymc._make_functions = make_functions
    try:
        yield outcome
    finally:
        compile_pymc._make_functions = stock
