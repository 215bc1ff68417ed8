"""Uploads yield to Selects: a stream asks for its next message once no Select has run
for a moment, or after a bounded wait (``Foreground``, ``BoundedStream(pace=...)``)."""

from __future__ import annotations

import threading
import time

from assay.server.edge.lanes import Foreground
from assay.server.edge.streams import BoundedStream


def _recorded(pulled: list[int], n: int = 3, size: int = 1 << 20):
    for i in range(n):
        pulled.append(i)
        yield bytes([i]) * size


def test_an_upload_reads_its_next_message_only_once_no_select_runs():
    foreground = Foreground()
    entered, release = threading.Event(), threading.Event()

    def select():
        with foreground.running():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=select)
    worker.start()
    assert entered.wait(10)
    pulled: list[int] = []
    stream = BoundedStream(_recorded(pulled, 6), idle_timeout=30,
                           pace=lambda: foreground.wait_idle(30), pace_bytes=2 << 20)
    first = next(stream)
    time.sleep(0.2)
    assert pulled == [0, 1]  # 2 MiB read, then the reader waits while the Select runs
    release.set()
    worker.join(10)
    assert [first[0], *(m[0] for m in stream)] == [0, 1, 2, 3, 4, 5]
    stream.close()


def test_small_messages_are_paced_by_the_bytes_they_carry():
    pauses = []
    pulled: list[int] = []
    stream = BoundedStream(_recorded(pulled, 64, size=64 << 10), idle_timeout=30,
                           pace=lambda: pauses.append(len(pulled)), pace_bytes=1 << 20)
    assert len(list(stream)) == 64
    assert pauses == [16, 32, 48, 64]  # one pause per MiB read, not one per message
    stream.close()


def test_an_upload_waits_for_a_select_only_so_long():
    foreground = Foreground()
    with foreground.running():  # a Select that outlasts the whole upload
        pulled: list[int] = []
        stream = BoundedStream(_recorded(pulled), idle_timeout=30,
                               pace=lambda: foreground.wait_idle(0.01), pace_bytes=1)
        assert [m[0] for m in stream] == [0, 1, 2]
        stream.close()


def test_the_count_falls_back_to_idle_when_a_select_fails():
    foreground = Foreground()
    try:
        with foreground.running():
            raise RuntimeError("select failed")
    except RuntimeError:
        pass
    done = threading.Event()
    threading.Thread(target=lambda: (foreground.wait_idle(30), done.set())).start()
    assert done.wait(5)


def test_an_upload_waits_for_a_pause_in_the_selects_not_a_gap_between_two():
    """Between two Selects the lane is empty for moments; an upload taking each of them
    would run beside the Selects all the same. It waits for ``quiet`` seconds without
    one, or the whole of its wait."""
    foreground = Foreground(quiet=1.0)
    stop = threading.Event()

    def traffic():  # a Select ends about every millisecond
        while not stop.is_set():
            with foreground.running():
                pass
            time.sleep(0.001)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.05)
        began = time.monotonic()
        foreground.wait_idle(0.3)
        assert time.monotonic() - began >= 0.29  # the whole wait, not the first gap
    finally:
        stop.set()
        worker.join(10)
    began = time.monotonic()
    foreground.wait_idle(30)  # returns once a second has passed without a Select
    assert 0.5 <= time.monotonic() - began < 20


def test_without_selects_an_upload_never_waits():
    foreground = Foreground()
    began = time.monotonic()
    for _ in range(100):
        foreground.wait_idle(30)
    assert time.monotonic() - began < 5
