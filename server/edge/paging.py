"""Page tokens for the List methods (AIP-158), shared by pools and models.

A token is the last id of the previous page, URL-safe base64 encoded: opaque to
clients, stable across restarts, and validated on the way back in.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import TypeVar

from assay.vocab.errors import InvalidInput

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_start(page_size: int, page_token: str, check_id: Callable[[str], object],
               method: str) -> tuple[str, int]:
    """The id to list after and the page size, or ``InvalidInput`` for a bad request."""
    size = page_size or DEFAULT_PAGE_SIZE
    if not 0 < size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"page_size must be between 1 and {MAX_PAGE_SIZE}",
                           field="page_size")
    try:
        after = base64.b64decode(page_token, altchars=b"-_", validate=True).decode()
        if after:
            check_id(after)
    except (ValueError, UnicodeDecodeError, InvalidInput):
        raise InvalidInput(f"page_token is not a token from {method}",
                           field="page_token") from None
    return after, size


def page_end(items: Sequence[T], size: int, id_of: Callable[[T], str]) -> tuple[Sequence[T], str]:
    """Cut a fetch of ``size + 1`` items to a page and the token of the next one."""
    if len(items) <= size:
        return items, ""
    items = items[:size]
    return items, base64.urlsafe_b64encode(id_of(items[-1]).encode()).decode()
