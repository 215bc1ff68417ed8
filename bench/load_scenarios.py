"""Load scenarios of the sidecar deployment, driven through the Go load generator.

Starts ``assay serve`` and a raw grpcio echo server (``clients/load/echo_server.py``) on
loopback ports, runs ``clients/go/bin/assay-load`` (build it with ``bash clients/go/build.sh``)
and writes ``bench/load_results.json``, the plot ``docs/load_latency.png`` and a Markdown
summary on stdout:

a. sidecar: inline Selects (N = 10k, C = 10, entropy, b = 100), closed loop at rising
   concurrency, Select and echo of the same payload; the knee and its p99; then, at the best
   step's concurrency, --repeats alternating Select / echo steps, each Select step's ratio
   to the echo step next to it (best and median: this machine's speed drifts by a quarter
   within minutes, so a ratio is only read between neighbours); then open loop at fractions
   of the saturation rate for the latency-vs-load plot;
b. mixed: open loop at half the saturation rate, --repeats alternating steps without and
   with 100 MB pool uploads streaming in the background; each pair's p99 ratio;
c. overload: open loop at 4x the saturation rate (the server must shed with
   RESOURCE_EXHAUSTED/UNAVAILABLE quickly), then half the rate (it must recover);
d. soak: open loop for --soak-seconds at 70% of the saturation measured right before it
   (median of three closed-loop steps at the best step's concurrency), with the echo at
   that concurrency before and after (the machine's drift); server RSS and open file
   descriptors at start and end, errors;
e. stalls: open loop at the soak's rate for 30 s while the server is stopped (SIGSTOP) for
   0.4 s every 5 s, as a host's hiccup or a page-in would: the Selects that arrive meanwhile
   must wait in the queue, not be refused.

Each scenario records the load average before and after it.
Every run is bounded in time and requests and only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "clients" / "go" / "bin" / "assay-load"
#: How long the stalls scenario stops the server each time.
STALL_SECONDS = 0.4


def start(cmd: list[str], pattern: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(pattern + r".*:(\d+)\s*$", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
    return proc, int(m.group(1))


def load(port: int, *args: str, timeout: float = 900) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([str(LOADGEN), "-target", f"127.0.0.1:{port}", "-json", out.name,
                        *args], check=True, timeout=timeout)
        return json.loads(Path(out.name).read_text())


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    return {"rss_mb": round(rss, 1), "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(re.search(r"Threads:\s+(\d+)", status).group(1))}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    import grpc
    go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "grpcio": grpc.__version__, "go": go, "kernel": platform.release()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6, help="measured seconds per step")
    p.add_argument("--soak-seconds", type=float, default=600)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--max-concurrent-selects", type=int, default=4)
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--repeats", type=int, default=5,
                   help="alternating pairs of the saturation ratio and of the mixed scenario")
    p.add_argument("--out", default=str(ROOT / "bench" / "load_results.json"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "load_latency.png"))
    args = p.parse_args()
    if not LOADGEN.exists():
        sys.exit(f"{LOADGEN} is missing: run bash clients/go/build.sh")
    dur, warm = f"{args.seconds}s", "2s"
    results: dict = {"machine": machine(), "config": vars(args)}
    data = tempfile.mkdtemp(prefix="assay-load-")
    server, port = start([sys.executable, "-m", "assay.server", "serve", "--address",
                          "127.0.0.1:0", "--data-dir", data, "--workers", str(args.workers),
                          "--max-concurrent-selects", str(args.max_concurrent_selects),
                          "--log-level", "WARNING"], "assay listening")
    echo, eport = start([sys.executable, str(ROOT / "clients" / "load" / "echo_server.py"),
                         "--address", "127.0.0.1:0", "--workers", str(args.workers),
                         "--response-bytes", "1700"], "echo listening")
    try:
        # (a) closed loop at rising concurrency, Select and echo alternating.
        sweep = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            sel = load(port, "-mode", "closed", "-concurrency", str(c), "-duration", dur,
                       "-warmup", warm)
            ech = load(eport, "-method", "echo", "-mode", "closed", "-concurrency", str(c),
                       "-duration", dur, "-warmup", warm)
            sweep.append({"concurrency": c, "select": sel, "echo": ech})
        results["closed_sweep"] = sweep
        best = max(sweep, key=lambda s: s["select"]["throughput_rps"])
        sat = best["select"]["throughput_rps"]
        knee = next(s for s in sweep if s["select"]["throughput_rps"] >= 0.95 * sat)
        conc = str(best["concurrency"])
        closed = ["-mode", "closed", "-concurrency", conc, "-duration", dur, "-warmup", warm]
        pairs = []
        for _ in range(args.repeats):
            loads = os.getloadavg()[0]
            sel = load(port, *closed)
            ech = load(eport, "-method", "echo", *closed)
            pairs.append({"select_rps": sel["throughput_rps"], "echo_rps": ech["throughput_rps"],
                          "select_p99_ms": sel["latency_ms"]["p99"], "errors": sel["errors"],
                          "ratio": sel["throughput_rps"] / ech["throughput_rps"],
                          "load": [loads, os.getloadavg()[0]]})
        results["saturation"] = {
            "concurrency": best["concurrency"], "pairs": pairs,
            **spread("ratio", [q["ratio"] for q in pairs]),
            **spread("select_rps", [q["select_rps"] for q in pairs]),
            "knee_concurrency": knee["concurrency"],
            "knee_rps": knee["select"]["throughput_rps"],
            "knee_p99_ms": knee["select"]["latency_ms"]["p99"]}
        sat = results["saturation"]["select_rps_median"]
        # Open loop at fractions of saturation: latency vs offered load.
        open_sweep = []
        for frac in (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.2):
            r = load(port, "-mode", "open", "-rate", f"{frac * sat:.1f}", "-concurrency", "256",
                     "-duration", dur, "-warmup", warm)
            r["fraction"] = frac
            open_sweep.append(r)
        results["open_sweep"] = open_sweep
        # (b) mixed: Selects at half saturation, without and with 100 MB uploads, alternating.
        half = ["-mode", "open", "-rate", f"{0.5 * sat:.1f}", "-concurrency", "256",
                "-duration", f"{2 * args.seconds}s", "-warmup", warm]
        mixed = []
        for _ in range(args.repeats):
            loads = os.getloadavg()[0]
            pair = {"without_uploads": load(port, *half),
                    "with_uploads": load(port, *half, "-upload-mb", "100")}
            pair["p99_ratio"] = (pair["with_uploads"]["latency_ms"]["p99"]
                                 / pair["without_uploads"]["latency_ms"]["p99"])
            pair["load"] = [loads, os.getloadavg()[0]]
            mixed.append(pair)
        results["mixed"] = {"pairs": mixed, **spread("p99_ratio",
                                                     [q["p99_ratio"] for q in mixed], low=True)}
        # (c) overload at 4x saturation, then recovery at half.
        loads = os.getloadavg()[0]
        results["overload"] = load(port, "-mode", "open", "-rate", f"{4 * sat:.1f}",
                                   "-concurrency", "1024", "-duration", f"{2 * args.seconds}s",
                                   "-warmup", "1s", "-timeout", "5s")
        results["recovery"] = load(port, *half, "-warmup", "0s")  # the last -warmup wins
        results["overload"]["load"] = [loads, os.getloadavg()[0]]
        # (d) soak at 70% of the saturation the server sustains now: the median of three
        # closed-loop steps at the best step's concurrency, measured right before the soak
        # (the sweep's best step is a peak of a few seconds, and this machine's speed drifts
        # by a quarter within minutes); the echo at that concurrency before and after shows
        # the drift. Server RSS/fds sampled every 10 s.
        loads = os.getloadavg()[0]
        steps = [load(port, *closed)["throughput_rps"] for _ in range(3)]
        sustained = sorted(steps)[1]
        echo_before = load(eport, "-method", "echo", *closed)["throughput_rps"]
        soak = subprocess.Popen([str(LOADGEN), "-target", f"127.0.0.1:{port}", "-mode", "open",
                                 "-rate", f"{0.7 * sustained:.1f}", "-concurrency", "256",
                                 "-duration", f"{args.soak_seconds}s", "-warmup", "5s",
                                 "-max-requests", str(int(sustained * (args.soak_seconds + 10))),
                                 "-json", args.out + ".soak"])
        time.sleep(5)
        samples = [{"t": 0, **proc_stats(server.pid)}]
        t0 = time.monotonic()
        while soak.poll() is None:
            time.sleep(min(10, max(0.5, args.soak_seconds - (time.monotonic() - t0))))
            samples.append({"t": round(time.monotonic() - t0, 1), **proc_stats(server.pid)})
        results["soak"] = {"result": json.loads(Path(args.out + ".soak").read_text()),
                           "samples": samples, "sustained_steps_rps": steps,
                           "sustained_rps": sustained, "echo_before_rps": echo_before,
                           "echo_after_rps": load(eport, "-method", "echo",
                                                  *closed)["throughput_rps"],
                           "load": [loads, os.getloadavg()[0]]}
        os.unlink(args.out + ".soak")
        # (e) the same rate while the server stalls for 0.4 s every 5 s.
        loads = os.getloadavg()[0]
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            stalled = subprocess.Popen([
                str(LOADGEN), "-target", f"127.0.0.1:{port}", "-mode", "open", "-rate",
                f"{0.7 * sustained:.1f}", "-concurrency", "1024", "-duration", "30s",
                "-warmup", "2s", "-json", out.name])
            stalls = 0
            time.sleep(4)
            while stalled.poll() is None:
                os.kill(server.pid, signal.SIGSTOP)
                time.sleep(STALL_SECONDS)
                os.kill(server.pid, signal.SIGCONT)
                stalls += 1
                time.sleep(5)
            results["stalls"] = {**json.loads(Path(out.name).read_text()), "stalls": stalls,
                                 "stall_seconds": STALL_SECONDS,
                                 "load": [loads, os.getloadavg()[0]]}
    finally:
        for proc in (server, echo):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.plot)
    print(markdown(results))
    return 0


def spread(name: str, values: list[float], *, low: bool = False) -> dict:
    """``name``'s best value (the highest, or with ``low`` the lowest), median and worst."""
    best, worst = (min, max) if low else (max, min)
    return {f"{name}_best": best(values), f"{name}_median": statistics.median(values),
            f"{name}_worst": worst(values)}


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = results["open_sweep"]
    offered = [r["offered_rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for q, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p99.9", "v--")):
        ax.plot(offered, [r["latency_ms"][q] for r in rows], style, label=q)
    sat = results["saturation"]["select_rps_median"]
    ax.axvline(sat, color="grey", lw=0.8, ls=":")
    ax.text(sat, ax.get_ylim()[1] * 0.9, " closed-loop saturation (median)", color="grey",
            fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("offered load (Select/s, open loop)")
    ax.set_ylabel("latency (ms, successful calls)")
    m = results["machine"]
    ax.set_title(f"Inline Select, N=10k C=10 entropy b=100 — {m['cores']} cores", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _lat(r: dict) -> str:
    lat = r["latency_ms"]
    return f"{lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} / {lat['p99.9']:.1f} / " \
           f"{lat['max']:.1f}"


def _load(r: dict) -> str:
    return f"{r['load'][0]:.1f} / {r['load'][1]:.1f}"


def _errors(r: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"


def markdown(res: dict) -> str:
    m, s = res["machine"], res["saturation"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores (shared with the load generator), "
           f"Python {m['python']}, grpcio {m['grpcio']}, {m['go']}, Linux {m['kernel']}.", "",
           "**(a) Sidecar, closed loop** (Select: N = 10k, C = 10 float32 inline, entropy, "
           "b = 100, 400 KB per request; echo: the same request bytes to a raw grpcio "
           "handler answering 1.7 KB)", "",
           "| concurrency | Select/s | Select p50 / p90 / p99 / p99.9 / max ms | errors | "
           "echo/s | echo p99 ms |", "|---|---|---|---|---|---|"]
    for row in res["closed_sweep"]:
        sel, ech = row["select"], row["echo"]
        out.append(f"| {row['concurrency']} | {sel['throughput_rps']:.0f} | {_lat(sel)} | "
                   f"{_errors(sel)} | {ech['throughput_rps']:.0f} | "
                   f"{ech['latency_ms']['p99']:.1f} |")
    out += ["", f"Knee at concurrency {s['knee_concurrency']}: {s['knee_rps']:.0f} Select/s, "
            f"p99 {s['knee_p99_ms']:.1f} ms. At concurrency {s['concurrency']}, "
            f"{len(s['pairs'])} alternating Select / echo steps:", "",
            "| pair | load before / after | Select/s | echo/s | ratio | Select p99 ms | errors |",
            "|---|---|---|---|---|---|---|"]
    for i, q in enumerate(s["pairs"], 1):
        out.append(f"| {i} | {_load(q)} | {q['select_rps']:.0f} | {q['echo_rps']:.0f} | "
                   f"{q['ratio']:.2f} | {q['select_p99_ms']:.1f} | {_errors(q)} |")
    out += ["", f"Select ÷ echo: best {s['ratio_best']:.2f}, median {s['ratio_median']:.2f}, "
            f"worst {s['ratio_worst']:.2f}; Select/s best {s['select_rps_best']:.0f}, median "
            f"{s['select_rps_median']:.0f} (the rate the scenarios below are fractions of).", "",
            "**Open loop** (latency from the scheduled send time, so queueing is counted):", "",
            "| offered /s | achieved /s | p50 / p90 / p99 / p99.9 / max ms | errors |",
            "|---|---|---|---|"]
    for r in res["open_sweep"]:
        out.append(f"| {r['offered_rate']:.0f} | {r['throughput_rps']:.0f} | {_lat(r)} | "
                   f"{_errors(r)} |")
    mx = res["mixed"]
    out += ["", f"**(b) Mixed**: Selects at {mx['pairs'][0]['without_uploads']['offered_rate']:.0f}"
            "/s without, then with 100 MB pool uploads streaming, alternating:", "",
            "| pair | load before / after | p99 without ms | p99 with ms | ratio | uploads | "
            "upload MB/s | errors without / with |", "|---|---|---|---|---|---|---|---|"]
    for i, q in enumerate(mx["pairs"], 1):
        wo, w = q["without_uploads"], q["with_uploads"]
        out.append(f"| {i} | {_load(q)} | {wo['latency_ms']['p99']:.1f} | "
                   f"{w['latency_ms']['p99']:.1f} | {q['p99_ratio']:.2f} | "
                   f"{w['uploads_completed']} | {w['upload_mb_per_s']:.0f} | "
                   f"{_errors(wo)} / {_errors(w)} |")
    out += ["", f"p99 with ÷ without uploads: best {mx['p99_ratio_best']:.2f}, median "
            f"{mx['p99_ratio_median']:.2f}, worst {mx['p99_ratio_worst']:.2f}.", ""]
    o, rc = res["overload"], res["recovery"]
    shed = sum(o["errors"].get(k, 0) for k in ("ResourceExhausted", "Unavailable"))
    out += [f"**(c) Overload** at {o['offered_rate']:.0f}/s (4x): {o['throughput_rps']:.0f} "
            f"Select/s served (p99 {o['latency_ms']['p99']:.1f} ms), {shed} shed "
            f"({_errors(o)}), rejections answered in p50 {o['error_latency_ms']['p50']:.1f} / "
            f"p99 {o['error_latency_ms']['p99']:.1f} ms; {o['not_sent']} not sent (client "
            f"in-flight cap). Recovery at {rc['offered_rate']:.0f}/s right after: "
            f"{rc['throughput_rps']:.0f}/s, p99 {rc['latency_ms']['p99']:.1f} ms, errors: "
            f"{_errors(rc)}. Load {_load(o)}.", ""]
    sk = res["soak"]
    a, z = sk["samples"][0], sk["samples"][-1]
    r = sk["result"]
    steps = ", ".join(f"{x:.0f}" for x in sk["sustained_steps_rps"])
    out += [f"**(d) Soak** {r['duration_s']:.0f} s at {r['offered_rate']:.0f}/s (70% of "
            f"{sk['sustained_rps']:.0f}/s, the median of closed-loop steps of {steps}/s just "
            f"before; echo {sk['echo_before_rps']:.0f}/s before, {sk['echo_after_rps']:.0f}/s "
            "after): "
            f"{r['ok']} Selects, errors: {_errors(r)}, p99 {r['latency_ms']['p99']:.1f} ms; "
            f"server RSS {a['rss_mb']:.0f} -> {z['rss_mb']:.0f} MB, open fds {a['open_fds']} -> "
            f"{z['open_fds']}, threads {a['threads']} -> {z['threads']}; load {_load(sk)}.", ""]
    st = res["stalls"]
    out += [f"**(e) Stalls**: {st['offered_rate']:.0f} Select/s for {st['duration_s']:.0f} s, "
            f"the server stopped {st['stalls']} times for {st['stall_seconds']} s: {st['ok']} "
            f"Selects, errors: {_errors(st)}, p50 {st['latency_ms']['p50']:.1f} ms, p99 "
            f"{st['latency_ms']['p99']:.1f} ms, max {st['latency_ms']['max']:.1f} ms; load "
            f"{_load(st)}."]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
