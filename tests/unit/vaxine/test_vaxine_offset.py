import pytest

from electric.vaxine import etf
from electric.vaxine.offset import (
    InvalidOffset,
    VaxineOffset,
    describe_start,
    start_term,
)


def test_offsets_are_tuples_and_encode_like_term_to_binary():
    offset = VaxineOffset.of((5354, 8837))
    assert offset == (5354, 8837) and offset.right == 8837
    assert offset.to_bytes() == bytes.fromhex("836802620000" "14ea6200002285")
    assert offset.to_bytes() == etf.encode((5354, 8837))
    assert VaxineOffset.from_bytes(VaxineOffset(0, 4949).to_bytes()) == (0, 4949)
    assert repr(offset) == "(5354, 8837)"


@pytest.mark.parametrize("bad", [(2, 1), (-1, 3), (1,), "x", (1.0, 2), (True, 2)])
def test_of_rejects(bad):
    with pytest.raises(InvalidOffset):
        VaxineOffset.of(bad)


@pytest.mark.parametrize("data", [
    b"junk",
    etf.encode((1, 2, 3)),
    etf.encode([1, 2]),
    etf.encode((etf.Atom("a"), 2)),
    bytes.fromhex("836802610a6e"),  # truncated bignum
    bytes.fromhex("836802610a6f000000ff00") + b"\x01" * 255,  # absurd LARGE_BIG
])
def test_from_bytes_rejects(data):
    with pytest.raises(InvalidOffset):
        VaxineOffset.from_bytes(data)


def test_start_terms():
    assert start_term(None) == 0 and start_term(0) == 0
    assert start_term("eof") == etf.Atom("eof") and type(start_term("eof")) is etf.Atom
    assert start_term((1, 2)) == (1, 2)
    with pytest.raises(InvalidOffset):
        start_term((3, 1))
    assert describe_start(VaxineOffset(74, 80)) == "after log offset 74/80"
