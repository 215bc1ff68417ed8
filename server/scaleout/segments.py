"""A shard's rows on its own disk: one directory of ``.npy`` files per append.

A shard receives a slice of every append. Each slice is written to a temp
directory, fsync'd and renamed to ``seg-<seq>``, so a crash leaves either the
whole slice or nothing. The driver's metadata is the commit point: it names the
segments that belong to the pool, and a segment it does not name (an append
that failed on another shard) is ignored and overwritten by the retry.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from assay.vocab.dtypes import BFLOAT16

from ..pools.durable import fsync_dir


def write_segment(root: Path, seq: int, arrays: dict[str, np.ndarray]) -> int:
    """Persist one slice atomically as ``root/seg-<seq>``; returns the bytes written.

    bfloat16 is stored as its ``uint16`` bits (``.npy`` has no bfloat16 type), as
    the pool store does.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    size = 0
    try:
        for name, array in arrays.items():
            a = np.ascontiguousarray(array)
            disk = a.view(np.uint16) if a.dtype == BFLOAT16 else a
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, disk, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            size += a.nbytes
        fsync_dir(tmp)
        final = root / f"seg-{seq}"
        if final.exists():  # an earlier try that the driver never committed
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return size


def read_segment(root: Path, seq: int, dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Memory-map one committed slice; ``dtypes`` names bfloat16 arrays (``"bfloat16"``)."""
    out = {}
    for name, dtype in dtypes.items():
        a = np.load(root / f"seg-{seq}" / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        out[name] = a.view(BFLOAT16) if dtype == "bfloat16" else a
    return out


def sweep(root: Path, keep: set[int]) -> None:
    """Remove temp directories and segments the driver does not reference."""
    if not root.exists():
        return
    for entry in root.iterdir():
        if entry.name.startswith("tmp-"):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith("seg-") and int(entry.name[4:]) not in keep:
            shutil.rmtree(entry, ignore_errors=True)
