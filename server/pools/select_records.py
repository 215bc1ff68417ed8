"""Stored responses of Selects: an append-only journal beside the SQLite store.

A Select changes nothing, so its record (AIP-155 idempotency, ``request_records``)
shares no transaction with a change: it only has to be on file before the answer
leaves, so that a retry after the server process crashed or restarted finds it. (A
power loss may lose it; the retry then computes the answer anew.) Written as a row
of the records' table, each Select rewrote a page of the id index at a random place
and the WAL frames of its transaction, which the checkpointer then copied again:
about a tenth of a small Select's time on the server, and most of the store's
writes. Appending the record to a file is one ``write`` of its bytes.

Files: ``<dir>/<seq>.log`` segments, each a run of frames::

    magic b"ASR1" | body length (u32) | CRC32C of the body (u32) | body
    body: create_time (f64) | byte lengths of request_id, method, fingerprint,
          pool_uid, data_digest (u16 each) | those five strings (UTF-8) | response

Memory holds, per record, only where its frame is and when it was made; a lookup
of an id never used (every new request) reads nothing. Records leave oldest first
(the retention window, then the caps), so a segment is deleted once its last record
has left. At start the segments are read back; a frame cut short by a crash, or
failing its checksum, ends its segment there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import google_crc32c

from assay.vocab.errors import ResourceExhausted

from .request_records import (
    RequestKey,
    Retention,
    StoredResponse,
    check_same_request,
    expired,
    over_cap,
)

MAGIC = b"ASR1"
_HEAD = struct.Struct("<4sII")
_BODY = struct.Struct("<d5H")
#: A segment takes no new frame once it holds this many bytes.
SEGMENT_BYTES = 32 << 20


class _Record(NamedTuple):
    segment: int
    offset: int  # of the frame in its segment
    length: int  # of the frame
    size: int  # of the response (the byte cap counts responses, as the table does)
    create_time: float


class _Segment:
    __slots__ = ("fd", "live", "path", "seq", "size")

    def __init__(self, seq: int, path: Path, fd: int):
        self.seq, self.path, self.fd, self.size, self.live = seq, path, fd, 0, 0


def _frame(key: RequestKey, response: bytes, create_time: float) -> bytes:
    strings = [s.encode() for s in (key.request_id, key.method, key.fingerprint,
                                    key.pool_uid, key.data_digest)]
    body = b"".join([_BODY.pack(create_time, *map(len, strings)), *strings, response])
    return _HEAD.pack(MAGIC, len(body), google_crc32c.value(body)) + body


def _parse(body: bytes) -> tuple[float, list[str], bytes]:
    """(create_time, [request_id, method, fingerprint, pool_uid, data_digest], response)."""
    create_time, *lengths = _BODY.unpack_from(body)
    strings, at = [], _BODY.size
    for n in lengths:
        strings.append(body[at:at + n].decode())
        at += n
    return create_time, strings, body[at:]


def _frames(data: bytes):
    """(offset, length, body) of each whole, intact frame from the start of ``data``;
    stops at the first that is cut short or fails its checksum."""
    at = 0
    while at + _HEAD.size <= len(data):
        magic, length, crc = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + length
        if magic != MAGIC or length < _BODY.size or end > len(data):
            return
        body = data[at + _HEAD.size:end]
        if google_crc32c.value(body) != crc:
            return
        yield at, end - at, body
        at = end


class SelectRecords:
    """The journal of Select responses under ``directory``; safe for concurrent use.

    ``get`` and ``put`` follow ``RequestRecords``: a record made for another request
    under the same id is FAILED_PRECONDITION (``check_same_request``), and one past
    the retention window is not found. ``retention``'s caps count these records
    alone (the table's records have caps of their own).
    """

    def __init__(self, directory: str | os.PathLike, retention: Retention | None = None, *,
                 segment_bytes: int = SEGMENT_BYTES):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.retention = retention or Retention()
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        #: request id -> its record, oldest first.
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._segments: dict[int, _Segment] = {}
        self._bytes = 0
        self._closed = False
        try:
            for seq, path in sorted((int(p.stem), p) for p in self.directory.glob("*.log")
                                    if p.stem.isdigit()):
                self._read(seq, path)
            self._current = self._open(max(self._segments, default=0) + 1)
        except BaseException:
            self.close()
            raise
        with self._lock:
            # the newest is kept even alone over the byte cap, as when it was written
            self._leave(time.time(), keep=next(reversed(self._records), None))
            self._delete_empty()  # also those a crash left without one whole frame

    def __len__(self) -> int:
        return len(self._records)

    def _read(self, seq: int, path: Path) -> None:
        """Take the records of segment ``path`` in, up to a frame a crash cut short or
        one damaged since (the segment is never written again: new frames go to a new
        one, so nothing ever follows a torn frame)."""
        data = path.read_bytes()
        segment = self._open(seq, path)
        for offset, length, body in _frames(data):
            create_time, strings, response = _parse(body)
            self._add(strings[0], _Record(seq, offset, length, len(response), create_time))
        segment.size = len(data)

    def _open(self, seq: int, path: Path | None = None) -> _Segment:
        path = path or self.directory / f"{seq:08d}.log"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        segment = self._segments[seq] = _Segment(seq, path, fd)
        return segment

    def _add(self, request_id: str, record: _Record) -> None:
        self._drop(request_id)
        self._records[request_id] = record
        self._segments[record.segment].live += 1
        self._bytes += record.size

    def _drop(self, request_id: str) -> None:
        record = self._records.pop(request_id, None)
        if record is not None:
            self._bytes -= record.size
            self._segments[record.segment].live -= 1

    def _leave(self, now: float, keep: str | None = None) -> None:
        """Drop the oldest records while they are expired or a cap is broken (a cap never
        drops ``keep``, the newest: its retry must still find it), then delete the
        segments that left them without a record."""
        dropped = False
        while self._records:
            request_id, record = next(iter(self._records.items()))
            if not expired(self.retention, record.create_time, now) and (
                    request_id == keep
                    or not over_cap(self.retention, len(self._records), self._bytes)):
                break
            self._drop(request_id)
            dropped = True
        if dropped:
            self._delete_empty()

    def _delete_empty(self) -> None:
        """Delete the segments without a live record, but the one being written."""
        for seq, segment in list(self._segments.items()):
            if segment.live == 0 and segment is not self._current:
                os.close(segment.fd)
                segment.path.unlink(missing_ok=True)
                del self._segments[seq]

    def get(self, key: RequestKey) -> StoredResponse | None:
        """The live record for ``key.request_id``, or None."""
        record = self._records.get(key.request_id)
        if record is None:
            return None
        if expired(self.retention, record.create_time, time.time()):
            return None
        with self._lock:
            if self._records.get(key.request_id) is not record:
                return None  # it left meanwhile
            data = os.pread(self._segments[record.segment].fd, record.length, record.offset)
        frame = next(_frames(data), None)
        if frame is None:
            return None  # damaged on disk since it was read at start
        _, (request_id, method, fingerprint, pool_uid, digest), response = _parse(frame[2])
        if request_id != key.request_id:
            return None  # never another id's answer, whatever the index says
        check_same_request(key, method, fingerprint, pool_uid)
        return StoredResponse(response, digest)

    def put(self, key: RequestKey, response: bytes) -> None:
        """Append the record of ``key``; returns once it is in the file (not fsynced)."""
        now = time.time()
        frame = _frame(key, response, now)
        with self._lock:
            if self._closed:
                raise RuntimeError("the Select records are closed: the server is stopping")
            segment = self._current
            try:
                if segment.size and segment.size + len(frame) > self.segment_bytes:
                    segment = self._current = self._open(segment.seq + 1)
                if os.write(segment.fd, frame) != len(frame):
                    raise OSError(errno.ENOSPC, "a short write")
            except BaseException as error:
                self._cut(segment)
                if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(
                        "the data directory's disk is full: the Select's answer could not be "
                        "stored for its retries, and it was not sent", reason="DISK_FULL",
                    ) from error
                raise
            self._add(key.request_id,
                      _Record(segment.seq, segment.size, len(frame), len(response), now))
            segment.size += len(frame)
            self._leave(now, keep=key.request_id)

    def _cut(self, segment: _Segment) -> None:
        """After a failed write: no torn frame before the next one. Where the file cannot
        be cut back, the next frames go to a new segment (a restart reads a segment up
        to its first torn frame)."""
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError:
            with contextlib.suppress(OSError):
                self._current = self._open(segment.seq + 1)

    def close(self) -> None:
        """Close the files; a ``put`` after this raises (a Select still running while the
        server stops), a ``get`` finds nothing."""
        with self._lock:
            self._closed = True
            for segment in self._segments.values():
                os.close(segment.fd)
            self._segments.clear()
            self._records.clear()
