"""Exactly-once handling of requests that carry a ``request_id`` (AIP-155).

The servicer's half of idempotency; the stored responses live in
``request_records``. Three pieces:

* ``check_request_id`` bounds the id (a UUID is 36 characters; 128 leaves room
  for prefixed ids) so an id is never a way to store megabytes per request.
* ``fingerprint`` and ``StreamDigest`` say what a retry must match, with the
  identity of the pool it names: the message without its id, and for an append
  the CRC32C of every array's bytes as they stream in.
* ``SingleFlight`` makes the check for a stored response and the work that stores
  one a single step per id: a retry that arrives while the first attempt still
  runs (the usual case after a client-side timeout) waits for it instead of
  running a second time.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import google_crc32c
import numpy as np

from assay.vocab.errors import InvalidInput

from ..pools.chunks import ChunkCursor

#: Longest request id accepted: a UUID (36) with room for a prefix.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"[\x21-\x7e]+")
#: Seconds between two checks of a waiting duplicate's deadline and cancellation.
_POLL = 0.02


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """Raise ``InvalidInput`` unless ``request_id`` is 1-128 printable ASCII characters."""
    if len(request_id) > MAX_REQUEST_ID or not _REQUEST_ID.fullmatch(request_id):
        shown = request_id if len(request_id) <= 40 else request_id[:40] + "..."
        raise InvalidInput(
            f"{field} {shown!r} ({len(request_id)} characters) is not a valid request id: use "
            f"1-{MAX_REQUEST_ID} printable ASCII characters without spaces, e.g. a UUID",
            field=field, reason="INVALID_REQUEST_ID")
    return request_id


def fingerprint(message) -> str:
    """Hash of a request without its ``request_id``.

    The id is blanked on the message itself for the serialization and put back,
    so a large inline request is not copied once more just to be hashed. The
    identity of the pool the request names is kept beside it (``RequestKey``),
    not in it, so that a refusal can say which of the two differs.
    """
    request_id = message.request_id
    message.request_id = ""
    try:
        return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()
    finally:
        message.request_id = request_id


#: From this many bytes a CRC runs without the interpreter lock (``_load_unlocked_extend``):
#: an upload's 4 MiB chunks, not a small Select's payload (400 KB take 16 us, less than
#: what handing the lock to another thread and taking it back costs the server: with
#: a 64 KiB threshold, 1.5-2.5 more context switches per call and fewer Selects/s).
UNLOCKED_CRC_BYTES = 1 << 20


def _load_unlocked_extend() -> Callable[[int, int, int], int] | None:
    """``crc32c_extend(crc, address, length)`` of the crc32c library that google-crc32c
    wraps, called through ctypes, or None where that library cannot be found.

    Why: google-crc32c's extension keeps the interpreter lock while it runs, and an
    upload checksums every 4 MiB chunk as it arrives (about 0.2 ms each): time in
    which no Select's Python can run, on a server whose Selects are bound by that
    lock. A ctypes call lets the lock go for the C code.
    """
    wheel_libs = Path(google_crc32c.__file__).parent.parent / "google_crc32c.libs"
    for path in _crc32c_libraries(wheel_libs):
        try:
            extend = ctypes.CDLL(path).crc32c_extend
        except (OSError, AttributeError):
            continue
        extend.restype = ctypes.c_uint32
        extend.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        return extend
    return None


def _crc32c_libraries(wheel_libs: Path) -> Iterator[str]:
    """The wheel's copy first; the system's only if that fails (``find_library`` runs
    ``ldconfig``, which an import should not pay for when the wheel has the library)."""
    yield from map(str, sorted(wheel_libs.glob("libcrc32c*.so*")))
    if found := ctypes.util.find_library("crc32c"):
        yield found


_extend_unlocked = _load_unlocked_extend()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC32C of ``data`` continuing ``crc``; takes the memoryviews of messages read in
    place (the C extension accepts bytes and read-only NumPy arrays, not memoryviews).
    Large buffers are checksummed without the interpreter lock where the library
    allows it (``_load_unlocked_extend``)."""
    view = np.frombuffer(data, dtype=np.uint8)
    if _extend_unlocked is not None and view.size >= UNLOCKED_CRC_BYTES:
        return _extend_unlocked(crc, view.ctypes.data, view.size)
    return google_crc32c.extend(crc, view)


class StreamDigest(ChunkCursor):
    """CRC32C of each array of an append stream, computed as the chunks arrive.

    CRC32C runs at several GB/s with the SSE4.2 instruction google-crc32c uses,
    so binding the data to the request id costs the upload little (see
    docs/benchmarks.md). The digest depends on the bytes only, not on how they
    were cut into chunks, so a retry may chunk differently.
    """

    def __init__(self, names: list[str], sizes: list[int]):
        super().__init__(names, sizes)
        self._crc = [0] * len(sizes)

    def update(self, index: int, offset: int, data: bytes) -> None:
        """Add one chunk; it must continue exactly where the array's last chunk ended."""
        self.advance(index, offset, data)
        self._crc[index] = crc32c(data, self._crc[index])

    def value(self) -> str:
        """The digest as stored with the request record: ``crc32c:`` and one CRC per array."""
        return "crc32c:" + ",".join(f"{crc:08x}" for crc in self._crc)


class SingleFlight:
    """At most one execution per request id at a time, in this process.

    ``hold`` returns once the caller is the only holder of its id; a duplicate
    waits meanwhile, checking its own deadline and cancellation. When the holder
    is done the next one in goes on to look for a stored response: it finds the
    first attempt's answer if that committed, and otherwise (the first attempt
    failed, was cancelled or ran out of time, and stored nothing) runs the
    request itself. That is what a client retrying after a timeout wants: its
    retry completes whatever became of the first attempt.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    @contextlib.contextmanager
    def hold(self, request_id: str, check: Callable[[], None]) -> Iterator[None]:
        while True:
            with self._lock:
                done = self._running.get(request_id)
                if done is None:
                    done = self._running[request_id] = threading.Event()
                    break
            while not done.wait(_POLL):
                check()
        try:
            yield
        finally:
            with self._lock:
                del self._running[request_id]
            done.set()

    def running(self) -> int:
        """How many request ids are being executed now (for tests and metrics)."""
        with self._lock:
            return len(self._running)
