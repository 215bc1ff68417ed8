"""Turns registered models and raw inputs into the arrays a strategy needs.

Protocol-free, like ``acquisition``: model infos, NumPy arrays and domain errors.

* One model, no MC dropout: one deterministic pass gives every declared role
  (``probs`` from ``probs`` or softmax of ``logits``; ``embeddings``; ``loss``
  and ``discriminator`` as [N]).
* ``mc_samples = S``: each model's graph is rewritten so its Dropout nodes
  sample (``mc_dropout``) and run S times; the passes form ``samples`` and
  their mean is ``probs``. Other roles come from a deterministic pass, run only
  when the strategy uses them.
* Several models form a committee: their (MC) class probabilities are stacked
  on the samples axis; other roles come from the first model declaring them.

Results of a stored pool are cached per (pool, pool version, model
registration, pass kind), so a second strategy on the same round reuses them.
MC passes are cached under their seed and batch size, which determine them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from assay.vocab.errors import InvalidInput, NotFound

from ..strategies import registry
from ..strategies.validation import validate_array
from .mc_dropout import (
    DISABLED_OPTIMIZERS,
    disable_dropout,
    pass_seed,
    sampling_dropout,
    seeded,
)
from .onnx_cost import ModelLimits
from .onnx_runner import (
    Terminator,
    default_batch_size,
    default_threads,
    execution_provider,
    make_session,
    run_batches,
    use_memory_cap,
)
from .onnx_safety import input_fits, parse_model
from .probe import prepare, probe_session
from .store import ModelInfo, ModelStore

if TYPE_CHECKING:
    import onnxruntime as ort

#: Most models in one committee, and most MC passes per model.
MAX_MODELS = 32
MAX_MC_SAMPLES = 1000
#: Sessions built at once (each may take up to --model-load-seconds of one core).
BUILD_THREADS = 2
_BUILD_POLL_SECONDS = 0.05
#: Roles a deterministic pass provides besides class probabilities.
_FEATURE_ROLES = ("embeddings", "loss", "discriminator")


@dataclass(frozen=True)
class ModelRun:
    """What a Select asks of the models (see ``SelectRequest.model_ids`` and below)."""

    model_ids: Sequence[str]
    mc_samples: int = 0
    batch_size: int = 0
    seed: int = 0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64 (max-shifted, so large logits do not overflow), as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def needed_roles(strategy: str, params: Mapping[str, Any]) -> set[str]:
    """Input roles the strategy (and its prefilter, if any) reads, required or optional."""
    roles: set[str] = set()
    names = [strategy]
    prefilter = params.get("prefilter")
    if isinstance(prefilter, str) and prefilter:
        names.append(prefilter)
    for name in names:
        s = registry.get(name)
        roles.update(s.required, s.optional)
    if "labeled_embeddings" in roles:
        roles.add("embeddings")
    return roles


@dataclass(frozen=True)
class _Passes:
    """Role arrays of one model and one kind of pass, and the execution provider that ran it."""

    arrays: dict[str, np.ndarray]
    provider: str

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


@dataclass
class ModelOutputs:
    """What a Select's model step gives: role arrays, figures for the response's metrics,
    and per model (in ``model_ids`` order) the execution provider that ran it."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    providers: list[str]


class _ResultCache:
    """LRU of model passes by key, bounded by total bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, _Passes] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def key_lock(self, key: tuple) -> threading.Lock:
        """One lock per key, so concurrent requests for the same results compute them once."""
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def get(self, key: tuple) -> _Passes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple, value: _Passes) -> None:
        with self._lock:
            self._key_locks.pop(key, None)
            if value.nbytes > self.max_bytes:
                return
            self._entries[key] = value
            while sum(v.nbytes for v in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)

    def drop(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if uid in k]:
                del self._entries[key]


def _wait_for(build: Future, check: Callable[[], None]) -> ort.InferenceSession:
    """The session ``build`` makes, checking the request's deadline while it runs."""
    while True:
        try:
            return build.result(timeout=_BUILD_POLL_SECONDS)
        except FutureTimeout:
            try:
                check()
            except BaseException:
                build.cancel()  # only takes effect while it is still queued
                raise


