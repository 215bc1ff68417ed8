"""The only module that imports Ray: connecting, shard actors, and calls to them.

Shards live in named worker actors (``assay-worker-<k>`` holds shard k of every
pool) restarted by Ray whenever their process dies (``max_restarts=-1``); a
restarted worker reopens its persisted segments, so no data is lost, but the
select sessions it held are gone. A call that hits a dead or restarting actor,
or a session that vanished with one, raises ``ShardUnavailable`` (gRPC
UNAVAILABLE): the select stops, no answer is stored under its request id, and
the client's retry starts afresh.
In-flight calls are never retried by Ray (``max_task_retries=0``): a step
repeated on a fresh actor would silently compute on missing state.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from assay.vocab.errors import AssayError, FailedPrecondition, ResourceExhausted

from .shard import Shard, Worker

log = logging.getLogger("assay.server")

NAMESPACE = "assay"


class ShardUnavailable(AssayError):
    """A shard actor died or restarted during the call; retrying is safe."""

    code_name = "UNAVAILABLE"
    default_reason = "SHARD_UNAVAILABLE"


def connect(address: str, *, num_cpus: int = 0, object_store_bytes: int = 0) -> None:
    """Join a Ray cluster once per process.

    ``address`` is ``auto`` (a cluster started with ``ray start`` on this node),
    ``ray://host:port`` (Ray Client), a GCS ``host:port``, or ``local``: a private
    single-node instance on loopback with ``num_cpus`` CPUs (0: all) and no
    dashboard, for development, tests and benchmarks. An already initialized Ray
    (a test harness's) is reused as it is.
    """
    import ray

    if ray.is_initialized():
        return
    common = {"namespace": NAMESPACE, "log_to_driver": False, "configure_logging": False}
    if address == "local":
        ray.init(num_cpus=num_cpus or None, include_dashboard=False,
                 object_store_memory=object_store_bytes or None,
                 _node_ip_address="127.0.0.1", **common)
    else:
        ray.init(address=address, **common)


def shutdown() -> None:
    """Disconnect from Ray (stops a ``local`` instance and its actors)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _HANDLES.clear()
    _RESERVATIONS.clear()


def _unwrap(error: BaseException) -> BaseException:
    """Map a Ray failure to what the caller should see."""
    import ray.exceptions as rex

    if isinstance(error, rex.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, AssayError):
            return cause
        if isinstance(cause, LookupError):  # the session died with a restarted actor
            return ShardUnavailable(f"a shard restarted during the select ({cause}); retry "
                                    "with the same request id")
        return error
    if isinstance(error, rex.RayActorError | rex.ObjectLostError | rex.GetTimeoutError):
        return ShardUnavailable(f"a shard actor is unavailable ({type(error).__name__}); it "
                                "restarts from its persisted segments: retry with the same "
                                "request id")
    return error


#: Worker handles of this process, per cluster and job (a new ``ray.init`` starts afresh).
_HANDLES: dict[str, list[Any]] = {}
#: The placement groups holding the CPUs of those workers, per cluster and job.
_RESERVATIONS: dict[str, list[Any]] = {}
#: Guards both: two pools created at once must not both start worker k.
_HANDLES_LOCK = threading.Lock()


def check_capacity(shards: int, actor_cpus: float, cluster_cpus: float) -> None:
    """Refuse a shard count the cluster can never place, before any actor is started.

    Shard k lives in worker actor k, which reserves ``actor_cpus``; Ray keeps an
    actor it cannot place pending forever, and every call to it then waits, so a
    pool of more shards than the cluster has room for would hang its first append.

    Raises
    ------
    FailedPrecondition
        When ``shards * actor_cpus`` exceeds every CPU of the cluster.
    """
    needed = shards * actor_cpus
    if actor_cpus <= 0 or needed <= cluster_cpus + 1e-9:
        return
    fits = math.floor(cluster_cpus / actor_cpus + 1e-9)
    raise FailedPrecondition(
        f"{shards} shards need {needed:g} CPUs ({actor_cpus:g} per shard actor, "
        f"--shard-cpus), the Ray cluster has {cluster_cpus:g}: create the pool with at most "
        f"{fits} shards, lower --shard-cpus, or add nodes to the cluster", field="shards",
        reason="CLUSTER_TOO_SMALL")


class Workers:
    """The worker actors of this driver, started on first need and kept for its life.

    Ray stops a non-detached actor once its creator drops the handle, so the
    handles live in this module for as long as the process is connected, not in
    objects that come and go with pools or servers; when the process exits, its
    workers go with it.

    Ray keeps an actor it cannot place pending for ever, and every call to it waits
    with it. So new workers that reserve CPUs are placed first: their CPUs are
    reserved in a placement group (one bundle per worker, spread over the nodes),
    waited for at most ``start_timeout`` seconds, and the workers are started inside
    it. A reservation that does not come through in time (other work holds the CPUs)
    fails the call with RESOURCE_EXHAUSTED and starts nothing; the time a placed
    worker's process takes to start is not part of that wait.
    """

    def __init__(self, *, threads: int = 0, actor_cpus: float = 1.0,
                 start_timeout: float = 20.0):
        self.threads, self.actor_cpus = threads, actor_cpus
        self.start_timeout = start_timeout

    def first(self, n: int) -> list[Any]:
        """Handles of workers 0 .. n-1.

        Raises
        ------
        FailedPrecondition
            When the cluster is too small for n workers at all (nothing is started).
        ResourceExhausted
            When the new workers' CPUs could not be reserved within ``start_timeout``
            (nothing is started; a later call, once CPUs are free, tries again).
        """
        import ray

        context = ray.get_runtime_context()
        key = f"{context.gcs_address}/{context.get_job_id()}"
        with _HANDLES_LOCK:
            handles = _HANDLES.setdefault(key, [])
            missing = n - len(handles)
            if missing <= 0:
                return handles[:n]
            check_capacity(n, self.actor_cpus, ray.cluster_resources().get("CPU", 0.0))
            strategies = self._reserve(key, missing)
            cls = ray.remote(Worker)
            for strategy in strategies:
                handles.append(cls.options(
                    name=f"assay-worker-{len(handles)}", namespace=NAMESPACE,
                    get_if_exists=True, max_restarts=-1, max_task_retries=0,
                    num_cpus=self.actor_cpus, scheduling_strategy=strategy).remote(self.threads))
            return handles[:n]

    def _reserve(self, key: str, count: int) -> list[Any]:
        """Scheduling strategies for ``count`` new workers, their CPUs reserved."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.actor_cpus <= 0:
            return ["SPREAD"] * count
        started = time.monotonic()
        group = placement_group([{"CPU": self.actor_cpus}] * count, strategy="SPREAD")
        if not group.wait(timeout_seconds=self.start_timeout):
            remove_placement_group(group)
            free = ray.available_resources().get("CPU", 0.0)
            total = ray.cluster_resources().get("CPU", 0.0)
            log.warning("%d shard workers not placed after %.1f s (%g of %g CPUs free)",
                        count, time.monotonic() - started, free, total)
            raise ResourceExhausted(
                f"{count} shard actors ({self.actor_cpus:g} CPUs each, --shard-cpus) could "
                f"not be placed within {self.start_timeout:g} s "
                f"(--shard-start-timeout-seconds): the Ray cluster has {free:g} of {total:g} "
                "CPUs free; retry once other work frees CPUs, or add nodes",
                field="shards", reason="SHARDS_NOT_PLACED")
        _RESERVATIONS.setdefault(key, []).append(group)
        return [PlacementGroupSchedulingStrategy(placement_group=group,
                                                 placement_group_bundle_index=i)
                for i in range(count)]


class RayGroup:
    """The K shards of one pool: shard k is held by worker actor k (``assay-worker-<k>``),
    which holds shard k of every pool."""

    def __init__(self, uid: str, roots: Sequence[str], workers: Sequence[Any]):
        self.uid, self.roots = uid, list(roots)
        self.actors = list(workers[:len(self.roots)])

    def __len__(self) -> int:
        return len(self.actors)

    def map(self, method: str, *args: Any, per_shard: Sequence[tuple] | None = None) -> list:
        """Call ``method`` on every shard at once (the same ``args``, or ``per_shard``
        argument tuples) and wait for all: one round trip."""
        refs = [a.run.remote(self.uid, self.roots[k], method,
                             *(per_shard[k] if per_shard is not None else args))
                for k, a in enumerate(self.actors)]
        return self._get(refs)

    def call(self, k: int, method: str, *args: Any) -> Any:
        """Call ``method`` on shard ``k`` alone."""
        return self._get([self.actors[k].run.remote(self.uid, self.roots[k], method, *args)])[0]

    @staticmethod
    def _get(refs: list) -> list:
        import ray

        try:
            return ray.get(refs)
        except Exception as error:  # Ray raises several unrelated types
            mapped = _unwrap(error)
            if mapped is error:
                raise
            raise mapped from error

    def kill(self) -> None:
        """Nothing to stop: the workers serve other pools too."""


class LocalGroup:
    """The same interface over in-process ``Shard`` objects, called one after another:
    the single-process baseline of the benchmark, and a Ray-free way to run the
    driver algorithms."""

    def __init__(self, roots: Sequence[str], *, threads: int = 0):
        self.actors = [Shard(root, threads) for root in roots]

    def __len__(self) -> int:
        return len(self.actors)

    def map(self, method: str, *args: Any, per_shard: Sequence[tuple] | None = None) -> list:
        return [getattr(a, method)(*(per_shard[k] if per_shard is not None else args))
                for k, a in enumerate(self.actors)]

    def call(self, k: int, method: str, *args: Any) -> Any:
        return getattr(self.actors[k], method)(*args)

    def kill(self) -> None:
        self.actors = []
