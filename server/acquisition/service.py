"""Select as one domain call: the acquisition service behind every facade.

The gRPC edge decodes a ``SelectRequest`` into a ``SelectCall`` and hands it here
with a ``Caller`` (its deadline and cancellation, without gRPC); a REST or
KServe-v2 facade would do the same. Everything a Select does between decoding
and encoding lives here, in order:

1. the arrays: inline ones checked and bounded, or a stored pool's, with what a
   pool holds implicitly derived from it (labels, the labeled rows, recorded
   epochs) and its labeled items excluded;
2. the seed: drawn when MC dropout needs one, so the answer can be replayed;
3. a slot: at most ``max_concurrent_selects`` selections run, ``max_queued_selects``
   wait (behind the gRPC server, the calls already wait on Select's own lane, whose
   threads are as many as the slots, so a slot is free there when a call arrives);
4. the model step (registered ONNX models over raw inputs), then the strategy.

Sharded pools take the same slot and answer the same ``Selection``; only where
the rows live differs (``acquisition.sharded``).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assay.vocab import roles
from assay.vocab.dtypes import from_stored
from assay.vocab.errors import FailedPrecondition, InvalidInput, ResourceExhausted

from ..models.inference import ModelRun, ModelRuntime, needed_roles
from ..models.onnx_runner import Terminator
from ..pools.store import PoolData, PoolStore
from ..strategies import registry
from ..strategies.validation import item_count
from . import selection, sharded
from .selection import SelectResult


@dataclass(frozen=True)
class SelectCall:
    """One Select, decoded: the strategy, its budget and what it runs on.

    Exactly one of ``pool_id`` (a stored pool) and ``inputs`` (inline arrays by
    role) is set. ``model_ids`` run registered models over the raw inputs
    (``model_inputs``, ``model_inputs.<name>``) first.
    """

    strategy: str
    budget: int
    params: Mapping[str, Any] = field(default_factory=dict)
    pool_id: str = ""
    inputs: Mapping[str, np.ndarray] | None = None
    exclude: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    seed: int | None = None
    model_ids: tuple[str, ...] = ()
    mc_samples: int = 0
    batch_size: int = 0


@dataclass(frozen=True)
class Caller:
    """The requesting side of a call, as the domain sees it.

    ``check`` raises ``Cancelled``/``DeadlineExceeded`` once the caller left or its
    time is up; ``time_left`` is the seconds it has (None: no limit);
    ``on_cancel`` registers a callback run when the caller goes away (it stops a
    model run inside onnxruntime).
    """

    check: Callable[[], None] = lambda: None
    time_left: Callable[[], float | None] = lambda: None
    on_cancel: Callable[[Callable[[], None]], Any] = lambda callback: None


@dataclass(frozen=True)
class Selection:
    """A Select's answer: the strategy's result, the pool version it read (0 inline)
    and every figure for the response's metrics."""

    result: SelectResult
    pool_version: int
    metrics: dict[str, float]
    #: Per model of ``model_ids``, the onnxruntime execution provider that ran it.
    execution_providers: list[str] = field(default_factory=list)
    #: Candidate items the strategy scored: the items minus labeled and excluded ones.
    items: int = 0
    #: Bytes of the input arrays the strategy (and the models) read.
    bytes_read: int = 0


#: Told of every Select when it ends: the call, its Selection (None when it failed) and
#: the seconds it took, waiting for a slot included (the server's metrics and call log).
SelectObserver = Callable[[SelectCall, Selection | None, float], None]


class SelectSlots:
    """At most ``running`` selections at once, with up to ``queued`` callers waiting.

    Open-loop traffic arrives in bursts: shedding every Select that finds the slots
    busy would fail requests even at moderate load, while an unbounded wait turns
    overload into timeouts. So up to ``queued`` callers wait (still honouring their
    deadline and cancellation); anyone beyond is refused at once, retryably.
    """

    def __init__(self, running: int, queued: int):
        self.running, self.queued = running, queued
        self._slots = threading.BoundedSemaphore(running)
        self._lock = threading.Lock()
        self._waiting = 0

    def acquire(self, check: Callable[[], None]) -> None:
        if self._slots.acquire(blocking=False):
            return
        with self._lock:
            if self._waiting >= self.queued:
                raise ResourceExhausted(
                    f"the server is already running {self.running} selections with "
                    f"{self._waiting} waiting; retry with backoff", reason="TOO_MANY_SELECTS")
            self._waiting += 1
        try:
            while not self._slots.acquire(timeout=0.02):
                check()
        finally:
            with self._lock:
                self._waiting -= 1

    def release(self) -> None:
        self._slots.release()


