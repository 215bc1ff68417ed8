"""The demo runs a real loop through the gRPC client, reports progress and writes its plot."""

from __future__ import annotations

import re

import pytest

from assay.server.wiring.demo import DEFAULT_STRATEGIES, labels_to_reach, run_demo


def _run(server, capsys, **kw):
    rc = run_demo(target=f"127.0.0.1:{server.port}", seeds=1, batch=10, pool_size=300, **kw)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_every_default_family_runs_with_progress_ceiling_and_plot(server, capsys, tmp_path):
    assert set(DEFAULT_STRATEGIES) == {"random", "margin", "batchbald", "badge"}
    plot = tmp_path / "curve.png"
    rc, out, err = _run(server, capsys, rounds=2, plot=str(plot))
    assert rc == 0, err
    progress = re.findall(r"^\[\s*(\d+)/(\d+)\] (\w+) seed 0 round (\d)/2: (\d+) labels, "
                          r"accuracy ([\d.]+) .*~\d+ s left\)$", out, re.M)
    assert len(progress) == 12 and {int(t) for _, t, *_ in progress} == {12}
    assert [int(d) for d, *_ in progress] == list(range(1, 13))
    assert {p[2] for p in progress} == set(DEFAULT_STRATEGIES)
    assert "registered as ONNX" in out and "MC dropout" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("20", "30", "40")
            and not line.startswith("[")]
    assert [int(r[0]) for r in rows] == [20, 30, 40]
    accuracies = [float(x) for r in rows for x in r[1:]]
    assert len(accuracies) == 12 and all(0.0 < a <= 1.0 for a in accuracies)
    ceiling = float(re.search(r"^full-data accuracy: ([\d.]+)$", out, re.M).group(1))
    assert 0.8 < ceiling <= 1.0
    assert "labels to reach 0.90 mean accuracy (labels saved vs random):" in out
    for name in DEFAULT_STRATEGIES:
        assert re.search(rf"^  {name} +(\d+|not reached)", out, re.M), name
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embedding_and_committee_strategies_are_fed(server, capsys):
    """coreset needs the hidden layer (and the labeled items' embeddings, which the pool
    derives); bald with ``committee`` gets its samples from bootstrap MLPs."""
    rc, out, err = _run(server, capsys, rounds=1, plot=None, committee=True,
                        strategies=["coreset", "bald", "kmeans"])
    assert rc == 0, err
    assert "bootstrap committee" in out
    for name in ("coreset", "bald", "kmeans"):
        assert re.search(rf"\] {name} seed 0 round 1/1: 30 labels", out), name


@pytest.mark.parametrize("strategy,needle", [
    ("loss_prediction", "the demo cannot feed strategy 'loss_prediction': it needs loss"),
    ("no_such_strategy", "unknown strategy 'no_such_strategy'; registered: badge, bald"),
])
def test_a_strategy_the_demo_cannot_feed_fails_with_a_message(server, capsys, strategy,
                                                              needle):
    rc, out, err = _run(server, capsys, rounds=1, plot=None, strategies=["random", strategy])
    assert rc == 2
    assert needle in err and "Traceback" not in err + out
    assert "round" not in out  # refused before any work


def test_labels_to_reach_is_the_first_count_at_the_target():
    assert labels_to_reach([20, 30, 40], [0.7, 0.91, 0.95], 0.9) == 30
    assert labels_to_reach([20, 30, 40], [0.7, 0.8, 0.85], 0.9) is None
