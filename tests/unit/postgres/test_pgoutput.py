"""pgoutput codec: the docs/protocols.md §3.1 vectors round-trip byte-exactly, bad input is rejected."""

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electric.postgres import pgoutput as po
from electric.postgres.lsn import Lsn
from electric.postgres.pgoutput_decode import decode, text_record
from electric.postgres.pgoutput_encode import encode


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


TS = datetime(2019, 7, 18, 17, 2, 35, 726322, tzinfo=UTC)
UUID = b"c0d731ca-0e72-4950-9499-8db83badb051"

VECTORS = [
    (
        "42 00000002a7f4a880 000230f65858d5f2 0000026b",
        po.Begin(Lsn.parse("2/A7F4A880"), TS, 619),
    ),
    (
        "43 00 00000002a7f4a880 00000002a7f4a8b0 000230f65858d5f2",
        po.Commit(Lsn.parse("2/A7F4A880"), Lsn.parse("2/A7F4A8B0"), TS),
    ),
    (
        "43 00 0000000001735a68 0000000001735a98 000283ff7257446a",
        po.Commit(
            Lsn.parse("0/1735A68"),
            Lsn.parse("0/1735A98"),
            datetime(2022, 6, 9, 9, 45, 11, 642218, tzinfo=UTC),
        ),
    ),
    ("4f 00000002a7f4a880 456c6d6572204675 6400", po.Origin(Lsn.parse("2/A7F4A880"), "Elmer Fud")),
    (
        "52 00006000 7075626c696300 666f6f00 64 0002 00 62617200 00000019 ffffffff"
        " 01 696400 00000017 ffffffff",
        po.Relation(
            24576,
            "public",
            "foo",
            "d",
            (po.RelationColumn("bar", 25, -1, 0), po.RelationColumn("id", 23, -1, 1)),
        ),
    ),
    (
        "52 0000400c 7075626c696300 656e747269657300 66 0002 01 696400 00000b86 ffffffff"
        " 01 636f6e74656e7400 00000413 00000044",
        po.Relation(
            16396,
            "public",
            "entries",
            "f",
            (po.RelationColumn("id", 2950, -1, 1), po.RelationColumn("content", 1043, 68, 1)),
        ),
    ),
    (
        "52 00004012 7075626c696300 636f6d706c657800 66 0003 01 696400 00000b86 ffffffff"
        " 01 6e756d6265727300 000003ef ffffffff 01 746578745f6d617472697800 000003f1 ffffffff",
        po.Relation(
            16402,
            "public",
            "complex",
            "f",
            (
                po.RelationColumn("id", 2950, -1, 1),
                po.RelationColumn("numbers", 1007, -1, 1),
                po.RelationColumn("text_matrix", 1009, -1, 1),
            ),
        ),
    ),
    (
        "59 00008034 7075626c696300 6578616d706c655f7479706500",
        po.Type(32820, "public", "example_type"),
    ),
    ("54 00000001 00 00006000", po.Truncate((24576,), 0)),
    ("54 00000001 01 00006000", po.Truncate((24576,), po.TRUNCATE_CASCADE)),
    ("54 00000001 02 00006000", po.Truncate((24576,), po.TRUNCATE_RESTART_IDENTITY)),
    ("54 00000002 03 00006000 00006001", po.Truncate((24576, 24577), 3)),
    (
        "49 00006000 4e 0002 74 00000003 62617a 74 00000003 353630",
        po.Insert(24576, (b"baz", b"560")),
    ),
    ("49 00006000 4e 0002 6e 74 00000003 353630", po.Insert(24576, (None, b"560"))),
    ("49 00006000 4e 0002 75 74 00000003 353630", po.Insert(24576, (po.UNCHANGED_TOAST, b"560"))),
    (
        "55 00006000 4e 0002 74 00000007 6578616d706c65 74 00000003 353630",
        po.Update(24576, (b"example", b"560")),
    ),
    (
        "55 00006000 4f 0002 74 00000003 62617a 74 00000003 353630"
        " 4e 0002 74 00000007 6578616d706c65 74 00000003 353630",
        po.Update(24576, (b"example", b"560"), old=(b"baz", b"560")),
    ),
    (
        "55 00006000 4b 0002 74 00000003 62617a 6e 4e 0002 74 00000007 6578616d706c65"
        " 74 00000003 353630",
        po.Update(24576, (b"example", b"560"), key=(b"baz", None)),
    ),
    ("44 00006000 4b 0002 74 00000007 6578616d706c65 6e", po.Delete(24576, key=(b"example", None))),
    (
        "44 00006000 4f 0002 74 00000003 62617a 74 00000003 353630",
        po.Delete(24576, old=(b"baz", b"560")),
    ),
    # Decoder doc examples: relation 16396 with a UUID.
    (
        "49 0000400c 4e 0002 74 00000024" + UUID.hex() + " 74 00000002 6f6b",
        po.Insert(16396, (UUID, b"ok")),
    ),
    (
        "55 0000400c 4f 0002 74 00000024" + UUID.hex() + " 74 00000002 6f6b"
        " 4e 0002 74 00000024" + UUID.hex() + " 74 00000003 6f6b32",
        po.Update(16396, (UUID, b"ok2"), old=(UUID, b"ok")),
    ),
    (
        "44 0000400c 4f 0002 74 00000024" + UUID.hex() + " 74 00000002 6f6b",
        po.Delete(16396, old=(UUID, b"ok")),
    ),
    # Binary column format and an empty text value.
    (
        "49 00006000 4e 0002 62 00000002 0102 74 00000000",
        po.Insert(24576, (po.Binary(b"\1\2"), b"")),
    ),
    # Logical decoding message (transactional) and an unknown tag kept verbatim.
    (
        "4d 01 0000000001735a68 70726500 00000003 616263",
        po.LogicalMessage(True, Lsn(0x1735A68), "pre", b"abc", 1),
    ),
    ("53 00000001 01", po.Unknown(b"S", h("00000001 01"))),
]


