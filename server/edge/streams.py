"""Client-streamed calls: header first, then chunks, each message awaited a bounded time.

grpcio's synchronous server hands a handler an iterator whose ``next()`` waits for
the client with no time limit, so a client that opens a stream and then sends
nothing (or a header and then nothing) would hold the handler's thread for ever,
whatever deadline the server means to enforce. ``BoundedStream`` reads the
client's messages on a reader thread of its own and hands them over through a
one-slot queue, so the handler waits at most ``idle_timeout`` for each message and
never past the server's ceiling; the reader ends by itself once the call does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from assay.vocab.errors import Cancelled, DeadlineExceeded, InvalidInput

#: How often a blocked hand-over looks whether the handler has gone (seconds).
_HANDOVER_POLL = 0.5
#: Bytes a stream reads between two calls of its ``pace``.
PACE_BYTES = 4 << 20
_END = object()


def _size(message: Any) -> int:
    """A message's size: its wire bytes, or a parsed message's encoded size."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return len(message)
    size = getattr(message, "ByteSize", None)
    return size() if size is not None else 0


class _Failure:
    """An exception raised by the client iterator, carried to the handler's thread."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class BoundedStream(Iterator):
    """The messages of ``messages``, each awaited at most ``idle_timeout`` seconds, all
    within ``ceiling`` seconds of the start (0: no ceiling).

    Raises ``DeadlineExceeded`` (reason ``STREAM_IDLE`` when the client went quiet) from
    ``next()`` and stops reading; what the client iterator raises (a cancelled call's
    ``grpc.RpcError``) is raised as it is. Call ``close`` when the handler is done.
    ``pace``, when given, runs on the reader thread before the next message is asked
    of the client, once every ``pace_bytes`` read (so small messages are not slowed
    more than large ones); it may wait briefly (the wait counts toward
    ``idle_timeout``).
    """

    def __init__(self, messages: Iterator, *, idle_timeout: float, ceiling: float = 0.0,
                 name: str = "stream", pace: Callable[[], None] | None = None,
                 pace_bytes: int = PACE_BYTES):
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0, got {idle_timeout}")
        self.idle_timeout = idle_timeout
        self.ceiling = ceiling
        self._stop_at = time.monotonic() + ceiling if ceiling > 0 else None
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self._finished = False
        self._pace = pace
        self._pace_bytes = pace_bytes
        self._reader = threading.Thread(target=self._read, args=(messages,), daemon=True,
                                        name=f"assay-read-{name}")
        self._reader.start()

    def _read(self, messages: Iterator) -> None:
        try:
            messages = iter(messages)
            unpaced = 0  # bytes read since the last pause
            while True:
                if self._pace is not None and unpaced >= self._pace_bytes:
                    self._pace()
                    unpaced = 0
                message = next(messages, _END)
                if message is _END:
                    break
                unpaced += _size(message)
                if not self._hand_over(message):
                    return
            self._hand_over(_END)
        except BaseException as error:  # every failure goes to the handler, to raise there
            self._hand_over(_Failure(error))

    def _hand_over(self, item: Any) -> bool:
        """Put ``item`` for the handler; False once the handler has stopped reading."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_HANDOVER_POLL)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> BoundedStream:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        wait = self.idle_timeout
        if self._stop_at is not None:
            wait = min(wait, self._stop_at - time.monotonic())
        try:
            if wait <= 0:
                raise queue.Empty
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            self._finished = True
            self.close()
            if self._stop_at is not None and time.monotonic() >= self._stop_at - 1e-3:
                raise DeadlineExceeded(
                    f"the stream ran past the server's ceiling of {self.ceiling:g} s "
                    "(max_deadline_seconds); nothing was stored") from None
            raise DeadlineExceeded(
                f"no message from the client for {self.idle_timeout:g} s "
                "(stream_idle_timeout_seconds): the stream was ended and nothing was "
                "stored; send the header and chunks without pausing",
                reason="STREAM_IDLE") from None
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop handing messages over; the reader thread ends when the call does."""
        self._closed.set()


def stream_header(request_iterator: Iterator, stream: str):
    """The header of a ``header``/``chunk`` oneof stream, or ``InvalidInput``.

    ``stream`` names the stream in messages, with its article ("an append stream").
    """
    try:
        first = next(request_iterator)
    except StopIteration:
        raise InvalidInput(f"the {stream.split(' ', 1)[1]} is empty: send a header message "
                           "first", field="header") from None
    if first.WhichOneof("part") != "header":
        raise InvalidInput(f"the first message of {stream} must be the header",
                           field="header", reason="OUT_OF_ORDER")
    return first.header


def stream_chunks(request_iterator: Iterator, context, check: Callable[[], None]) -> Iterator:
    """The ``chunk`` of every message after a stream's header.

    ``check`` (deadline, ceiling, cancellation) runs before each message; a second
    header is ``InvalidInput``; a stream that ended because the caller left is
    ``Cancelled``, so a half-sent upload is never taken for a complete one.
    """
    for message in request_iterator:
        check()
        if message.WhichOneof("part") != "chunk":
            raise InvalidInput("only chunk messages may follow the header",
                               field="chunk", reason="OUT_OF_ORDER")
        yield message.chunk
    if not context.is_active():
        raise Cancelled("the client cancelled the upload; nothing was stored")
