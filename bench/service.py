"""Service benchmark: entropy selection at N = 1M, C = 10 (float32), in-process vs gRPC.

What it answers: how much does serving cost over calling the strategy directly,
and how close does a durable pool upload come to what the transport and the disk
allow? Every figure is measured in the same run on the same machine:

(a)  ``selection.select`` in-process on an in-memory array (the strategy, the
     candidate set and the top-b; ``validated=True``, as for a stored pool), and
     the same call with input validation (what an in-process user pays);
(b)  ``Select`` with the probabilities inline over loopback gRPC (the server is
     started with inline and message limits raised above the 40 MB payload);
(c)  ``AppendPoolItems`` of the same array into a new pool (upload, timed alone),
     then ``Select`` by pool id (timed alone: first call and warm calls), and
     how much of that is outside the strategy (wall time minus the server's
     reported ``compute_seconds``);
raw  a bare grpcio stream-unary bytes handler receiving the same bytes in the
     same chunk size, a unary echo of the whole payload, and a unary call
     answered with as many bytes as the Select's answer, on the same loopback:
     what the transport allows;
disk a sequential write of the same bytes, in the same chunks, into the data
     directory's filesystem followed by one fsync: what durability allows.

Upload targets are stated against ``min(raw stream, disk write)``: a durable
upload has to cross both, so it cannot beat the slower one. The CPU time the
raw stream and the upload take, in the server's process and in the client's,
is counted too: the client shares the machine's cores, so their sum over the
cores is a floor on the wall time that no overlap can beat. Both servers run in
a child process, as a trainer and Assay would (``--in-process`` keeps them in
this one). Measurements are interleaved in rounds, so load from other work on
the machine falls on all of them alike; the table gives best and median.

Run ``python bench/service.py`` (about 30 s on 2 cores) or small:
``python bench/service.py --n 10000 --repeats 2``. Results and the machine they
came from are in ``docs/benchmarks.md`` ("Service").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from assay.client import Client
from assay.server.acquisition import selection
from assay.server.wiring import allocator, switching
from assay.server.wiring.app import start
from assay.server.wiring.config import ServerConfig
from assay.v1 import assay_pb2

MB = 1e6
MIB = 1 << 20
#: The client's stream chunk size; the raw baseline and disk write use the same.
CHUNK_BYTES = 4 * MIB
RAW_UPLOAD = "/assay.bench.Raw/Upload"
RAW_ECHO = "/assay.bench.Raw/Echo"
RAW_REPLY = "/assay.bench.Raw/Reply"


# -- machine -------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


def _filesystem(path: Path) -> str:
    """Type and device of the mount holding ``path`` (longest matching mount point)."""
    path = path.resolve()
    best, found = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, point, fstype = line.split()[:3]
            if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best):
                best, found = point, f"{fstype} on {device} ({point})"
    except OSError:
        pass
    return found


def load() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line(data_dir: Path) -> str:
    """What the figures depend on: CPU, cores, memory, the data dir's filesystem, load."""
    return (f"machine: {_cpu_model()}, {os.cpu_count()} cores, {_memory_gib():.1f} GiB, "
            f"data dir {_filesystem(data_dir)}, Python {platform.python_version()}, "
            f"grpcio {grpc.__version__}, NumPy {np.__version__}, load {load()}")


