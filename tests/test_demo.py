"""The demo runs a real loop through the gRPC client and writes its plot."""

from __future__ import annotations

from assay.server.wiring.demo import run_demo


def test_demo_loop_runs_end_to_end(tmp_path, capsys):
    plot = tmp_path / "curve.png"
    assert run_demo(rounds=2, batch=10, seeds=1, strategies=["random", "margin", "bald"],
                    plot=str(plot)) == 0
    out = capsys.readouterr().out
    assert "mean test accuracy by number of labels" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("20", "30", "40")]
    assert [int(r[0]) for r in rows] == [20, 30, 40]
    accuracies = [float(x) for r in rows for x in r[1:]]
    assert all(0.0 < a <= 1.0 for a in accuracies)
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
