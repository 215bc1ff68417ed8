"""The server's log on stderr: plain text lines, or one JSON object per line.

Text lines read ``time LEVEL logger message``. A JSON line has ``time`` (UTC, ISO 8601),
``level``, ``logger`` and ``message``, an ``exception`` when one was logged, and, for
the call log (``assay.server.rpc``), every field of the call as a key of its own
(``method``, ``code``, ``duration_ms``, ``strategy``, ``n``, ``budget``, ``backend``,
``request_id``, ``peer``, ``reason``, ...).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``rpc`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(
                   timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        fields = getattr(record, "rpc", None)
        if isinstance(fields, dict):
            out.update((k, v) for k, v in fields.items() if k not in out)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(level: str, fmt: str) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to stderr in ``fmt``
    (``text`` or ``json``); returns the handler (``remove`` takes it away)."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    handler.previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def remove(handler: logging.Handler) -> None:
    """Undo ``configure``: the handler goes, the root logger's level is restored."""
    root = logging.getLogger()
    root.removeHandler(handler)
    root.setLevel(getattr(handler, "previous_level", root.level))
