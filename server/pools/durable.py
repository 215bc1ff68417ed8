"""What makes a write survive a crash, shared by everything that writes pool data.

A file's own ``fsync`` makes its bytes durable, not its name: the directory
entry that a create or a rename added is durable only once the directory is
fsync'd too. Pool segments, epoch files, compacted segments, shard segments and
model files are all renamed into place and then published by a SQLite commit,
so each of them needs this before the commit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Moves a WAL database's committed pages into its main file, off the writers' path.

    SQLite checkpoints on its own inside the commit that takes the WAL past 1,000
    pages, with the writer's locks held: every few hundred stored Select responses
    one commit stalled for the checkpoint's fsync (17-23 ms here, far more on a
    loaded disk), and every Select waiting for the store's lock with it. With the
    writer's automatic checkpoint off (``PRAGMA wal_autocheckpoint=0`` on it), this
    thread runs a PASSIVE checkpoint on a connection of its own every ``interval``
    seconds; a passive checkpoint never waits for writers or readers.

    A passive checkpoint alone never lets the WAL start over under steady writes:
    SQLite rewinds it only for a writer that finds every frame copied, and a commit
    lands during each checkpoint. At 200 Selects/s with request ids the WAL grew
    by 4 MB/s (1 GB in four minutes; every read and checkpoint slower with it, and
    a 10-minute soak refused 2 % of its calls). So once the WAL holds more than
    ``restart_bytes`` of frames the round ends with a RESTART checkpoint: it waits
    for the writer of the moment, copies what the passive one left (the commits
    made meanwhile) and makes the next writer start the WAL over, holding writers
    back only for that: 5-30 ms here. (A TRUNCATE checkpoint, which also cuts the
    file, held them 120-185 ms for a 64 MB WAL; the file stays instead at about
    ``restart_bytes`` and one round of commits, written over from its start.)
    """

    def __init__(self, path: Path, interval: float = 1.0, restart_bytes: int = 64 << 20):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._restart_frames = max(1, restart_bytes // self._page_size())
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="assay-wal-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.checkpoint()

    def checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # busy, closing: the next round
            _, frames, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > self._restart_frames:
                self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def _page_size(self) -> int:
        """The database's page size: a WAL frame is one page and a 24-byte header."""
        return int(self._db.execute("PRAGMA page_size").fetchone()[0]) + 24

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.checkpoint()
        self._db.close()
