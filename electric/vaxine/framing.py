"""``{packet, 4}`` framing shared by both Vaxine ports: a u32 big-endian length, then a body.

Sans-I/O: feed received bytes, get complete bodies back. A length above ``max_frame`` is
rejected as soon as its 4 header bytes arrive, before anything is buffered or allocated for
it, so a forged length cannot make a peer hold gigabytes.
"""

from __future__ import annotations

import struct

from electric.limits import DEFAULT

_HEADER = struct.Struct(">I")


class FrameTooLarge(ValueError):
    """The peer announced a frame longer than the limit."""


def encode_frame(body: bytes) -> bytes:
    if len(body) > 0xFFFFFFFF:
        raise FrameTooLarge(f"frame of {len(body)} bytes does not fit a u32 length")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental splitter of length-prefixed frames."""

    def __init__(self, max_frame: int = DEFAULT.vaxine.max_frame):
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame body now complete (maybe none)."""
        self._buf += data
        frames = []
        while len(self._buf) >= 4:
            (length,) = _HEADER.unpack_from(self._buf, 0)
            if length > self.max_frame:
                raise FrameTooLarge(f"frame length {length} exceeds the {self.max_frame} limit")
            if len(self._buf) < 4 + length:
                break
            frames.append(bytes(self._buf[4 : 4 + length]))
            del self._buf[: 4 + length]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)
