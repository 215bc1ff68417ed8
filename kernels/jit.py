"""``kernel``: ``numba.njit`` with an on-disk cache that hits in every new process.

Numba's own ``cache=True`` misses for most of our kernels, for three reasons this
module removes:

- a kernel built by a factory (``_build(load)`` per storage kind) is a closure, and
  Numba keys it on a pickle of the captured values; a captured dispatcher pickles
  with a random per-process UUID, so the key changes every run: every start
  compiles again and adds one more ``.nbc`` file (numba/numba#6845's sibling);
- two dispatchers of one Python function with different options (serial and
  ``parallel=True`` twins) share one key, so one could load the other's code
  (numba/numba#6845);
- a change in a helper of another file (the 16-bit loaders in ``bits.py``) does not
  invalidate a caller's cache entry.

Here the key is (signature, CPU name and features, bytecode, a description of the
captured values by name and options, the kernel's options, a hash of every source
file of ``assay.kernels``). The directory is chosen at first compile, not at import,
so the server can set it from its configuration after the kernels are imported
(``configure``); the default is ``$ASSAY_KERNEL_CACHE_DIR`` or the user cache
directory. A read-only directory (a cache baked into a container image) is used for
loading; what compiles because it missed is then kept in memory only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba.core import caching
from numba.core.dispatcher import Dispatcher

log = logging.getLogger("assay.kernels")

#: Environment variable naming the cache directory ("" turns the disk cache off).
ENV = "ASSAY_KERNEL_CACHE_DIR"

_lock = threading.Lock()
_directory: str | None = None
_sources: str | None = None
_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_warned: set[tuple[str, str]] = set()


def default_directory() -> str:
    """``$ASSAY_KERNEL_CACHE_DIR`` if set (may be empty: off), else the user cache dir."""
    if ENV in os.environ:
        return os.environ[ENV]
    import platformdirs

    return str(Path(platformdirs.user_cache_dir("assay", appauthor=False)) / "kernels")


def configure(directory: str | None) -> None:
    """Use ``directory`` for kernels compiled from now on ("" turns caching off).

    Kernels already compiled in this process keep their code; call before the
    first compile (the server does so before its warm-up).
    """
    global _directory
    with _lock:
        _directory = directory


def directory() -> str:
    """The cache directory in use ("" when caching is off)."""
    global _directory
    with _lock:
        if _directory is None:
            _directory = default_directory()
        return _directory


def stats() -> tuple[int, int]:
    """(cache hits, compiles) summed over every kernel compiled in this process."""
    hits = misses = 0
    for d in list(_dispatchers):
        hits += sum(d._cache_hits.values())
        misses += sum(d._cache_misses.values())
    return hits, misses


def kernel(**options: Any) -> Callable[[Callable[..., Any]], Dispatcher]:
    """Decorator: ``numba.njit(**options)`` plus the stable on-disk cache.

    Parameters
    ----------
    **options : Numba options (``parallel``, ``nogil``, ``fastmath``, ...); they
        are part of the cache key, so serial and parallel twins of one function
        never share an entry.
    """
    if "cache" in options:
        raise TypeError("kernel() always caches; do not pass cache=")

    def wrap(fn: Callable[..., Any]) -> Dispatcher:
        dispatcher = numba.njit(**options)(fn)
        dispatcher._cache = _DeferredCache(dispatcher.py_func, _describe_options(options))
        _dispatchers.add(dispatcher)
        return dispatcher

    return wrap


def _describe_options(options: dict[str, Any]) -> str:
    return ";".join(f"{k}={_describe(v)}" for k, v in sorted(options.items()))


def _describe(value: Any) -> str:
    """A process-independent description of a value a kernel captures.

    Raises ``TypeError`` for anything it cannot describe exactly, so a new kind of
    capture fails at import instead of silently sharing a cache entry.
    """
    if isinstance(value, Dispatcher):
        fn = value.py_func
        return (f"jit:{fn.__module__}.{fn.__qualname__}"
                f"({_describe_options(value.targetoptions)})[{_describe_cells(fn)}]")
    if isinstance(value, bool | int | float | str | bytes | type(None) | np.generic | np.dtype):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, frozenset | set):
        return "{" + ",".join(sorted(_describe(v) for v in value)) + "}"
    if isinstance(value, tuple | list):
        return "(" + ",".join(_describe(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_describe(v)}" for k, v in sorted(value.items())) + "}"
    if callable(value) and hasattr(value, "__qualname__"):
        # Intrinsics, overloads and other typing-time objects defined at module level.
        return f"fn:{getattr(value, '__module__', '?')}.{value.__qualname__}"
    raise TypeError(f"a cached kernel cannot capture a {type(value).__name__}")


def _describe_cells(fn: Callable[..., Any]) -> str:
    cells = fn.__closure__ or ()
    names = fn.__code__.co_freevars
    return ",".join(f"{n}={_describe(c.cell_contents)}" for n, c in zip(names, cells, strict=True))


#: A file that defines compiled code: a decorated kernel, an inlined helper, an intrinsic.
_COMPILED = re.compile(rb"^\s*@(njit|kernel|intrinsic|cuda\.jit)\b|\b(njit|kernel)\(", re.M)


def _source_hash() -> str:
    """Hash of every ``assay.kernels`` file that defines compiled code: a helper edited in
    one file (the 16-bit loaders of ``bits.py``) invalidates the kernels of the others
    that inline it. The Python wrappers around the kernels (input checks, dispatch,
    steppers) cannot change compiled code and are left out, so editing them keeps the
    cache; so is this module, which only decides where entries go."""
    global _sources
    if _sources is None:
        h = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            text = path.read_bytes()
            if path.name != Path(__file__).name and _COMPILED.search(text):
                h.update(path.name.encode())
                h.update(text)
        _sources = h.hexdigest()
    return _sources


class _Locator(caching.UserProvidedCacheLocator):
    """Numba's user-directory locator, pointed at our directory instead of
    ``numba.config.CACHE_DIR`` (which would also capture other libraries' caches)."""

    root = ""

    def __init__(self, py_func: Callable[..., Any], py_file: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(self.root, self.get_suitable_cache_subpath(py_file))

    @classmethod
    def from_function(cls, py_func: Callable[..., Any], py_file: str) -> _Locator:
        return cls(py_func, py_file)


class _StableCache(caching.FunctionCache):
    """A function cache keyed without pickles, tolerant of a read-only directory."""

    def __init__(self, py_func: Callable[..., Any], variant: str, root: str) -> None:
        locator = type("_RootedLocator", (_Locator,), {"root": root})
        impl = type("_Impl", (caching.CompileResultCacheImpl,), {"_locator_classes": [locator]})
        self._impl_class = impl
        self._variant = variant
        super().__init__(py_func)

    def _index_key(self, sig: Any, codegen: Any) -> tuple[Any, ...]:
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        variant = hashlib.sha256("|".join(
            (self._variant, _describe_cells(self._py_func), _source_hash())).encode()).hexdigest()
        return (sig, codegen.magic_tuple(), (code, variant))

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        try:
            return super().load_overload(sig, target_context)
        except OSError as error:  # unreadable: a miss, the kernel compiles
            self._warn("readable", error)
            return None

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            super().save_overload(sig, data)
        except OSError as error:
            self._warn("writable", error)

    def _warn(self, what: str, error: OSError) -> None:
        path = self.cache_path
        if (path, what) not in _warned:
            _warned.add((path, what))
            log.warning("kernel cache %s is not %s (%s): kernels compiled now are kept in "
                        "memory only", path, what, error.strerror or error)


class _DeferredCache:
    """Stands in for the dispatcher's cache until the first compile, then builds the
    real one in the directory configured by then."""

    def __init__(self, py_func: Callable[..., Any], variant: str) -> None:
        self._py_func = py_func
        self._variant = variant
        self._real: caching._Cache | None = None

    def _cache(self) -> caching._Cache:
        if self._real is None:
            root = directory()
            self._real = (_StableCache(self._py_func, self._variant, root) if root
                          else caching.NullCache())
        return self._real

    @property
    def cache_path(self) -> str | None:
        return self._cache().cache_path

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        return self._cache().load_overload(sig, target_context)

    def save_overload(self, sig: Any, data: Any) -> None:
        self._cache().save_overload(sig, data)

    def flush(self) -> None:
        self._cache().flush()
