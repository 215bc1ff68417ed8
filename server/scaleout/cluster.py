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

from collections.abc import Sequence
from typing import Any

from assay.server.errors import AssayError
from assay.server.scaleout.shard import Shard, Worker

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


class Workers:
    """The worker actors of this driver, started on first need and kept for its life.

    Ray stops a non-detached actor once its creator drops the handle, so the
    handles live in this module for as long as the process is connected, not in
    objects that come and go with pools or servers; when the process exits, its
    workers go with it.
    """

    def __init__(self, *, threads: int = 0, actor_cpus: float = 1.0):
        self.threads, self.actor_cpus = threads, actor_cpus

    def first(self, n: int) -> list[Any]:
        """Handles of workers 0 .. n-1."""
        import ray

        context = ray.get_runtime_context()
        handles = _HANDLES.setdefault(f"{context.gcs_address}/{context.get_job_id()}", [])
        cls = ray.remote(Worker)
        while len(handles) < n:
            handles.append(cls.options(
                name=f"assay-worker-{len(handles)}", namespace=NAMESPACE, get_if_exists=True,
                max_restarts=-1, max_task_retries=0, num_cpus=self.actor_cpus,
                scheduling_strategy="SPREAD").remote(self.threads))
        return handles[:n]


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
