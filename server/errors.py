"""Domain errors of Assay, free of gRPC.

Every layer below the servicer raises one of these; a single interceptor turns
them into gRPC status codes with ``google.rpc`` details. Keeping the mapping in
one place means handlers never call ``context.abort`` ad hoc and the same kind of
mistake always yields the same code.
"""

from __future__ import annotations


class AssayError(Exception):
    """Base class. ``reason`` is a stable UPPER_SNAKE identifier for ErrorInfo."""

    code_name = "INTERNAL"
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason or self.default_reason


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
