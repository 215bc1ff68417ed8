"""Scale-out: pools larger than one machine, sharded over a Ray cluster.

Each shard of a pool lives in a Ray actor (``shard.Shard``) that persists its rows
under its own data directory and runs the same Numba/FAISS kernels as a single
machine. The driver (the gRPC server) runs the distributed algorithms: exact
k-center greedy and k-means++ as one per-shard reduce plus one broadcast per
step, composable coresets in two rounds, and per-shard top-b and KNN merges.

Nothing here is imported unless the server is started with ``--ray-address``;
only ``cluster`` imports Ray itself.
"""
