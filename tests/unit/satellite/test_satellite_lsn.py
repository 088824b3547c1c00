import pytest

from electric.satellite.lsn import InvalidLsn, decode_offset, describe, encode_offset


@pytest.mark.parametrize(
    "offset, hexstr",
    [
        ((5159, 9941), "836802620000142762000026d5"),
        ((0, 3000000000), "83680261006e0400005ed0b2"),
        ((0, 0), "83680261006100"),
        ((255, 256), "83680261ff6200000100"),
        (7, "836107"),
        (2**31 - 1, "83627fffffff"),
    ],
)
def test_encode_like_term_to_binary(offset, hexstr):
    assert encode_offset(offset).hex() == hexstr
    if isinstance(offset, tuple):
        assert decode_offset(bytes.fromhex(hexstr)) == offset


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"0",
        b"eof",
        b"\x00\x00\x00\x00",  # typescript-client 0.3.0's default lsn
        bytes.fromhex("836107"),  # an integer, not {L, R}
        bytes.fromhex("83680262000026d56200001427"),  # L > R
        bytes.fromhex("836802620000142762000026d5ff"),  # trailing garbage
        bytes.fromhex("8368026100"),  # truncated
        bytes.fromhex("836803610161026103"),  # 3-tuple
        bytes.fromhex("83680262ffffffff6101"),  # negative L
        bytes.fromhex("836802610a6e"),  # truncated bignum
        bytes.fromhex("836802610a6eff00") + b"\x01" * 255,  # absurd bignum
    ],
)
def test_decode_rejects(data):
    with pytest.raises(InvalidLsn):
        decode_offset(data)


def test_describe():
    assert describe(b"some_lsn") == "'some_lsn'"
    assert describe(b"\x83\x61\x01") == "836101"
