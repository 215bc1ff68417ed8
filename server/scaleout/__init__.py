"""Scale-out: pools larger than one machine, sharded over a Ray cluster.

Each shard of a pool lives in a Ray actor (``shard.Shard``), or in the server's own
process (``--ray-address in-process``), that persists its rows under its own data
directory and runs the same Numba/FAISS kernels as a single machine.
``backend.ShardedBackend`` is where the pool store sends a sharded pool's rows. The
driver (the gRPC server) runs the distributed algorithms: exact k-center greedy and
k-means++ as one per-shard reduce plus one broadcast per step, composable coresets in
two rounds, and per-shard top-b and KNN merges.

Only ``cluster`` imports Ray, and only when the server is started with a Ray address.
"""