@pytest.mark.parametrize(("hexdata", "expected"), VECTORS, ids=[v[0][:20] for v in VECTORS])
def test_vectors_round_trip(hexdata, expected):
    data = h(hexdata)
    decoded = decode(data)
    assert decoded == expected
    assert encode(decoded) == data
    assert encode(expected) == data


def test_truncate_option_properties():
    t = decode(h("54 00000001 03 00006000"))
    assert t.cascade and t.restart_identity
    assert not decode(h("54 00000001 00 00006000")).cascade


def test_relation_helpers():
    rel = decode(h(VECTORS[4][0]))
    assert rel.relation == ("public", "foo")
    assert [c.is_key for c in rel.columns] == [False, True]


def test_typmod_unsigned_minus_one_encodes_the_same():
    a = po.Relation(1, "s", "t", "d", (po.RelationColumn("c", 25, -1),))
    b = po.Relation(1, "s", "t", "d", (po.RelationColumn("c", 25, 0xFFFFFFFF),))
    assert encode(a) == encode(b)


def test_naive_timestamp_is_utc():
    naive = po.Begin(Lsn(1), TS.replace(tzinfo=None), 0)
    assert encode(naive) == encode(po.Begin(Lsn(1), TS, 0))


def test_encode_str_values():
    assert encode(po.Insert(1, ("é",))) == encode(po.Insert(1, ("é".encode(),)))


@pytest.mark.parametrize(
    ("hexdata", "fragment"),
    [
        ("", "empty"),
        ("42 00000002a7f4a880", "truncated"),
        ("42 00000002a7f4a880 000230f65858d5f2 0000026b 00", "trailing"),
        ("4f 00000002a7f4a880 456c", "unterminated"),
        ("49 00006000 58 0000", "expected 'N'"),
        ("49 00006000 4e 0001 74 7fffffff 00", "truncated"),
        ("49 00006000 4e 0001 74 ffffffff", "negative length"),
        ("49 00006000 4e 0001 78", "unknown column kind"),
        ("55 00006000 4f 0000 4f 0000", "expected 'N'"),
        ("44 00006000 4e 0000", "expected 'O' or 'K'"),
        ("54 ffffffff 00 00006000", "truncated"),
        ("52 00006000 7300 7400 7a 0000", "replica identity"),
        ("42 0000000000000000 7fffffffffffffff 00000000", "timestamp out of range"),
    ],
)
def test_malformed_input(hexdata, fragment):
    with pytest.raises(po.ProtocolError, match=fragment):
        decode(h(hexdata))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_raise_protocol_error(data):
    try:
        message = decode(data)
    except po.ProtocolError:
        return
    assert encode(message) == data


@settings(max_examples=500, deadline=None)
@given(
    tag=st.sampled_from(b"BCORYIUDTM"),
    body=st.binary(max_size=48),
)
def test_random_bodies_after_known_tags(tag, body):
    data = bytes([tag]) + body
    try:
        message = decode(data)
    except po.ProtocolError:
        return
    assert encode(message) == data


values = st.one_of(
    st.none(),
    st.just(po.UNCHANGED_TOAST),
    st.binary(max_size=20),
    st.binary(max_size=5).map(po.Binary),
)
tuples = st.lists(values, max_size=5).map(tuple)


@given(
    rel=st.integers(0, 2**32 - 1), new=tuples, old=st.one_of(st.none(), tuples), key=st.booleans()
)
def test_update_messages_round_trip(rel, new, old, key):
    msg = po.Update(rel, new, key=old) if key else po.Update(rel, new, old=old)
    assert decode(encode(msg)) == msg


# --- the row fast path: a tuple straight into a record ---------------------------------------

NAMES = ("id", "body", "big")


@pytest.mark.parametrize(
    "hexdata, expected",
    [
        # 3 columns: t "1", n, u (unchanged TOAST: left out) — then the offset after it
        ("0003 74 00000001 31 6e 75", ({"id": "1", "body": None}, 10)),
        # UTF-8 text; trailing bytes after the tuple are the caller's business
        ("0003 74 00000002 c3a9 74 00000000 6e ff", ({"id": "é", "body": "", "big": None}, 15)),
    ],
)
def test_text_record_vectors(hexdata, expected):
    assert text_record(bytes.fromhex(hexdata.replace(" ", "")), 0, NAMES, "utf-8") == expected


@pytest.mark.parametrize(
    "hexdata",
    [
        "0002 74 00000001 31 6e",  # column count differs from the relation's
        "0003 62 00000001 31 6e 6e",  # binary value: the general path refuses it
        "0003 74 00000001 ff 6e 6e",  # not UTF-8
        "0003 74 00000009 31 6e 6e",  # length past the end
        "0003 74 ffffffff 31 6e 6e",  # negative length
        "0003 74 00000001 31 6e",  # truncated: a column missing
        "0003 78 6e 6e",  # unknown kind
        "00",  # no column count
    ],
)
def test_text_record_declines_what_decode_must_judge(hexdata):
    """Anything unusual gives None: the assembler then decodes the whole message with
    ``decode``, which raises the precise error (or handles the case)."""
    assert text_record(bytes.fromhex(hexdata.replace(" ", "")), 0, NAMES, "utf-8") is None
