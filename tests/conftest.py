"""Shared fixtures: a real server on a loopback port and a client connected to it.

Service tests go through a real in-process gRPC server so interceptors, limits
and codecs all run (mocked contexts would skip exactly the code that breaks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import seeding

from assay.client import Client
from assay.server.wiring.app import start
from assay.server.wiring.config import ServerConfig


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Start the test's random seed before its fixtures draw anything (tests/seeding.py)."""
    item.user_properties.append(("seed", seeding.begin(item.nodeid)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report says which seed its random data came from."""
    outcome = yield
    report = outcome.get_result()
    seeds = [value for key, value in item.user_properties if key == "seed"]
    if report.failed and seeds:
        report.sections.append(("random data", seeding.describe(seeds[0])))


@pytest.fixture
def rng():
    """The test's seeded generator (tests/seeding.py)."""
    return seeding.rng()


@pytest.fixture
def server_factory(tmp_path):
    """Start servers on 127.0.0.1 with a free port; all are stopped after the test."""
    running = []

    def make(**overrides):
        # No kernel warm-up (tests/test_coldstart.py covers it): on a cold kernel cache it
        # compiles every kernel (minutes on 2 cores) inside one test's time limit; here a
        # kernel compiles on first use and loads from the per-user cache after that.
        config = ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "data"),
                              grace_seconds=0.5, workers=8, warmup=False)
        for key, value in overrides.items():
            setattr(config, key, value)
        srv = start(config)
        running.append(srv)
        return srv

    yield make
    for srv in running:
        srv.stop(0)


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=30) as c:
        yield c


@pytest.fixture
def held_slot(monkeypatch):
    """Registers a strategy ``hold`` that takes a select slot until ``gate`` is set;
    ``entered`` is set once it runs. Yields ``(gate, entered)``; the gate opens at the end."""
    import threading

    from assay.server.strategies import registry
    from assay.server.strategies.registry import Selection, Strategy

    gate, entered = threading.Event(), threading.Event()

    def hold(inputs, budget, params, ctx):
        entered.set()
        gate.wait(120)  # the test sets it; 120 s only bounds a broken run
        return Selection(indices=ctx.candidates[:budget])

    monkeypatch.setitem(registry._REGISTRY, "hold",
                        Strategy("hold", "batch", hold, ("probs",), "blocking test strategy"))
    yield gate, entered
    gate.set()
