"""In-process counters, exposed in Prometheus text format.

Names follow go-grpc-prometheus (``grpc_server_handled_total``,
``grpc_server_handling_seconds``) so existing dashboards work, plus Assay's own
kernel time by strategy and backend and bytes received.
"""

from __future__ import annotations

import threading
from collections import defaultdict

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


class Metrics:
    """Thread-safe counters and histograms with a ``render()`` to Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.handled: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.kernel_seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.bytes_received = 0

    def observe_rpc(self, full_method: str, code: str, seconds: float) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        with self._lock:
            self.handled[(service, method, code)] += 1
            hist = self.latency.setdefault((service, method), [0.0] * (len(_BUCKETS) + 2))
            for i, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += 1
            hist[-1] += seconds

    def observe_kernel(self, strategy: str, backend: str, seconds: float) -> None:
        with self._lock:
            self.kernel_seconds[(strategy, backend)] += seconds

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_received += n

    def render(self) -> str:
        lines = ["# TYPE grpc_server_handled_total counter"]
        with self._lock:
            for (svc, m, code), n in sorted(self.handled.items()):
                lines.append(f'grpc_server_handled_total{{grpc_service="{svc}",'
                             f'grpc_method="{m}",grpc_code="{code}"}} {n}')
            lines.append("# TYPE grpc_server_handling_seconds histogram")
            for (svc, m), hist in sorted(self.latency.items()):
                labels = f'grpc_service="{svc}",grpc_method="{m}"'
                for bound, count in zip(_BUCKETS, hist, strict=False):
                    lines.append(f'grpc_server_handling_seconds_bucket{{{labels},le="{bound}"}} '
                                 f"{int(count)}")
                lines.append(f'grpc_server_handling_seconds_bucket{{{labels},le="+Inf"}} '
                             f"{int(hist[-2])}")
                lines.append(f"grpc_server_handling_seconds_count{{{labels}}} {int(hist[-2])}")
                lines.append(f"grpc_server_handling_seconds_sum{{{labels}}} {hist[-1]}")
            lines.append("# TYPE assay_kernel_seconds_total counter")
            for (strategy, backend), s in sorted(self.kernel_seconds.items()):
                lines.append(f'assay_kernel_seconds_total{{strategy="{strategy}",'
                             f'backend="{backend}"}} {s}')
            lines.append("# TYPE assay_received_bytes_total counter")
            lines.append(f"assay_received_bytes_total {self.bytes_received}")
        return "\n".join(lines) + "\n"
