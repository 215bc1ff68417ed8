"""The order of a streamed upload's chunks: one cursor per declared array.

Streams carry each array as ordered chunks (``array_index``, ``offset``, ``data``).
The store writing them and the digest checking a retried stream must refuse the
same mistakes with the same words, so both advance a ``ChunkCursor``.
"""

from __future__ import annotations

from assay.vocab.errors import InvalidInput


class ChunkCursor:
    """Bytes received per array, checked against the sizes their shapes declare."""

    def __init__(self, names: list[str], sizes: list[int]):
        self.names = names
        self.sizes = sizes
        self.received = [0] * len(sizes)

    def advance(self, index: int, offset: int, data: bytes) -> None:
        """Take one chunk; it must continue exactly where the array's last chunk ended."""
        if not 0 <= index < len(self.sizes):
            raise InvalidInput(f"chunk.array_index {index} does not name a declared array "
                               f"(0..{len(self.sizes) - 1})", field="chunk.array_index")
        if offset != self.received[index]:
            raise InvalidInput(
                f"chunk for array {self.names[index]!r} starts at byte {offset} but "
                f"{self.received[index]} bytes were received: chunks must arrive in order",
                field="chunk.offset", reason="OUT_OF_ORDER")
        if offset + len(data) > self.sizes[index]:
            raise InvalidInput(
                f"array {self.names[index]!r} gets more than the {self.sizes[index]} "
                "bytes its shape declares", field="chunk.data", reason="OVERRUN")
        self.received[index] += len(data)

    def check_complete(self) -> None:
        """Raise ``InvalidInput`` if an array got fewer bytes than its shape declares."""
        for name, got, want in zip(self.names, self.received, self.sizes, strict=True):
            if got != want:
                raise InvalidInput(
                    f"the stream ended after {got} of {want} bytes of array {name!r}: "
                    "the upload was truncated and nothing was stored",
                    field="chunk.data", reason="TRUNCATED")
