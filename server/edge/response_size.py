"""Select responses that cannot be sent are refused, never computed or stored.

gRPC refuses to send a message over ``max_message_bytes`` only after the handler has
returned: the selection was computed, its response stored under the request id, and
every retry of that id replays the same unsendable answer. So the budget is checked
against a lower bound on the response before any work, and the encoded response
against the limit before it is stored.

Wire sizes (protobuf): indices are a packed ``repeated int64`` (one varint each, 1
byte below 2^7, 2 below 2^14, ...), scores a packed ``repeated double`` (8 bytes
each). ``budget`` distinct indices are at least the varints of 0 .. budget - 1.
"""

from __future__ import annotations

from assay.vocab.errors import ResourceExhausted

#: Batch strategies that answer indices without scores (every score strategy has scores).
SCORELESS = frozenset({"random"})
#: Bytes of a packed double.
_DOUBLE = 8


def varint_bytes_below(count: int) -> int:
    """Total varint length of the integers 0 .. count - 1."""
    total, low, width = 0, 0, 1
    while low < count:
        high = min(count, 1 << (7 * width))
        total += (high - low) * width
        low, width = high, width + 1
    return total


def min_response_bytes(budget: int, with_scores: bool) -> int:
    """A lower bound on the encoded SelectResponse of ``budget`` picks."""
    return varint_bytes_below(budget) + (_DOUBLE * budget if with_scores else 0)


def _advice(limit: int) -> str:
    return (f"over the server's message limit of {limit} bytes (max_message_bytes); select "
            "in smaller batches (pass the earlier picks as exclude_indices) or raise "
            "--max-message-bytes on the server and the client's receive limit")


def check_budget(strategy_name: str, kind: str, budget: int, limit: int) -> None:
    """Refuse, before computing, a budget whose response cannot fit ``limit`` bytes."""
    with_scores = kind == "score" or strategy_name not in SCORELESS
    need = min_response_bytes(max(0, int(budget)), with_scores)
    if need > limit:
        raise ResourceExhausted(
            f"budget {budget} needs a response of at least {need} bytes, {_advice(limit)}",
            field="budget", reason="RESPONSE_TOO_LARGE")


def check_encoded(size: int, budget: int, limit: int) -> None:
    """Refuse, before storing, an encoded response over ``limit`` bytes."""
    if size > limit:
        raise ResourceExhausted(
            f"the response of budget {budget} encodes to {size} bytes, {_advice(limit)}; "
            "nothing was stored", field="budget", reason="RESPONSE_TOO_LARGE")
