"""Receiving one append stream: chunks written straight into temp ``.npy`` files.

The stream's bytes are already little-endian and row-major, so each chunk goes to
its file as it arrives; the kernel is nudged to start writing it out, and its rows
are validated on a checker thread while the next chunks are in flight. At commit
the fsync finds most pages on disk and the checks done: an upload costs little
more than receiving it. The store then publishes the files (``PoolStore``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import shutil
import sys
import threading
import uuid
from typing import TYPE_CHECKING

import numpy as np

from assay.vocab import roles
from assay.vocab.dtypes import from_stored
from assay.vocab.errors import InvalidInput, ResourceExhausted

from ..strategies.validation import check_consistency, validate_array
from .chunks import ChunkCursor
from .compaction import disk_dtype
from .durable import fsync_dir

if TYPE_CHECKING:
    from .request_records import RequestKey
    from .store import ArraySpec, PoolInfo, PoolStore

#: Bytes written to an upload's temp file between two writeback kicks.
_WRITEBACK_BYTES = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2
#: Chunks an upload may have waiting for its checker thread.
_CHECK_QUEUE = 4
#: Longest row checked chunk by chunk; a row split across chunks is buffered until whole.
_MAX_ROW_BYTES = 1 << 20


def _libc_function(name: str, *argtypes):
    """A Linux C library function by ``name``, or None elsewhere or where it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


def _writeback_starter():
    """Linux ``sync_file_range``, or None where the C library lacks it.

    An upload is fsync'd once, at commit; left alone, the kernel holds its
    dirty pages until then and the whole file hits the disk after the last
    chunk, in series with the upload. Starting write-out as chunks arrive
    (asynchronously: ``SYNC_FILE_RANGE_WRITE`` does not wait) lets the disk
    work while the network does, and leaves the fsync little to do. It is only
    a hint: durability still comes from the fsync, which reports any error.
    """
    return _libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                          ctypes.c_uint)