def pool_cache_key(pool_id: str, create_time: float, version: int) -> tuple:
    """A pool's identity at one version: a re-created pool with the same id never matches."""
    return ("pool", pool_id, repr(create_time), version)


def pool_arrays(strategy: str, data: PoolData) -> dict[str, np.ndarray]:
    """A stored pool's arrays plus those it holds implicitly, derived only when the
    strategy reads them.

    ``labeled_embeddings``: the embeddings of the labeled items; ``predictions``:
    the recorded epochs (RecordEpoch) covering every item; ``labels``: the label
    per item, -1 where unlabeled; ``labeled_probs``: ``probs`` (or the mean of
    ``samples``) at the labeled items.
    """
    arrays = dict(data.arrays)
    s = registry.get(strategy)
    roles = set(s.required) | set(s.optional)
    labeled = data.labeled
    if labeled.size and "embeddings" in arrays:
        arrays["labeled_embeddings"] = arrays["embeddings"][labeled]
    if "predictions" in roles and "predictions" not in arrays and data.history is not None:
        arrays["predictions"] = data.history
    if "labels" in roles:
        labels = np.full(data.info.item_count, -1, dtype=np.int64)
        labels[labeled] = data.labels
        arrays["labels"] = labels
    if "labeled_probs" in roles and labeled.size:
        if "probs" in arrays:
            arrays["labeled_probs"] = np.asarray(arrays["probs"][labeled])
        elif "samples" in arrays:
            arrays["labeled_probs"] = np.asarray(arrays["samples"][:, labeled],
                                                 dtype=np.float64).mean(axis=0)
    return arrays


