"""Client-streamed uploads (pool appends, model registration): header first, then chunks."""

from __future__ import annotations

from collections.abc import Iterator

from assay.server.errors import InvalidInput


def stream_header(request_iterator: Iterator, stream: str):
    """The header of a ``header``/``chunk`` oneof stream, or ``InvalidInput``.

    ``stream`` names the stream in messages, with its article ("an append stream").
    """
    try:
        first = next(request_iterator)
    except StopIteration:
        raise InvalidInput(f"the {stream.split(' ', 1)[1]} is empty: send a header message "
                           "first", field="header") from None
    if first.WhichOneof("part") != "header":
        raise InvalidInput(f"the first message of {stream} must be the header",
                           field="header", reason="OUT_OF_ORDER")
    return first.header