# -- workload ------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) of process ``pid``, this one by default.

    Another process's time is read from ``/proc`` in clock ticks (10 ms), so it is
    only summed over many calls, never read per call.
    """
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent in the server's process and in this one, per measurement.

    Sums over all rounds (a tick is 10 ms, an upload a few ticks), divided by
    the calls: the mean CPU of one call.
    """

    def __init__(self, server_pid: int | None):
        #: None when the servers run in this process: then only the total is known.
        self.server_pid = server_pid if server_pid and Path("/proc/self/stat").exists() else None
        self.totals: dict[str, list[float]] = {}

    def timed(self, name: str, fn: Callable[[], object]) -> float:
        """Wall seconds of one call of ``fn``, its CPU added to ``name``'s totals."""
        server = process_cpu(self.server_pid) if self.server_pid else 0.0
        client = process_cpu()
        wall = timed(fn)
        client = process_cpu() - client
        server = process_cpu(self.server_pid) - server if self.server_pid else 0.0
        total = self.totals.setdefault(name, [0.0, 0.0, 0])
        total[0] += server
        total[1] += client
        total[2] += 1
        return wall

    def per_call(self, name: str) -> tuple[float, float]:
        """Mean (server, client) CPU seconds of one ``name`` call."""
        server, client, calls = self.totals[name]
        return server / calls, client / calls


def make_probs(n: int, c: int, seed: int = 0) -> np.ndarray:
    """float32[n, c]: softmax of Gaussian logits, so rows are valid probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c), dtype=np.float32) * 2.0
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def selection_request(budget: int, pool_id: str) -> bytes:
    """The serialized ``Select`` of the bench's entropy top-``budget`` from a pool."""
    return assay_pb2.SelectRequest(strategy="entropy", budget=budget, pool_id=pool_id,
                                   seed=0).SerializeToString()


def chunks_of(payload: bytes, size: int) -> list[bytes]:
    """``payload`` cut into ``size``-byte pieces, made before timing starts."""
    view = memoryview(payload)
    return [bytes(view[i:i + size]) for i in range(0, len(view), size)]


# -- baselines -----------------------------------------------------------------------