class AcquisitionService:
    """Runs Selects over stored pools, sharded pools or inline arrays.

    Parameters
    ----------
    pools : the pool store (pools on this machine and sharded ones).
    models : the ONNX model runtime (None: the server runs no models).
    max_inline_bytes : the largest inline ``inputs`` accepted; larger belong in a pool.
    slots : the bound on concurrent and queued selections.
    observe : told of every Select when it ends (``SelectObserver``).
    """

    def __init__(self, pools: PoolStore, *, models: ModelRuntime | None = None,
                 max_inline_bytes: int, slots: SelectSlots,
                 observe: SelectObserver | None = None):
        self.pools, self.models = pools, models
        self.max_inline_bytes = max_inline_bytes
        self.slots = slots
        self.observe = observe

    def select(self, call: SelectCall, caller: Caller = Caller()) -> Selection:
        """Run one Select. Every refusal is an ``AssayError`` raised before anything is
        computed or stored; the queue slot is held only while models and the strategy run."""
        if self.observe is None:
            return self._select(call, caller)
        started = time.perf_counter()
        selected = None
        try:
            selected = self._select(call, caller)
            return selected
        finally:
            self.observe(call, selected, time.perf_counter() - started)

    def _select(self, call: SelectCall, caller: Caller) -> Selection:
        if not call.strategy:
            raise InvalidInput("strategy is empty; ListStrategies names them", field="strategy")
        registry.get(call.strategy)
        if not call.model_ids and (call.mc_samples or call.batch_size):
            raise InvalidInput("mc_samples and batch_size apply to models: name them in "
                               "model_ids", field="model_ids")
        if call.pool_id and call.inputs is None and self.pools.shards(call.pool_id):
            return self._select_sharded(call, caller)
        seed = call.seed
        if call.mc_samples and seed is None:
            # MC passes and the strategy share the reported seed, so it replays both.
            seed = secrets.randbits(63)
        if call.model_ids and self.models is None:
            raise InvalidInput("this server runs no models", field="model_ids")
        exclude = np.asarray(call.exclude, dtype=np.int64)
        pool_version, pool_key, labeled = 0, None, None
        if call.inputs is not None:
            arrays = self._inline(call.inputs)
        elif call.pool_id:
            data = self.pools.load(call.pool_id)
            arrays = pool_arrays(call.strategy, data)
            pool_version = data.info.version
            pool_key = pool_cache_key(data.info.pool_id, data.info.create_time, pool_version)
            labeled = data.labeled
            if labeled.size:
                exclude = np.union1d(exclude, labeled)
        else:
            raise InvalidInput("set either inputs or pool_id", field="source")
        model_metrics: dict[str, float] = {}
        providers: list[str] = []
        read = _bytes_read(call, arrays)
        self.slots.acquire(caller.check)
        try:
            if call.model_ids:
                arrays, model_metrics, providers = self._run_models(
                    call, arrays, seed or 0, pool_key, labeled, caller)
            result = selection.select(call.strategy, call.budget, arrays, call.params,
                                      seed=seed, exclude=exclude,
                                      validated=call.inputs is None,
                                      check_cancelled=caller.check)
        finally:
            self.slots.release()
        items = item_count(arrays) - (np.unique(exclude).size if exclude.size else 0)
        return Selection(result, pool_version, {**result.metrics, **model_metrics}, providers,
                         items, read)

    def _inline(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = sum(a.nbytes for a in inputs.values())
        if size > self.max_inline_bytes:
            raise ResourceExhausted(
                f"inline inputs are {size} bytes, over the server's inline limit of "
                f"{self.max_inline_bytes}; upload them to a pool (CreatePool, "
                "AppendPoolItems) and Select by pool_id", field="inputs",
                reason="INLINE_TOO_LARGE")
        return dict(inputs)

    def _select_sharded(self, call: SelectCall, caller: Caller) -> Selection:
        """A sharded pool: the same slot and answer; a shard lost mid-way raises
        UNAVAILABLE and nothing is stored, so a retry computes afresh."""
        if call.model_ids:
            raise FailedPrecondition("models run on unsharded pools only", field="model_ids")
        self.slots.acquire(caller.check)
        try:
            pool = self.pools.sharded_pool(call.pool_id)
            result = sharded.select(self.pools.sharded, pool, call.strategy, call.budget,
                                    dict(call.params), seed=call.seed, exclude=call.exclude,
                                    check_cancelled=caller.check)
        finally:
            self.slots.release()
        info = pool.info
        wanted = _roles_read(call)
        read = sum(math.prod(a.shape) * from_stored(a.dtype).itemsize for a in info.arrays
                   if roles.base(a.name) in wanted)
        items = info.item_count - np.union1d(call.exclude, pool.labeled).size
        return Selection(result, info.version, dict(result.metrics), items=items,
                         bytes_read=int(read))

    def _run_models(self, call: SelectCall, arrays: dict[str, np.ndarray], seed: int,
                    pool_key: tuple | None, labeled: np.ndarray | None, caller: Caller,
                    ) -> tuple[dict[str, np.ndarray], dict[str, float], list[str]]:
        """The model step: run ``call.model_ids`` over the raw-input arrays.

        Returns the arrays with the models' outputs in place of arrays of the same
        role (``labeled_embeddings`` recomputed from the model's embeddings), the
        inference figures for the response's metrics, and the execution providers.
        """
        raw = {name: a for name, a in arrays.items() if roles.base(name) == "model_inputs"}
        if not raw:
            where = "the pool has" if pool_key is not None else "inputs has"
            raise InvalidInput(f"model_ids needs raw model inputs, but {where} no model_inputs "
                               "array", field="inputs.model_inputs", reason="MISSING_INPUT")
        run = ModelRun(list(call.model_ids), call.mc_samples, call.batch_size, seed)
        needed = needed_roles(call.strategy, call.params)
        with Terminator(caller.time_left()) as terminator:
            caller.on_cancel(terminator.fire)
            outputs = self.models.arrays(run, raw, needed=needed, pool_key=pool_key,
                                         check=caller.check, terminator=terminator)
        produced = outputs.arrays
        arrays = {**arrays, **produced}
        has_labeled = labeled is not None and labeled.size > 0
        if "embeddings" in produced:
            arrays.pop("labeled_embeddings", None)
            if has_labeled:
                arrays["labeled_embeddings"] = produced["embeddings"][labeled]
        if "probs" in produced:
            arrays.pop("labeled_probs", None)
            if has_labeled and "labeled_probs" in needed:
                arrays["labeled_probs"] = produced["probs"][labeled]
        return arrays, outputs.metrics, outputs.providers


def _roles_read(call: SelectCall) -> set[str]:
    """The input roles a Select reads: its strategy's, ``samples`` for a ``probs`` it may
    derive from them, and the raw model inputs when models run."""
    strategy = registry.get(call.strategy)
    wanted = set(strategy.required) | set(strategy.optional)
    if "probs" in wanted:
        wanted.add("samples")
    if call.model_ids:
        wanted.add("model_inputs")
    return wanted


def _bytes_read(call: SelectCall, arrays: Mapping[str, np.ndarray]) -> int:
    wanted = _roles_read(call)
    return int(sum(a.nbytes for name, a in arrays.items() if roles.base(name) in wanted))
