"""The one torn-tail rule, on bytes alone (no file): a damaged last record is a torn write,
damage before it is corruption."""

import pytest

from electric.limits import DEFAULT
from electric.offsets.errors import OffsetFileCorrupt
from electric.offsets.records import HEADER_SIZE, encode_satellite, frame, header_bytes
from electric.offsets.recovery import Scan

ONE = frame(encode_satellite("a", b"1"))
TWO = frame(encode_satellite("b", b"2"))


def scan(data: bytes) -> tuple[list[bytes], int, str | None]:
    s = Scan(data, "o.dat", DEFAULT.service.offsets_max_record_size)
    payloads = [bytes(p) for _pos, p in s]
    return payloads, s.end, s.torn


def test_complete_records_are_read_in_order():
    payloads, end, torn = scan(header_bytes() + ONE + TWO)
    assert payloads == [ONE[12:], TWO[12:]] and torn is None
    assert end == HEADER_SIZE + len(ONE) + len(TWO)


@pytest.mark.parametrize("tail, reason", [
    (TWO[:5], "incomplete record header"),
    (TWO[:-1], "record extends past end of file"),
    (TWO[:-1] + bytes([TWO[-1] ^ 1]), "checksum mismatch in last record"),
    (bytes(40), "zero-filled tail"),
])
def test_a_damaged_last_record_is_a_torn_write(tail, reason):
    payloads, end, torn = scan(header_bytes() + ONE + tail)
    assert payloads == [ONE[12:]]
    assert (end, torn) == (HEADER_SIZE + len(ONE), reason)


def test_a_damaged_record_before_the_last_is_corruption():
    bad = ONE[:-1] + bytes([ONE[-1] ^ 1])
    with pytest.raises(OffsetFileCorrupt) as raised:
        list(Scan(header_bytes() + bad + TWO, "o.dat", DEFAULT.service.offsets_max_record_size))
    assert str(raised.value) == f"offset file o.dat is corrupt at byte {HEADER_SIZE}: record " \
                                "checksum mismatch"
