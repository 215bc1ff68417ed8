"""What makes a write survive a crash, shared by everything that writes pool data.

A file's own ``fsync`` makes its bytes durable, not its name: the directory
entry that a create or a rename added is durable only once the directory is
fsync'd too. Pool segments, epoch files, compacted segments, shard segments and
model files are all renamed into place and then published by a SQLite commit,
so each of them needs this before the commit.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