_sync_file_range = _writeback_starter()
#: Linux ``fallocate(2)``: unlike ``os.posix_fallocate`` it never falls back to writing
#: zeros where the filesystem cannot allocate, which would write the file twice.
_fallocate = _libc_function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                            ctypes.c_int64)


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now (no wait, no error)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of ``fd``'s blocks before the stream writes them.

    The filesystem then maps the file once instead of block by block as chunks
    arrive (4-6 ms of a 40 MB upload's 45-50 on ext4 here), and a disk that
    cannot hold the upload says so before its first chunk. Only a hint: where
    the filesystem cannot allocate ahead, the chunks' writes allocate as usual.
    """
    if _fallocate is None or size <= 0:
        return
    if _fallocate(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(code, os.strerror(code))


@contextlib.contextmanager
def _disk_full_is_exhausted():
    """A disk that fills up during an upload is RESOURCE_EXHAUSTED, not an internal error.

    The free-space check before an upload cannot see other writers; the caller aborts
    the upload, so nothing half-written stays behind.
    """
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted("the data directory ran out of space during the upload; "
                                    "nothing was stored", reason="DISK_FULL") from None
        raise



class AppendWriter:
    """Receives one append stream's chunks straight into temp ``.npy`` files.

    Per chunk, the receiving thread only checks the order, writes, and nudges the
    kernel to start writing out; validation runs on a checker thread. At commit,
    the fsync finds most pages already on disk and the checks already done, so an
    upload costs little more than receiving it.
    """

    def __init__(self, store: PoolStore, pool_id: str, uid: str, specs: list[ArraySpec],
                 shards: int = 0, *, replace: bool = False):
        self.store = store
        self.pool_id = pool_id
        self.uid = uid
        self.specs = specs
        self.shards = shards
        #: The arrays replace those of the pool (``ReplacePoolArrays``) instead of adding items.
        self.replace = replace
        self.tmp = store.tmp_dir / uuid.uuid4().hex
        self.tmp.mkdir()
        self.expected = [int(np.prod(s.shape)) * from_stored(s.dtype).itemsize for s in specs]
        self.cursor = ChunkCursor([s.name for s in specs], self.expected)
        self.total_bytes = sum(self.expected)
        self._dtypes = [from_stored(s.dtype) for s in specs]
        # Content checks run per row (a last-axis row, or one element of a 1-D array).
        self._row_bytes = [(s.shape[-1] if len(s.shape) > 1 else 1) * d.itemsize
                           for s, d in zip(specs, self._dtypes, strict=True)]
        self._partial = [b""] * len(specs)  # the start of a row split across chunks
        # False once a check failed, or when chunks cannot be checked alone (no data, a
        # role whose checks span rows, rows too long to buffer): validate in full at commit.
        self._rows_ok = [want > 0 and s.name in roles.row_local_roles() and row <= _MAX_ROW_BYTES
                         for s, want, row in zip(specs, self.expected, self._row_bytes,
                                                 strict=True)]
        self._unflushed = [0] * len(specs)
        self._checks: queue.Queue | None = None
        self._checker: threading.Thread | None = None
        self._files = []
        try:
            with _disk_full_is_exhausted():
                for spec, size in zip(specs, self.expected, strict=True):
                    f = open(self.tmp / f"{spec.name}.npy", "wb")
                    self._files.append(f)
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": disk_dtype(spec).str, "fortran_order": False,
                            "shape": spec.shape})
                    _reserve(f.fileno(), f.tell() + size)
        except BaseException:
            self.abort()
            raise

    def write(self, index: int, offset: int, data: bytes) -> None:
        """Append one chunk; it must continue exactly where the array's last one ended."""
        self.cursor.advance(index, offset, data)
        with _disk_full_is_exhausted():
            self._files[index].write(data)
        self._unflushed[index] += len(data)
        if self._unflushed[index] >= _WRITEBACK_BYTES:
            _start_writeback(self._files[index].fileno())
            self._unflushed[index] = 0
        if self._rows_ok[index]:
            self._queue_check(index, data)

    def _queue_check(self, index: int, data: bytes) -> None:
        """Hand a chunk to this upload's checker thread, which validates it in order.

        Checking in the receiving thread would put validation in series with
        parsing and writing every chunk; NumPy releases the GIL while it checks,
        so on a second core it overlaps with both. The bounded queue makes a
        slow checker slow the stream down instead of holding the upload in memory.
        """
        if self._checker is None:
            self._checks = queue.Queue(maxsize=_CHECK_QUEUE)
            self._checker = threading.Thread(target=self._run_checks, daemon=True,
                                             name="assay-append-check")
            self._checker.start()
        self._checks.put((index, data))

    def _run_checks(self) -> None:
        while (item := self._checks.get()) is not None:
            index, data = item
            if not self._rows_ok[index]:
                continue
            try:
                self._check_rows(index, data)
            except Exception:  # a failed check only means: validate in full at commit
                self._rows_ok[index] = False

    def _finish_checks(self, drop: bool = False) -> None:
        """Wait for the checker to go through every queued chunk (``drop``: skip them)."""
        if self._checker is None:
            return
        if drop:
            self._rows_ok = [False] * len(self.specs)
        self._checks.put(None)
        self._checker.join()
        self._checker = None

    def _check_rows(self, index: int, data: bytes) -> None:
        """Validate the rows this chunk completes, while they are still in memory.

        Checking after the stream would read the whole array back after the fsync,
        in series with the upload; checked as they arrive, rows are validated while
        the next chunks are in flight and the disk is writing. Only a pass is
        recorded here: when a row fails, the array is validated in full at commit,
        so the error, and its order after the truncation check, is exactly the one
        a full check reports. Every check is row-local, so all rows passing is the
        same as the whole array passing.
        """
        row = self._row_bytes[index]
        view = memoryview(data)
        head = self._partial[index]
        ok = True
        if head:
            need = row - len(head)
            if len(view) < need:
                self._partial[index] = head + bytes(view)
                return
            ok = self._rows_valid(index, head + bytes(view[:need]))
            view = view[need:]
        whole = len(view) - len(view) % row
        if ok and whole:
            ok = self._rows_valid(index, view[:whole])
        self._partial[index] = bytes(view[whole:])
        self._rows_ok[index] = ok

    def _rows_valid(self, index: int, rows) -> bool:
        """Whether ``rows`` (whole rows' bytes) pass ``validate_array`` for the array's role."""
        spec = self.specs[index]
        array = np.frombuffer(rows, dtype=self._dtypes[index])
        if len(spec.shape) > 1:
            # Keep the role's rank: validate_array checks rank, and rows run along the last axis.
            array = array.reshape((1,) * (len(spec.shape) - 2) + (-1, spec.shape[-1]))
        try:
            validate_array(spec.name, array, field=f"array {spec.name!r}")
        except InvalidInput:
            return False
        return True

    def commit(self, request: RequestKey | None = None,
               make_response=None) -> tuple[PoolInfo, int, int]:
        """Check completeness and content, fsync, then publish the segment."""
        self.cursor.check_complete()
        with _disk_full_is_exhausted():
            for f in self._files:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._finish_checks()
        arrays = {s.name: self.store._open(self.tmp / f"{s.name}.npy", s) for s in self.specs}
        for i, (name, array) in enumerate(arrays.items()):
            if not (self._rows_ok[i] and not self._partial[i]):
                validate_array(name, array, field=f"array {name!r}")
        check_consistency(arrays)
        del arrays
        fsync_dir(self.tmp)
        return self.store._commit_append(self, request, make_response)

    def abort(self) -> None:
        self._finish_checks(drop=True)
        for f in self._files:
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
