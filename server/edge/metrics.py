"""What a server reports about itself: Prometheus metrics, and the fields of each call's
log line.

Metrics are kept by ``prometheus_client`` in a registry of the server's own (several
servers in one process, as in the tests, never share a series). gRPC names follow
go-grpc-prometheus (``grpc_server_handled_total``, ``grpc_server_handling_seconds``) so
existing dashboards work; the process (``process_*``), the interpreter
(``python_info``) and its garbage collector (``python_gc_*``) come from the library's
own collectors; Assay adds what a Select did, by strategy:

==========================================  =====================================================
``assay_select_seconds``                    histogram of a Select's time in the acquisition
                                            service (queue, models, strategy) by
                                            ``strategy``, ``backend``
``assay_select_items_scored_total``         candidate items the strategy scored (the items
                                            minus the labeled and excluded ones)
``assay_select_read_bytes_total``           bytes of the input arrays the strategy read
``assay_select_budget``                     histogram of the budget asked for, by ``strategy``
``assay_kernel_seconds_total``              the strategy's own compute time
``assay_rpc_errors_total``                  calls that ended in an error, by ``grpc_method``,
                                            ``grpc_code`` and the ``ErrorInfo`` ``reason``
``assay_received_bytes_total``              array bytes received by uploads
==========================================  =====================================================

Each call also has a ``CallRecord`` while it runs (``current()``): the layers the call
passes through ``note()`` what they know (the strategy, N, the budget, the backend), and
the call-log interceptor writes it as the call's one log line.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from ..acquisition.service import SelectCall, Selection

# The ``*_created`` series double every counter and histogram for no dashboard's use.
prometheus_client.disable_created_metrics()

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)
_SELECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)
_BUDGET_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 100_000)

_GRPC = ("grpc_service", "grpc_method")


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> ``("pkg.Service", "Method")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class Metrics:
    """One server's metrics, in its own ``registry``; ``render()`` is the /metrics text."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.",
            (*_GRPC, "grpc_code"), registry=r)
        self.handling = Histogram(
            "grpc_server_handling_seconds", "Time from a call's start to its answer.", _GRPC,
            buckets=_BUCKETS, registry=r)
        self.errors = Counter(
            "assay_rpc_errors_total", "Calls that ended in an error, by status code and "
            "ErrorInfo reason (empty when the error carried none).",
            (*_GRPC, "grpc_code", "reason"), registry=r)
        self.kernel_seconds = Counter(
            "assay_kernel_seconds_total", "Seconds strategies computed, by strategy and the "
            "backend that ran them.", ("strategy", "backend"), registry=r)
        self.received_bytes = Counter(
            "assay_received_bytes_total", "Array bytes received by client-streaming uploads.",
            registry=r)
        self.select_seconds = Histogram(
            "assay_select_seconds", "Seconds a successful Select spent in the acquisition "
            "service (waiting for a slot, models, strategy).", ("strategy", "backend"),
            buckets=_SELECT_BUCKETS, registry=r)
        self.select_items = Counter(
            "assay_select_items_scored_total", "Candidate items successful Selects scored "
            "(items minus labeled and excluded ones).", ("strategy", "backend"), registry=r)
        self.select_bytes = Counter(
            "assay_select_read_bytes_total", "Bytes of the input arrays successful Selects "
            "read.", ("strategy", "backend"), registry=r)
        self.select_budget = Histogram(
            "assay_select_budget", "Items successful Selects were asked to select.",
            ("strategy",), buckets=_BUDGET_BUCKETS, registry=r)
        #: (metric, label values) -> its child: ``labels()`` checks and joins the values on
        #: every call, several times per Select; the label sets are few and fixed.
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    # -- recorded by the edge --------------------------------------------------------------

    def observe_rpc(self, full_method: str, code: str, seconds: float) -> None:
        """One finished call: its status code and how long it took."""
        service, method = split_method(full_method)
        self._child(self.handled, service, method, code).inc()
        self._child(self.handling, service, method).observe(seconds)

    def observe_error(self, full_method: str, code: str, reason: str) -> None:
        """One call that ended in an error (the call log records every one)."""
        service, method = split_method(full_method)
        self._child(self.errors, service, method, code, reason).inc()

    def observe_kernel(self, strategy: str, backend: str, seconds: float) -> None:
        self._child(self.kernel_seconds, strategy, backend).inc(seconds)

    def add_bytes(self, n: int) -> None:
        self.received_bytes.inc(n)

    # -- recorded by the acquisition service (``AcquisitionService(observe=...)``) ----------

    def observe_select(self, call: SelectCall, selection: Selection | None,
                       seconds: float) -> None:
        """One Select, ``selection`` None when it failed: the call's log fields always, the
        Select series when it succeeded (so an unknown strategy name never becomes a label)."""
        note(strategy=call.strategy, budget=call.budget)
        if call.pool_id:
            note(pool_id=call.pool_id)
        if selection is None:
            return
        result = selection.result
        note(n=selection.items, backend=result.backend)
        labels = (result.strategy, result.backend)
        self._child(self.select_seconds, *labels).observe(seconds)
        self._child(self.select_items, *labels).inc(selection.items)
        self._child(self.select_bytes, *labels).inc(selection.bytes_read)
        self._child(self.select_budget, result.strategy).observe(call.budget)

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> str:
        """The registry in Prometheus text format."""
        return prometheus_client.generate_latest(self.registry).decode()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and content type for a scrape's ``Accept`` header (Prometheus text, or
        OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


# -- the record of the call in progress ----------------------------------------------------


@dataclass
class CallRecord:
    """What the layers a call passes through know about it, for its log line."""

    method: str
    fields: dict[str, Any] = field(default_factory=dict)
    #: The ``ErrorInfo`` reason and message the call was aborted with, if any.
    reason: str = ""
    message: str = ""


_CURRENT: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "assay_call", default=None)


@contextmanager
def recording(method: str) -> Iterator[CallRecord]:
    """Make a fresh record the current one while the body runs (in this thread)."""
    record = CallRecord(method)
    token = _CURRENT.set(record)
    try:
        yield record
    finally:
        try:
            _CURRENT.reset(token)
        except ValueError:  # a streaming behavior resumed in another context
            _CURRENT.set(None)


def current() -> CallRecord | None:
    """The record of the call this thread is handling, or None outside a call."""
    return _CURRENT.get()


def note(**fields: Any) -> None:
    """Add fields to the current call's log line (nothing outside a call)."""
    record = _CURRENT.get()
    if record is not None:
        record.fields.update(fields)


def note_error(reason: str, message: str) -> None:
    """The ``ErrorInfo`` reason and the message the current call ends with."""
    record = _CURRENT.get()
    if record is not None:
        record.reason, record.message = reason, message
