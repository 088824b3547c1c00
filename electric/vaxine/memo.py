"""Terms a producer encoded itself, looked up by their encoded bytes (see :class:`EncodingMemo`).

Owned by whoever builds it: an embedded Vaxine given one (``EmbeddedVaxine(memo=...)``)
registers its commits in it, and a :class:`~electric.vaxine.stream.WalStream` given the same
one (``WalStream(..., memo=...)``) looks frames up in it. Only worth it when both run in one
process (benchmarks, tests); Electric itself never shares one, so nothing is registered.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class EncodingMemo:
    """Terms this process encoded itself, looked up by their encoded bytes.

    When an embedded Vaxine and its stream readers share a process, every committed
    transaction is encoded once by the store and decoded again by each WAL stream client,
    and decoding is by far the costlier half (pure Python, ~275 nodes per row: 8 writers
    and 2 in-process readers used ~25% less CPU per transaction with it). A producer
    that still holds the Python values registers ``body → build`` where ``build()`` returns
    exactly ``decode_at(body, 0)[0]`` (tests check this for every kind of term it
    registers); a consumer holding bytes received from the wire asks :meth:`recall`
    first. Keys are the exact bytes, so a hit can only return what decoding those bytes
    would: the wire format is untouched, and bytes from anywhere else simply miss.

    Bounded by the total size of the registered encodings (oldest dropped first). Live
    readers fetch a commit within milliseconds, so the budget is small on purpose: every
    entry keeps its effects alive, and a large population of long-lived containers makes
    CPython's full collections costly (16 MiB made 8 writers + 2 live readers ~25% slower
    than 2 MiB). A reader further behind simply decodes. Terms handed out are shared with
    the producer: treat them as read-only.
    """

    def __init__(self, max_bytes: int = 2 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._entries: dict[bytes, Any] = {}
        # Age order kept apart: popping a plain dict's oldest key via next(iter(...)) gets
        # slower with every deletion at its front (it skips the dead slots).
        self._order: deque[bytes] = deque()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def remember(self, body: bytes, build: Any) -> None:
        """Register ``build`` (a zero-argument callable) as the decoder of ``body``."""
        if len(body) > self.max_bytes or body in self._entries:
            return
        self._entries[body] = build
        self._order.append(body)
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            oldest = self._order.popleft()
            del self._entries[oldest]
            self._bytes -= len(oldest)

    def recall(self, body: bytes | memoryview) -> tuple[bool, Any]:
        """``(True, term)`` if ``body`` was registered, else ``(False, None)``.

        ``body`` may be a memoryview slice of a received frame (hashed without copying).
        """
        build = self._entries.get(body)
        if build is None:
            self.misses += 1
            return False, None
        self.hits += 1
        return True, build()

    def clear(self) -> None:
        self._entries.clear()
        self._order.clear()
        self._bytes = 0
