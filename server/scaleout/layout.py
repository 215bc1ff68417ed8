"""Which global items each shard holds, and the driver's view of one select.

Every append of n items is cut into K contiguous slices, slice k going to shard
k, so shards stay balanced however the pool grows. A shard therefore holds
*runs* of consecutive global ids (one per append), and the pool's item order is
the runs sorted by their first id. Algorithms that depend on item order (the
k-means++ inverse-CDF draw, the seeded first centre, tie-breaks) walk the runs
in that order; the rest only need each shard's local answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from .shard import Segment


def split(n: int, shards: int) -> list[tuple[int, int]]:
    """(offset, count) of each shard's slice of an append of ``n`` items."""
    base, extra = divmod(n, shards)
    out, start = [], 0
    for k in range(shards):
        count = base + (1 if k < extra else 0)
        out.append((start, count))
        start += count
    return out


@dataclass(frozen=True)
class Layout:
    """The committed segments of every shard: ``segments[k]`` lists (seq, first id, rows)."""

    segments: tuple[tuple[Segment, ...], ...]

    @property
    def shards(self) -> int:
        return len(self.segments)

    def runs(self) -> list[tuple[int, int]]:
        """(shard, segment position on that shard) of every run, in global item order."""
        keyed = [(seg[1], k, i) for k, segs in enumerate(self.segments)
                 for i, seg in enumerate(segs)]
        return [(k, i) for _, k, i in sorted(keyed)]

    def owner(self, gid: int) -> int:
        """The shard holding global item ``gid``."""
        for k, segs in enumerate(self.segments):
            for _, first, count in segs:
                if first <= gid < first + count:
                    return k
        raise IndexError(gid)

    def restrict(self, ids: np.ndarray, k: int) -> np.ndarray:
        """The sorted ids among ``ids`` that shard ``k`` holds (what to send it)."""
        keep = np.zeros(ids.size, dtype=bool)
        for _, first, count in self.segments[k]:
            keep |= (ids >= first) & (ids < first + count)
        return ids[keep]


class Session:
    """One select on a sharded pool: opened on every shard, closed on exit.

    ``counts[k][i]`` is the number of candidates in segment i of shard k; the
    driver uses them (in global run order) to find the shard and offset of a
    global candidate position without ever listing the candidates.
    """

    def __init__(self, group, layout: Layout, dtypes: dict[str, str], exclude: np.ndarray,
                 restrict: np.ndarray | None = None):
        self.group, self.layout, self.dtypes = group, layout, dtypes
        self.sid = uuid.uuid4().hex
        exclude = np.asarray(exclude, dtype=np.int64)
        args = []
        for k in range(layout.shards):
            only = None if restrict is None else layout.restrict(restrict, k)
            args.append((self.sid, list(layout.segments[k]), dtypes,
                         layout.restrict(exclude, k), only))
        self.counts = [np.asarray(c, dtype=np.int64) for c in group.map("begin", per_shard=args)]
        self.runs = layout.runs()
        self.run_counts = np.array([self.counts[k][i] for k, i in self.runs], dtype=np.int64)
        self.total = int(self.run_counts.sum())

    def locate(self, position: int) -> tuple[int, int, int]:
        """(shard, segment, offset) of the candidate at a global candidate position."""
        cum = np.cumsum(self.run_counts)
        r = int(np.searchsorted(cum, position, side="right"))
        k, i = self.runs[r]
        return k, i, int(position - (cum[r] - self.run_counts[r]))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.group.map("end", self.sid)
        except Exception:  # best effort: a dead shard has no session left to end
            pass
