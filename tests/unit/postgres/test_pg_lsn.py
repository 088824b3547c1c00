import pytest
from hypothesis import given
from hypothesis import strategies as st

from electric.postgres.lsn import Lsn, coerce


def test_text_form_matches_postgres():
    assert str(Lsn(0x2A7F4A880)) == "2/A7F4A880"
    assert str(Lsn(1)) == "0/1"
    assert str(Lsn(0)) == "0/0"
    assert repr(Lsn(1)) == "Lsn('0/1')"
    assert f"{Lsn(0x1735A68)}" == "0/1735A68"


def test_parse_any_case():
    assert Lsn.parse("2/a7f4a880") == 0x2A7F4A880
    assert Lsn.parse("FFFFFFFF/FFFFFFFF") == (1 << 64) - 1


@pytest.mark.parametrize(
    "bad", ["", "1", "1/", "/1", "g/1", "1/2/3", "123456789/0", " 1_0/1", "+1/1", "1/٣"]
)
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        Lsn.parse(bad)


def test_parts_and_bytes():
    lsn = Lsn.from_parts(2, 0xA7F4A880)
    assert (lsn.segment, lsn.offset) == (2, 0xA7F4A880)
    assert lsn.to_bytes8() == bytes.fromhex("00000002a7f4a880")
    assert Lsn.from_bytes8(bytes.fromhex("00000002a7f4a880")) == lsn


def test_arithmetic_carries_at_2_pow_32():
    lsn = Lsn.from_parts(0, 0xFFFFFFFF)
    assert isinstance(lsn + 1, Lsn)
    assert str(lsn + 1) == "1/0"
    assert str(lsn.increment()) == "1/9"
    assert (Lsn(100) - Lsn(40)) == 60 and not isinstance(Lsn(100) - Lsn(40), Lsn)
    assert isinstance(Lsn(100) - 40, Lsn)
    with pytest.raises(ValueError):
        Lsn(0) - 1
    with pytest.raises(ValueError):
        Lsn((1 << 64) - 1) + 1


def test_ordering_and_coerce():
    assert Lsn.parse("1/0") > Lsn.parse("0/FFFFFFFF")
    assert sorted([Lsn(3), Lsn(1)]) == [1, 3]
    assert coerce("0/10") == 16 and coerce(16) == Lsn(16)


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_text_round_trip(value):
    assert Lsn.parse(str(Lsn(value))) == value