def disk_write(chunks: list[bytes], directory: Path) -> None:
    """Write ``chunks`` sequentially to a new file in ``directory``, fsync once, remove it.

    The file is new each time, as an upload's temp file is, so block allocation
    is part of the cost.
    """
    path = directory / f"disk-{uuid.uuid4().hex}.bin"
    try:
        with open(path, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    finally:
        path.unlink(missing_ok=True)


def start_raw_server(max_bytes: int) -> tuple[grpc.Server, int]:
    """A bare grpcio server: bytes in, bytes out, no protobuf, no work in the handler."""

    def upload(request_iterator: Iterator[bytes], context) -> bytes:
        total = 0
        for chunk in request_iterator:
            total += len(chunk)
        return total.to_bytes(8, "little")

    def echo(request: bytes, context) -> bytes:
        return request

    replies: dict[int, bytes] = {}

    def reply(request: bytes, context) -> bytes:
        """As many bytes as the request's 8-byte size asks: an answer that costs nothing."""
        size = int.from_bytes(request, "little")
        return replies.setdefault(size, bytes(size))

    handler = grpc.method_handlers_generic_handler("assay.bench.Raw", {
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Reply": grpc.unary_unary_rpc_method_handler(reply),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _serve(conn, data_dir: str, limit: int) -> None:
    """Child process: run both servers, report their ports, stop when told.

    The process is tuned as ``assay serve`` tunes its own (allocator thresholds,
    switch interval), and the raw server shares it, so both run under the same
    settings and the ratios measure what the handlers do.
    """
    allocator.tune()
    raw_server, raw_port = start_raw_server(limit)
    server = start(ServerConfig(address="127.0.0.1:0", data_dir=data_dir,
                                max_message_bytes=limit, max_inline_bytes=limit))
    switching.tune()
    try:
        conn.send((raw_port, server.port))
        conn.recv()
    finally:
        server.stop(0)
        raw_server.stop(None).wait()
        conn.send("stopped")


class Servers:
    """The raw grpcio server and the Assay server, in a child process by default.

    A trainer and Assay are separate processes; in one process the client's
    chunking and the servicer would take turns on one GIL, which no deployment
    pays. ``in_process`` keeps them together (for profiling).
    """

    def __init__(self, data_dir: Path, limit: int, in_process: bool = False):
        self.data_dir, self.limit, self.in_process = data_dir, limit, in_process
        self._raw = self._assay = self._process = self._conn = None

    def start(self) -> tuple[int, int]:
        if self.in_process:
            self._raw, raw_port = start_raw_server(self.limit)
            self._assay = start(ServerConfig(address="127.0.0.1:0", data_dir=str(self.data_dir),
                                             max_message_bytes=self.limit,
                                             max_inline_bytes=self.limit))
            return raw_port, self._assay.port
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, daemon=True,
                                        args=(child, str(self.data_dir), self.limit))
        self._process.start()
        deadline = time.monotonic() + 60
        while not self._conn.poll(0.1):
            if not self._process.is_alive():
                raise RuntimeError("the server process exited (its traceback is above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the server process did not start within 60 s")
        return self._conn.recv()

    @property
    def pid(self) -> int | None:
        """The servers' child process, None when they run in this one."""
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        if self._assay is not None:
            self._assay.stop(0)
        if self._raw is not None:
            self._raw.stop(None).wait()
        if self._process is not None:
            try:
                self._conn.send("stop")
                self._conn.poll(30)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()


# -- report --------------------------------------------------------------------------

#: Upload throughput over min(raw grpcio stream, disk write), at least.
UPLOAD_TARGET = 0.70
#: Select by pool id over in-process selection, at most.
SELECT_TARGET = 1.10


def compute_ratios(t: dict[str, float]) -> dict[str, float]:
    """Ratios of times ``t`` (seconds by measurement); throughput ratios are inverted times.

    ``upload/min(raw,disk)`` is the upload's MB/s over the slower of the raw
    stream and the disk write, both of which a durable upload must cross.
    ``1+overhead/a`` is Select by pool over in-process with the strategy's own
    time replaced by the in-process one: on a busy machine the strategy's time
    swings by more than the 10% being judged, the serving overhead far less.
    ``c_select/(a+reply)`` is Select by pool over in-process plus one bare round
    trip carrying an answer of the same size: what no server could go below.
    """
    bound = max(t["raw_stream"], t["disk"])
    return {
        "b/a": t["b"] / t["a"],
        "b/a'": t["b"] / t["a_validated"],
        "c_select/a": t["c_select"] / t["a"],
        "c_select_first/a": t["c_select_first"] / t["a"],
        "1+overhead/a": 1 + t["c_select_overhead"] / t["a"],
        "1+overhead_first/a": 1 + t["c_select_first_overhead"] / t["a"],
        "c_total/a": (t["upload"] + t["c_select_first"]) / t["a"],
        "c_select/(a+reply)": t["c_select"] / (t["a"] + t["raw_reply"]),
        "upload/min(raw,disk)": bound / t["upload"],
        "upload/raw": t["raw_stream"] / t["upload"],
        "upload/disk": t["disk"] / t["upload"],
    }



def _row(name: str, times: list[float], nbytes: int | None = None) -> str:
    """One table line: best and median milliseconds, MB/s of the best when bytes moved."""
    best, median = min(times), statistics.median(times)
    rate = f"{nbytes / best / MB:9.0f}" if nbytes else " " * 9
    return f"{name:<52} {best * 1e3:9.1f} {median * 1e3:9.1f} {rate}"


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run every measurement, print the table and ratios; returns the best-of ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items N")
    parser.add_argument("--c", type=int, default=10, help="classes C")
    parser.add_argument("--budget", type=int, default=1000, help="items to select b")
    parser.add_argument("--repeats", type=int, default=15,
                        help="rounds; each round times every measurement once")
    parser.add_argument("--data-dir", default=None,
                        help="parent of the server's temporary data directory (its filesystem "
                             "is the one measured); the system temp dir by default")
    parser.add_argument("--in-process", action="store_true",
                        help="run the servers in this process (sharing its GIL with the "
                             "client) instead of in a child process")
    args = parser.parse_args(argv)
    if not 1 <= args.budget <= args.n:
        parser.error("--budget must be between 1 and --n")

    probs = make_probs(args.n, args.c)
    payload = probs.tobytes()
    nbytes = len(payload)
    chunks = chunks_of(payload, CHUNK_BYTES)
    # Inline needs the whole tensor in one message: raise both limits above it.
    limit = max(64 * MIB, 2 * nbytes + MIB)
    data_dir = Path(tempfile.mkdtemp(prefix="assay-bench-", dir=args.data_dir))
    results: dict[str, list[float]] = {}
    load_before = load()
    print(machine_line(data_dir))
    print(f"workload: entropy, N = {args.n}, C = {args.c}, float32 ({nbytes / MB:.1f} MB), "
          f"budget b = {args.budget}, {args.repeats} rounds, chunks of "
          f"{CHUNK_BYTES // MIB} MiB; inline/message limits raised to {limit // MIB} MiB",
          flush=True)

    arrays = {"probs": probs}
    expected = selection.select("entropy", args.budget, arrays, seed=0).indices
    servers = Servers(data_dir, limit, in_process=args.in_process)
    try:
        raw_port, port = servers.start()
        options = [("grpc.max_send_message_length", limit),
                   ("grpc.max_receive_message_length", limit)]
        with grpc.insecure_channel(f"127.0.0.1:{raw_port}", options=options) as channel, \
                grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as assay_channel, \
                Client(f"127.0.0.1:{port}", max_message_bytes=limit,
                       timeout=120.0) as client:
            raw_upload = channel.stream_unary(RAW_UPLOAD)
            raw_echo = channel.unary_unary(RAW_ECHO)
            raw_reply = channel.unary_unary(RAW_REPLY)
            bare_select = assay_channel.unary_unary("/assay.v1.AssayService/Select")
            cpu = CpuMeter(servers.pid)
            reply = {}

            def check(indices: np.ndarray, what: str) -> None:
                if not np.array_equal(indices, expected):
                    raise RuntimeError(f"{what} disagrees with the in-process selection")

            def select_pool(pool_id: str, name: str) -> None:
                started = time.perf_counter()
                answer = client.select("entropy", args.budget, pool=pool_id, seed=0)
                wall = time.perf_counter() - started
                check(answer.indices, "Select by pool")
                results.setdefault(name, []).append(wall)
                # What serving adds around the strategy, free of the strategy's own noise.
                results.setdefault(f"{name}_overhead", []).append(
                    wall - answer.compute_seconds)

            def upload_round(pool_id: str) -> None:
                # Each round uploads a new pool, so every upload writes fresh files and
                # the first Select opens the new segment; a second Select finds it open.
                client.create_pool(pool_id)
                results.setdefault("upload", []).append(
                    cpu.timed("upload", lambda: client.append(pool_id, probs=probs)))
                select_pool(pool_id, "c_select_first")
                select_pool(pool_id, "c_select")
                if not reply:
                    # The size of the Select's answer on the wire, for the bare round trip.
                    request = selection_request(args.budget, pool_id)
                    reply["request"] = len(bare_select(request)).to_bytes(8, "little")
                client.delete_pool(pool_id)

            measurements = {
                "a": lambda: selection.select("entropy", args.budget, arrays, seed=0,
                                                validated=True),
                "a_validated": lambda: selection.select("entropy", args.budget, arrays,
                                                          seed=0),
                "disk": lambda: disk_write(chunks, data_dir),
                "raw_stream": lambda: raw_upload(iter(chunks)),
                "raw_echo": lambda: raw_echo(payload),
                "raw_reply": lambda: raw_reply(reply["request"]),
                "b": lambda: check(client.select("entropy", args.budget, probs=probs,
                                                 seed=0).indices, "inline Select"),
            }
            # One untimed round warms every path (first temp files, SQLite pages, channels).
            if int.from_bytes(raw_upload(iter(chunks)), "little") != nbytes:
                raise RuntimeError("the raw stream lost bytes")
            if raw_echo(payload) != payload:
                raise RuntimeError("the raw echo changed the bytes")
            upload_round("bench-warm-up")
            for fn in measurements.values():
                fn()
            results.clear()
            cpu.totals.clear()
            # Rounds interleave the measurements, so a burst of load from other work
            # on the machine hits all of them alike rather than one.
            for i in range(args.repeats):
                for name, fn in measurements.items():
                    results.setdefault(name, []).append(cpu.timed(name, fn))
                upload_round(f"bench-{i}")
    finally:
        servers.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    best = {k: min(v) for k, v in results.items()}
    print(f"\n{'measurement':<52} {'best ms':>9} {'median ms':>9} {'MB/s':>9}")
    print(_row("(a) in-process select (strategy + top-b)", results["a"]))
    print(_row("(a') in-process select with input validation", results["a_validated"]))
    print(_row("(b) Select, inline over gRPC", results["b"], nbytes))
    print(_row("(c) upload: CreatePool excluded, AppendPoolItems", results["upload"], nbytes))
    print(_row("(c) Select by pool id, first call after upload", results["c_select_first"]))
    print(_row("(c) Select by pool id, warm", results["c_select"]))
    print(_row("    of which outside the strategy, first call", results["c_select_first_overhead"]))
    print(_row("    of which outside the strategy, warm", results["c_select_overhead"]))
    print(_row("raw grpcio: stream-unary bytes, same chunks", results["raw_stream"], nbytes))
    print(_row("raw grpcio: unary echo (bytes both ways)", results["raw_echo"], 2 * nbytes))
    print(_row("raw grpcio: unary call, a Select-sized answer "
               f"({int.from_bytes(reply['request'], 'little')} B)", results["raw_reply"]))
    print(_row("disk: sequential write + one fsync", results["disk"], nbytes))
    cores = os.cpu_count() or 1
    print(f"\nCPU ms per call, mean of {args.repeats}: server process + client process = "
          f"total; the wall time's floor = total / {cores} cores")
    floors = {}
    for name, label in (("raw_stream", "raw stream"), ("upload", "upload")):
        server, client = cpu.per_call(name)
        floors[name] = (server + client) / cores
        print(f"  {label:<11} {server * 1e3:6.1f} + {client * 1e3:5.1f} = "
              f"{(server + client) * 1e3:6.1f}; floor {floors[name] * 1e3:5.1f}; "
              f"median wall / floor {statistics.median(results[name]) / floors[name]:.2f}")
    if cpu.server_pid is None:
        print("  (servers in this process: the client column holds both)")
    print(f"  raw stream CPU / upload CPU = {floors['raw_stream'] / floors['upload']:.2f}: the "
          "upload/raw ratio of an upload that used the cores as well as the raw stream")

    ratios = compute_ratios(best)
    medians = compute_ratios({k: statistics.median(v) for k, v in results.items()})
    print("\nratios        best of each   (medians)")
    for name, value in ratios.items():
        print(f"  {name:<22} {value:6.2f}   ({medians[name]:.2f})")
    upload_ok = ratios["upload/min(raw,disk)"] >= UPLOAD_TARGET
    select_ok = ratios["c_select/a"] <= SELECT_TARGET
    print(f"\ntargets: upload >= {UPLOAD_TARGET:.2f} x min(raw, disk): "
          f"{'met' if upload_ok else 'MISSED'} ({ratios['upload/min(raw,disk)']:.2f}); "
          f"Select by pool <= {SELECT_TARGET:.2f} x in-process: "
          f"{'met' if select_ok else 'MISSED'} ({ratios['c_select/a']:.2f}; serving overhead "
          f"alone {ratios['1+overhead/a']:.2f})")
    print(f"load before {load_before}, after {load()}")
    return ratios


if __name__ == "__main__":
    main()
