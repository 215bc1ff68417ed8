"""A serving process keeps its message buffers' pages (``allocator``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from assay.server.wiring import allocator

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.fixture
def calls(monkeypatch):
    """``mallopt`` replaced by a recorder that accepts every setting."""
    made = []
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda param, value: made.append(
        (param, value)) or 1)
    for name in allocator.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return made


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_tune_sets_both_thresholds(calls):
    assert "8 MiB" in allocator.tune()
    assert calls == [(-3, allocator.MMAP_THRESHOLD), (-1, allocator.TRIM_THRESHOLD)]


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_the_operators_environment_wins(calls, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert "MALLOC_TRIM_THRESHOLD_" in allocator.tune()
    assert calls == []


def test_other_c_libraries_are_left_alone(calls, monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert "not glibc" in allocator.tune()
    assert calls == []


def test_a_refused_setting_is_reported(monkeypatch):
    for name in allocator.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda param, value: 0)
    assert "refused" in allocator.tune()


_CYCLES = """
import resource
from assay.server.wiring import allocator
print(allocator.tune())

def cycle():
    held = [b"x" * (4 << 20) for _ in range(3)]  # three 4 MiB chunks in flight
    del held

cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_chunks_are_reused_without_page_faults():
    """Three 4 MiB buffers allocated and freed over and over, as upload chunks are: once
    tuned, their pages stay with the process (with glibc's defaults, about two of the
    three chunks were faulted in again every time). In a child process, since the
    thresholds are the whole process's."""
    out = subprocess.run([sys.executable, "-c", _CYCLES], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if k not in allocator.ENVIRONMENT})
    said, faults = out.stdout.strip().splitlines()
    assert "8 MiB" in said
    # A chunk is 1,024 pages of 4 KiB; a few faults a cycle are the interpreter's own.
    assert float(faults) < 64, f"{faults} page faults per cycle of three 4 MiB chunks"
