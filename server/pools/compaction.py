"""Merging a pool's segments into one, on disk, so that reads are views of one file.

Why: an append writes a new segment, and the kernels (Numba, FAISS) need one
contiguous array per role. Concatenating the segments in memory on every read
made a private copy of the whole pool per pool version (labels make a new
version too), on top of the mapped pages. Writing the concatenation once into a
new segment instead makes every later read a single ``np.load(mmap_mode="r")``:
pages shared with the page cache, no copy, and nothing to redo when only the
labels change.

``compact`` streams: the bytes go from each segment file to the new file inside
the kernel (``os.copy_file_range``) or, where that is not available, through one
bounded buffer, so copying a pool never holds more than ``COPY_BYTES`` of it in
this process, and never maps it. It only writes a new directory; publishing it
(swapping the merged segment rows for one in a SQLite transaction) and removing
the merged directories is the store's job, as for an append.
"""

from __future__ import annotations

import errno
import io
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .durable import fsync_dir

if TYPE_CHECKING:
    from .store import ArraySpec

#: Bytes per read/write when the bytes cannot be copied inside the kernel.
COPY_BYTES = 4 << 20
#: ``copy_file_range`` errors that mean "not here" (other filesystem, old kernel,
#: a filesystem that refuses it): copy through a buffer instead.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


def disk_dtype(spec: ArraySpec) -> np.dtype:
    """The dtype of ``spec``'s ``.npy`` file: bfloat16 is stored as its ``<u2`` bits,
    because ``.npy`` has no bfloat16 (``AppendWriter`` writes it so)."""
    return np.dtype("<u2") if spec.dtype == "bfloat16" else np.dtype(spec.dtype)


def compact(segment_dirs: Sequence[Path], specs: Sequence[ArraySpec], out_dir: Path) -> int:
    """Write the concatenation of ``segment_dirs`` as one segment in ``out_dir``.

    Parameters
    ----------
    segment_dirs : the segment directories, in pool order (``seq``); each holds
        ``<role>.npy`` for every spec.
    specs : the pool's arrays as its metadata gives them for exactly these
        segments: ``shape[item_axis]`` must be the sum of the segments' items.
    out_dir : a directory that does not exist yet; created here. Removed again if
        anything fails, so a failure leaves nothing behind.

    Returns
    -------
    int: the data bytes written (headers not counted, as in the ``segments`` table).

    Each ``<role>.npy`` is the segments' arrays concatenated along the role's item
    axis, bit for bit, with the dtype as stored. For item axis 0 that is the
    segments' data one after the other; for item axis k > 0 (``samples`` [S, N, C],
    ``predictions`` [T, N]) it is, for each index of the leading axes, each
    segment's block in turn. Every file and ``out_dir`` itself are fsync'd before
    this returns, so the store may commit a row naming ``out_dir`` at once.

    Raises
    ------
    ValueError: a segment file disagrees with ``specs`` (dtype, rank, a dimension
        other than the item axis, item counts, or a truncated file).
    OSError: reading or writing failed (a full disk: ``ENOSPC``).
    """
    out_dir.mkdir()
    try:
        written = sum(_compact_array([Path(d) / f"{s.name}.npy" for d in segment_dirs], s,
                                     out_dir / f"{s.name}.npy") for s in specs)
        fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return written


def _compact_array(paths: list[Path], spec: ArraySpec, out: Path) -> int:
    """Concatenate one role's segment files into ``out``; returns its data bytes."""
    dtype = disk_dtype(spec)
    axis = spec.item_axis
    sources = []  # (fd, data offset, items)
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            sources.append((fd, *_check_header(fd, path, spec, dtype)))
        total = sum(items for _, _, items in sources)
        if total != spec.shape[axis]:
            raise ValueError(f"the segments of {spec.name!r} hold {total} items, the pool's "
                             f"metadata {spec.shape[axis]}")
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                     "shape": tuple(spec.shape)})
        # One item's bytes past the item axis; the item axis's blocks repeat per leading index.
        inner = math.prod(spec.shape[axis + 1:]) * dtype.itemsize
        leading = math.prod(spec.shape[:axis])
        dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(dst, header.getvalue())
            for lead in range(leading):
                for fd, offset, items in sources:
                    block = items * inner
                    _copy(fd, offset + lead * block, dst, block)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        for fd, *_ in sources:
            os.close(fd)
    return leading * total * inner


def _check_header(fd: int, path: Path, spec: ArraySpec, dtype: np.dtype) -> tuple[int, int]:
    """(data offset, items) of one segment file, after checking it against ``spec``.

    Only the header is read. The checks guard the byte arithmetic of the copy: a
    file of another dtype or trailing shape would otherwise be spliced in silently.
    """
    with open(fd, "rb", closefd=False) as f:
        major, _ = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if major == 1
                else np.lib.format.read_array_header_2_0)
        shape, fortran, file_dtype = read(f)
        offset = f.tell()
    size = os.fstat(fd).st_size
    axis = spec.item_axis
    trailing = shape[:axis] + shape[axis + 1:]
    if (file_dtype != dtype or fortran or len(shape) != len(spec.shape)
            or trailing != spec.trailing()):
        raise ValueError(f"{path} holds {file_dtype} {list(shape)} (fortran_order={fortran}); "
                         f"the pool stores {spec.name!r} as {dtype} {list(spec.shape)}")
    if size - offset != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path} has {size - offset} data bytes, its header says "
                         f"{math.prod(shape) * dtype.itemsize}")
    return offset, shape[axis]


def _copy(src: int, offset: int, dst: int, length: int) -> None:
    """Append ``length`` bytes of ``src`` from ``offset`` at ``dst``'s position.

    ``copy_file_range`` moves the bytes inside the kernel (a reflink on filesystems
    that share extents): nothing of the pool passes through this process. Where it
    is refused, a buffer of at most ``COPY_BYTES`` is read and written in turn; a file
    shorter than its header says (changed since it was checked) is a ``ValueError``.
    """
    while length > 0:
        try:
            done = os.copy_file_range(src, dst, length, offset)
        except (AttributeError, OSError) as error:  # AttributeError: not Linux
            if isinstance(error, OSError) and error.errno not in _NO_KERNEL_COPY:
                raise
            break
        if done == 0:  # end of file, or a filesystem that copies nothing: let pread tell
            break
        offset += done
        length -= done
    while length > 0:
        data = os.pread(src, min(length, COPY_BYTES), offset)
        if not data:
            raise ValueError(f"a segment file ended {length} bytes early")
        _write_all(dst, data)
        offset += len(data)
        length -= len(data)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
