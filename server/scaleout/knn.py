"""Sharded exact KNN: every shard searches its own rows with FAISS, the driver keeps
the k best of the K * k answers per query.

CAL scores an item by its nearest *labeled* neighbours; on a sharded pool those
are spread over the shards, so the base of the search is a session restricted
to the labeled ids, and every shard answers for its part of it. Exact: the k
nearest overall are among the union of every shard's k nearest. Equal distances
are ordered by lower item id.
"""

from __future__ import annotations

import numpy as np

from .layout import Session


def knn(session: Session, queries: np.ndarray, k: int,
        metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest candidates of a session to every query.

    Returns
    -------
    values : float32 [Q, k]
        Squared distances (l2, ascending) or cosine similarities (descending);
        +inf / -inf where fewer than k candidates exist.
    ids : int64 [Q, k]
        Global item ids; -1 where missing.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    answers = session.group.map("knn", session.sid, queries, k, metric)
    values = np.concatenate([a[0] for a in answers], axis=1)
    ids = np.concatenate([a[1] for a in answers], axis=1)
    key = values if metric == "l2" else -values
    missing = ids < 0
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids),
                        np.where(missing, np.inf, key)), axis=1)[:, :k]
    out_v = np.take_along_axis(values, order, axis=1)
    out_i = np.take_along_axis(ids, order, axis=1)
    if out_v.shape[1] < k:  # fewer candidates than k in the whole pool
        pad = k - out_v.shape[1]
        fill = np.inf if metric == "l2" else -np.inf
        out_v = np.pad(out_v, ((0, 0), (0, pad)), constant_values=fill)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_v.astype(np.float32), out_i
