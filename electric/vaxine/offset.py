"""A position in Vaxine's log, ``{L, R}``, and where a WAL stream starts (sans-I/O).

Every transaction Vaxine streams carries the offset ``{L, R}`` of its log records; a reader
resumes after it. Electric hands the offset to Satellite clients as the lsn of the
transaction, exactly Erlang's ``term_to_binary({L, R})``: clients persist it and give it back
to resume, and other Electric nodes may read it. :class:`VaxineOffset` is a ``NamedTuple``,
so code that treats offsets as plain ``(L, R)`` tuples keeps working.

A stream starts at a :data:`StartOffset`: ``0`` (the whole log), ``"eof"`` (new transactions
only) or an offset (everything after it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from electric.vaxine import etf

# Tags an offset's integers may use; the lsn of any other shape is not one we produced.
_INT_TAGS = (etf.SMALL_INTEGER, etf.INTEGER, etf.SMALL_BIG, etf.LARGE_BIG)
# A bignum longer than this cannot be a log position; refuse before building it.
_MAX_BIG_DIGITS = 16
_HEAD = bytes((etf.VERSION, etf.SMALL_TUPLE, 2))


class InvalidOffset(ValueError):
    """The value or bytes are not an offset ``{L, R}`` with ``0 <= L <= R``."""


class VaxineOffset(NamedTuple):
    left: int
    right: int

    @classmethod
    def of(cls, value: Any) -> VaxineOffset:
        """``value`` (any pair of ints) as an offset; :class:`InvalidOffset` if it is not one.

        Validating matters: a bad offset sent to Vaxine kills the stream connection.
        """
        if (isinstance(value, tuple | list) and len(value) == 2
                and all(type(x) is int and x >= 0 for x in value) and value[0] <= value[1]):
            return value if type(value) is cls else cls(value[0], value[1])
        raise InvalidOffset(f"not a Vaxine offset {{L, R}} with 0 <= L <= R: {value!r}")

    def to_bytes(self) -> bytes:
        """``term_to_binary({L, R})``, the lsn Electric hands to Satellite clients."""
        return etf.encode((self.left, self.right))

    @classmethod
    def from_bytes(cls, data: bytes) -> VaxineOffset:
        """Parse ``term_to_binary({L, R})``; :class:`InvalidOffset` for anything else.

        Strict on purpose (a version byte, a small 2-tuple, two integers, nothing after):
        clients hand these bytes back, and anything that is not an offset we produced is
        rejected rather than guessed at.
        """
        if len(data) < 3 or data[:3] != _HEAD:
            raise InvalidOffset("not an Erlang-term encoded {L, R} offset")
        left, pos = _decode_int(data, 3)
        right, pos = _decode_int(data, pos)
        if pos != len(data):
            raise InvalidOffset("trailing bytes after the offset term")
        if not 0 <= left <= right:
            raise InvalidOffset(f"offset {{{left}, {right}}} out of range")
        return cls(left, right)

    def describe(self) -> str:
        return f"after log offset {self.left}/{self.right}"

    def __repr__(self) -> str:
        # Logs and error texts printed offsets as plain tuples; keep them reading the same.
        return f"({self.left}, {self.right})"


def _decode_int(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise InvalidOffset("truncated term")
    tag = data[pos]
    if tag not in _INT_TAGS:
        raise InvalidOffset(f"expected an integer term at byte {pos}")
    if tag == etf.SMALL_BIG and pos + 1 < len(data) and data[pos + 1] > _MAX_BIG_DIGITS:
        raise InvalidOffset("integer too large or truncated")
    if tag == etf.LARGE_BIG and int.from_bytes(data[pos + 1 : pos + 5], "big") > _MAX_BIG_DIGITS:
        raise InvalidOffset("integer too large or truncated")
    try:
        value, end = etf.decode_at(data, pos)
    except etf.ETFError as exc:
        raise InvalidOffset("truncated term") from exc
    if end > len(data):  # a slice past the end came back short
        raise InvalidOffset("integer too large or truncated")
    return value, end


StartOffset = VaxineOffset | tuple[int, int] | int | str | None
"""Where a WAL stream starts: ``0`` or ``None`` (whole log), ``"eof"`` (new transactions
only) or an offset (everything after it)."""


def start_term(start: Any) -> Any:
    """The value of a start request's ``offset`` option: ``0``, ``eof`` or ``{L, R}``."""
    if start is None or start == 0:
        return 0
    if start == "eof" or start == etf.Atom("eof"):
        return etf.Atom("eof")
    return VaxineOffset.of(start)


def describe_start(start: Any) -> str:
    """A resume point in an operator's words (never ``Atom('eof')``)."""
    if start in (0, None):
        return "from the start of the log"
    if start == "eof":
        return "from the end of the log (new transactions only)"
    if isinstance(start, tuple) and len(start) == 2:
        return f"after log offset {start[0]}/{start[1]}"
    return f"after log offset {start}"