class ModelRuntime:
    """Sessions and cached results of registered models, shared by all requests.

    Each registration has at most two sessions, kept in an LRU of
    ``max_sessions``: the deterministic one (Dropout off) and the MC-dropout one,
    whose runs reset onnxruntime's generator to a seed of their own
    (``mc_dropout.seeded``), so one session serves every request and the same
    seed still gives the same samples. onnxruntime runs one session from several
    threads safely.

    Sessions are built on a small pool of threads of their own, and the request
    waits for its build while checking its deadline: a build cannot be stopped
    inside onnxruntime, but a request whose time is up answers at once and frees
    its worker. The build itself then ends within what the registration check
    measured (``--model-load-seconds``), and the session still fills the cache.
    """

    def __init__(self, store: ModelStore, *, threads: int = 0, max_sessions: int = 8,
                 cache_bytes: int = 512 << 20, limits: ModelLimits | None = None):
        self.store = store
        self.limits = limits or ModelLimits()
        use_memory_cap(self.limits.memory_bytes)
        prepare()  # the first registration's session-build child starts importing now
        self.threads = threads or default_threads()
        self.max_sessions = max_sessions
        self.cache = _ResultCache(cache_bytes)
        self._sessions: OrderedDict[tuple[str, str], ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()
        self._builder = ThreadPoolExecutor(BUILD_THREADS, thread_name_prefix="model-session")
        self._building: dict[tuple[str, str], Future] = {}

    def forget(self, uid: str) -> None:
        """Drop a deleted model's sessions and cached results."""
        with self._lock:
            for key in [k for k in self._sessions if k[0] == uid]:
                del self._sessions[key]
        self.cache.drop(uid)

    def check_loads(self, data: bytes, check: Callable[[], None] = lambda: None) -> float:
        """Raise ``InvalidInput`` unless onnxruntime can build a session for ``data`` within
        the limits; returns the seconds it took.

        The session is built in a child process (``models.probe``), so a model whose
        build would run for hours or allocate gigabytes is stopped, and ``check``
        (the request's deadline and cancellation) ends the wait early.
        """
        return probe_session(data, seconds=self.limits.load_seconds,
                             memory_bytes=self.limits.memory_bytes, check=check)

    def _read(self, info: ModelInfo) -> bytes:
        try:
            return self.store.read(info)
        except FileNotFoundError:
            raise NotFound(f"model {info.model_id!r} was deleted during the request",
                           field="model_ids", reason="MODEL_NOT_FOUND") from None

    def _session(self, info: ModelInfo, check: Callable[[], None] = lambda: None, *,
                 mc: bool = False) -> ort.InferenceSession:
        """The registration's deterministic session, or its MC-dropout one (``mc``)."""
        key = (info.uid, "mc" if mc else "det")
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
                return session
            build = self._building.get(key)
            if build is None:  # one build per session, whoever asks meanwhile
                build = self._builder.submit(self._build, info, key)
                self._building[key] = build
        return _wait_for(build, check)

    def _build(self, info: ModelInfo, key: tuple[str, str]) -> ort.InferenceSession:
        try:
            model = parse_model(self._read(info))
            options = {"threads": self.threads}
            if key[1] == "mc":
                model = sampling_dropout(model)
                # MC runs take turns (mc_dropout.seeded), so each may use every core.
                options = {"threads": max(self.threads, default_threads(whole=True)),
                           "disabled_optimizers": DISABLED_OPTIMIZERS}
            elif info.signature.dropout_count:
                model = disable_dropout(model)
            session = make_session(model.SerializeToString(), **options)
            with self._lock:
                self._sessions[key] = session
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            return session
        finally:
            with self._lock:
                self._building.pop(key, None)

    # -- one model, one kind of pass ----------------------------------------------------

    def _pass(self, info: ModelInfo, inputs: Mapping[str, np.ndarray], *, mc: int, seed: int,
              batch_size: int, pool_key: tuple | None, check: Callable[[], None],
              terminator: Terminator | None, stats: dict[str, float]) -> _Passes:
        """Role arrays of one model: deterministic (``mc == 0``) or ``mc`` MC passes.

        ``inputs`` are the raw-input arrays by name. Deterministic: every declared
        role, ``probs`` [N, C] and the rest. MC: ``samples`` [mc, N, C] only.
        """
        sig = info.signature
        if sig.fixed_batch:
            batch_size = sig.fixed_batch
        elif not batch_size:
            item = sum(int(np.prod(inputs[i.array].shape[1:], dtype=np.int64))
                       * inputs[i.array].dtype.itemsize for i in sig.inputs)
            batch_size = default_batch_size(item)
        kind = ("det",) if mc == 0 else ("mc", mc, seed, batch_size)
        key = None if pool_key is None else (*pool_key, info.uid, *kind)
        if key is None:
            return self._timed(info, inputs, mc, seed, batch_size, check, terminator, stats)
        cached = self.cache.get(key)
        if cached is None:
            with self.cache.key_lock(key):
                cached = self.cache.get(key)
                if cached is None:
                    result = self._timed(info, inputs, mc, seed, batch_size, check, terminator,
                                         stats)
                    self.cache.put(key, result)
                    return result
        stats["model_cached_passes"] += 1
        return cached

    def _timed(self, info: ModelInfo, inputs: Mapping[str, np.ndarray], mc: int, seed: int,
               batch_size: int, check: Callable[[], None], terminator: Terminator | None,
               stats: dict[str, float]) -> _Passes:
        started = time.perf_counter()
        result = self._compute(info, inputs, mc, seed, batch_size, check, terminator)
        stats["model_seconds"] += time.perf_counter() - started
        stats["model_passes"] += max(mc, 1)
        return result

    def _compute(self, info: ModelInfo, inputs: Mapping[str, np.ndarray], mc: int, seed: int,
                 batch_size: int, check: Callable[[], None],
                 terminator: Terminator | None) -> _Passes:
        sig = info.signature
        roles = dict(sig.outputs)
        around = None
        if mc:
            roles = {r: n for r, n in roles.items() if r in ("logits", "probs")}
            session = self._session(info, check, mc=True)

            def around(p: int, start: int):
                return seeded(pass_seed(seed, p, start), check)
        else:
            session = self._session(info, check)
        names = list(roles.values())
        outs = run_batches(session, {i.name: inputs[i.array] for i in sig.inputs}, names,
                           batch_size=batch_size, passes=max(mc, 1),
                           fixed_batch=sig.fixed_batch or None,
                           input_dtypes={i.name: np.dtype(i.dtype) for i in sig.inputs},
                           around=around, check_cancelled=check, terminator=terminator)
        result: dict[str, np.ndarray] = {}
        for role, out in zip(roles, outs, strict=True):
            where = f"model {info.model_id!r} output {roles[role]!r} ({role})"
            array = out if mc else out[0]
            if role in ("logits", "probs"):
                if array.ndim != (3 if mc else 2):
                    raise InvalidInput(f"{where} gave shape {list(out.shape[1:])}; it must be "
                                       "[N, C]", field="model_ids", reason="OUTPUT_SHAPE")
                array = softmax(array) if role == "logits" else array.astype(np.float32)
                role = "samples" if mc else "probs"
            elif role in ("loss", "discriminator"):
                if array.ndim == 2 and array.shape[1] == 1:
                    array = array[:, 0]
                if array.ndim != 1:
                    raise InvalidInput(f"{where} gave shape {list(out.shape[1:])}; it must be "
                                       "[N] or [N, 1]", field="model_ids",
                                       reason="OUTPUT_SHAPE")
            elif array.ndim != 2:
                raise InvalidInput(f"{where} gave shape {list(out.shape[1:])}; it must be "
                                   "[N, d]", field="model_ids", reason="OUTPUT_SHAPE")
            validate_array(role, array, field=where)
            result[role] = np.ascontiguousarray(array)
        return _Passes(result, execution_provider(session))

    # -- a Select's models ---------------------------------------------------------------

    def resolve(self, model_ids: Iterable[str]) -> list[ModelInfo]:
        """The registered models, checked for count and duplicates."""
        ids = list(model_ids)
        if len(ids) > MAX_MODELS:
            raise InvalidInput(f"model_ids names {len(ids)} models; at most {MAX_MODELS}",
                               field="model_ids")
        if len(set(ids)) != len(ids):
            raise InvalidInput("model_ids names a model twice", field="model_ids")
        return [self.store.get(m, f"model_ids[{i}]") for i, m in enumerate(ids)]

    def arrays(self, run: ModelRun, inputs: Mapping[str, np.ndarray], *, needed: set[str],
               pool_key: tuple | None = None, check: Callable[[], None] = lambda: None,
               terminator: Terminator | None = None) -> ModelOutputs:
        """Run ``run``'s models over the raw inputs and return what they give.

        ``inputs`` are the raw-input arrays by name (``model_inputs``,
        ``model_inputs.<name>``), each model reading those its graph inputs are
        bound to. ``needed`` are the roles the strategy reads (``needed_roles``);
        feature roles outside it are not computed under MC dropout. ``pool_key`` (a
        pool's identity and version) enables caching. The figures count the
        forward passes run (``model_passes``), the passes served from the cache
        (``model_cached_passes``) and the inference time (``model_seconds``).
        """
        if not 0 <= run.mc_samples <= MAX_MC_SAMPLES:
            raise InvalidInput(f"mc_samples must be in [0, {MAX_MC_SAMPLES}], got "
                               f"{run.mc_samples}", field="mc_samples")
        if run.batch_size < 0:
            raise InvalidInput(f"batch_size must be >= 0 (0: automatic), got {run.batch_size}",
                               field="batch_size")
        counts = {name: a.shape[0] if a.ndim else 0 for name, a in inputs.items()}
        if len(set(counts.values())) > 1:
            raise InvalidInput(f"the raw-input arrays disagree on the item count: {counts}",
                               field="inputs", reason="SHAPE_MISMATCH")
        models = self.resolve(run.model_ids)
        for m in models:
            for spec in m.signature.inputs:
                array = inputs.get(spec.array)
                if array is None:
                    have = ", ".join(sorted(inputs)) or "none"
                    raise InvalidInput(
                        f"model {m.model_id!r} feeds its graph input {spec.name!r} from the "
                        f"array {spec.array!r}, which the request lacks (raw inputs given: "
                        f"{have})", field=f"inputs.{spec.array}", reason="MISSING_INPUT")
                input_fits(spec, array.dtype, array.shape, model_id=m.model_id)
        committee = len(models) > 1 or run.mc_samples > 0
        if committee:
            for m in models:
                if not {"logits", "probs"} & set(m.signature.outputs):
                    raise InvalidInput(
                        f"model {m.model_id!r} declares no logits or probs output; a committee "
                        "or MC dropout needs each model's class probabilities",
                        field="model_ids", reason="MISSING_INPUT")
        stats = {"model_passes": 0.0, "model_cached_passes": 0.0, "model_seconds": 0.0}
        common = dict(batch_size=run.batch_size, pool_key=pool_key, check=check,
                      terminator=terminator, stats=stats)
        out: dict[str, np.ndarray] = {}
        members: list[np.ndarray] = []
        providers: list[str] = []
        for m in models:
            wants_features = any(r in needed and r not in out
                                 for r in _FEATURE_ROLES if r in m.signature.outputs)
            det = None
            if not run.mc_samples or wants_features:
                det = self._pass(m, inputs, mc=0, seed=0, **common)
                providers.append(det.provider)
                for role in _FEATURE_ROLES:
                    if role in det.arrays and role not in out:
                        out[role] = det.arrays[role]
            if run.mc_samples:
                passes = self._pass(m, inputs, mc=run.mc_samples, seed=run.seed, **common)
                if det is None:
                    providers.append(passes.provider)
                members.append(passes.arrays["samples"])
            elif "probs" in det.arrays:
                members.append(det.arrays["probs"][None])
        if members:
            classes = {a.shape[2] for a in members}
            if len(classes) > 1:
                raise InvalidInput(f"the models disagree on the number of classes "
                                   f"({sorted(classes)})", field="model_ids",
                                   reason="SHAPE_MISMATCH")
            if committee:
                out["samples"] = np.concatenate(members, axis=0)
                out["probs"] = out["samples"].mean(axis=0, dtype=np.float64).astype(np.float32)
            else:
                out["probs"] = members[0][0]
        return ModelOutputs(out, stats, providers)
