"""Domain errors of Assay, free of gRPC, and the one table of their reasons.

Every layer below the servicer raises one of these; a single interceptor turns
them into gRPC status codes with ``google.rpc`` details. Keeping the mapping in
one place means handlers never call ``context.abort`` ad hoc and the same kind of
mistake always yields the same code.

``REASONS`` is the Python side of the ``assay.v1.ErrorReason`` enum
(``protos/assay/v1/errors.proto``, where each reason is documented): the status
code each reason comes with, and the back-off hint sent as ``RetryInfo`` when the
same request may simply be retried. ``tests/test_error_reasons.py`` checks that
both agree and that every reason raised anywhere is listed, so a client can rely
on the documented vocabulary; ``docs/errors.md`` is generated from both.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ErrorInfo.domain of every Assay error.
DOMAIN = "assay.v1"


@dataclass(frozen=True)
class Reason:
    """How one reason is answered.

    ``code`` is the gRPC status code name; ``retry_after`` the back-off hint in
    seconds for a refusal that the same request may retry (``None``: retrying the
    same request cannot help).
    """

    code: str
    retry_after: float | None = None


#: Every reason the server sends, in the order of the proto enum.
REASONS: dict[str, Reason] = {
    "INVALID_INPUT": Reason("INVALID_ARGUMENT"),
    "SHAPE_MISMATCH": Reason("INVALID_ARGUMENT"),
    "NON_FINITE": Reason("INVALID_ARGUMENT"),
    "NOT_PROBABILITIES": Reason("INVALID_ARGUMENT"),
    "MISSING_INPUT": Reason("INVALID_ARGUMENT"),
    "OUT_OF_ORDER": Reason("INVALID_ARGUMENT"),
    "OVERRUN": Reason("INVALID_ARGUMENT"),
    "TRUNCATED": Reason("INVALID_ARGUMENT"),
    "DIGEST_MISMATCH": Reason("INVALID_ARGUMENT"),
    "NOT_ONNX": Reason("INVALID_ARGUMENT"),
    "ONNX_CHECKER": Reason("INVALID_ARGUMENT"),
    "OPSET_UNSUPPORTED": Reason("INVALID_ARGUMENT"),
    "CUSTOM_OP_DOMAIN": Reason("INVALID_ARGUMENT"),
    "EXTERNAL_DATA": Reason("INVALID_ARGUMENT"),
    "MODEL_INPUTS": Reason("INVALID_ARGUMENT"),
    "OUTPUT_NOT_FOUND": Reason("INVALID_ARGUMENT"),
    "OUTPUT_SHAPE": Reason("INVALID_ARGUMENT"),
    "INPUT_MISMATCH": Reason("INVALID_ARGUMENT"),
    "MODEL_LOAD_FAILED": Reason("INVALID_ARGUMENT"),
    "INFERENCE_FAILED": Reason("INVALID_ARGUMENT"),
    "EMPTY_DIMENSION": Reason("INVALID_ARGUMENT"),
    "SHAPE_TOO_LARGE": Reason("INVALID_ARGUMENT"),
    "VALUE_TOO_LARGE": Reason("INVALID_ARGUMENT"),
    "NO_EPOCHS": Reason("INVALID_ARGUMENT"),
    "INVALID_REQUEST_ID": Reason("INVALID_ARGUMENT"),
    "FUNCTION_SHADOWS_OP": Reason("INVALID_ARGUMENT"),
    "MODEL_TOO_COSTLY": Reason("INVALID_ARGUMENT"),
    "INPUT_NOT_FOUND": Reason("INVALID_ARGUMENT"),
    "NOT_FOUND": Reason("NOT_FOUND"),
    "POOL_NOT_FOUND": Reason("NOT_FOUND"),
    "MODEL_NOT_FOUND": Reason("NOT_FOUND"),
    "UNKNOWN_STRATEGY": Reason("NOT_FOUND"),
    "ALREADY_EXISTS": Reason("ALREADY_EXISTS"),
    "FAILED_PRECONDITION": Reason("FAILED_PRECONDITION"),
    "EMPTY_POOL": Reason("FAILED_PRECONDITION"),
    "POOL_CHANGED": Reason("FAILED_PRECONDITION"),
    "SCHEMA_MISMATCH": Reason("FAILED_PRECONDITION"),
    "REQUEST_ID_REUSED": Reason("FAILED_PRECONDITION"),
    # Lost an optimistic-concurrency race: the same append succeeds on a retry.
    "CONCURRENT_APPEND": Reason("FAILED_PRECONDITION", retry_after=0.1),
    "NO_LABELED_ITEMS": Reason("FAILED_PRECONDITION"),
    "BACKEND_UNAVAILABLE": Reason("FAILED_PRECONDITION"),
    "NO_DROPOUT": Reason("FAILED_PRECONDITION"),
    "OPSET_TOO_OLD": Reason("FAILED_PRECONDITION"),
    "NO_RAY": Reason("FAILED_PRECONDITION"),
    "NOT_SHARDABLE": Reason("FAILED_PRECONDITION"),
    "CLUSTER_TOO_SMALL": Reason("FAILED_PRECONDITION"),
    "LIMIT_EXCEEDED": Reason("RESOURCE_EXHAUSTED"),
    "TOO_MANY_ITEMS": Reason("RESOURCE_EXHAUSTED"),
    "INLINE_TOO_LARGE": Reason("RESOURCE_EXHAUSTED"),
    "MODEL_TOO_LARGE": Reason("RESOURCE_EXHAUSTED"),
    # An operator has to free space: a long hint, so clients do not hammer a full disk.
    "DISK_FULL": Reason("RESOURCE_EXHAUSTED", retry_after=30.0),
    # About the time a queued Select waits for a slot on a loaded server.
    "TOO_MANY_SELECTS": Reason("RESOURCE_EXHAUSTED", retry_after=1.0),
    # In-flight calls drain in well under a second each on a healthy server.
    "TOO_MANY_REQUESTS": Reason("RESOURCE_EXHAUSTED", retry_after=0.5),
    # An upload stream lasts about as long as a Select.
    "TOO_MANY_STREAMS": Reason("RESOURCE_EXHAUSTED", retry_after=1.0),
    # Checking a registration (a session build in a child process) takes about a second.
    "MODEL_LOADS_BUSY": Reason("RESOURCE_EXHAUSTED", retry_after=1.0),
    "MODEL_MEMORY": Reason("RESOURCE_EXHAUSTED"),
    "RESPONSE_TOO_LARGE": Reason("RESOURCE_EXHAUSTED"),
    "SHARDS_NOT_PLACED": Reason("RESOURCE_EXHAUSTED"),
    "CANCELLED": Reason("CANCELLED"),
    "DEADLINE_EXCEEDED": Reason("DEADLINE_EXCEEDED"),
    "STREAM_IDLE": Reason("DEADLINE_EXCEEDED"),
    # Ray restarts a dead shard actor from its segments within about a second.
    "SHARD_UNAVAILABLE": Reason("UNAVAILABLE", retry_after=1.0),
    "INTERNAL": Reason("INTERNAL"),
}


class AssayError(Exception):
    """Base class. ``reason`` is a stable UPPER_SNAKE identifier for ErrorInfo, one of
    ``REASONS``; ``field`` names the offending request field.

    ``retry_after`` (seconds) overrides the reason's back-off hint, for a raiser that
    knows better (say, how long its queue takes to drain); by default the hint is
    the reason's, and only retryable reasons have one.
    """

    code_name = "INTERNAL"
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason or self.default_reason
        known = REASONS.get(self.reason)
        self.retry_after = retry_after if retry_after is not None else (
            known.retry_after if known is not None else None)


class InvalidInput(AssayError):
    """The request itself is wrong (shape, dtype, value, parameter)."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "INVALID_INPUT"


class NotFound(AssayError):
    """A named pool, strategy or resource does not exist."""

    code_name = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(AssayError):
    """A resource with that id exists already."""

    code_name = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(AssayError):
    """The request is well formed but the system is not in a state to serve it."""

    code_name = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(AssayError):
    """A configured limit (bytes, items, concurrency, disk) would be exceeded."""

    code_name = "RESOURCE_EXHAUSTED"
    default_reason = "LIMIT_EXCEEDED"


class Cancelled(AssayError):
    """The caller went away or its deadline passed; work stopped between steps."""

    code_name = "CANCELLED"
    default_reason = "CANCELLED"


class DeadlineExceeded(Cancelled):
    """The request deadline passed while the strategy was running."""

    code_name = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"
