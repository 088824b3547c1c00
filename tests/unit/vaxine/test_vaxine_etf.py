import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from electric.vaxine import etf
from electric.vaxine.etf import Atom, ETFError, ImproperList, Pid, Reference
from tests.fixtures.vaxine.golden import all_frames, embedded_etf, json_to_term

REPLICATION_FRAMES = all_frames(port=8088)
API_FRAMES = all_frames(port=8087)


def _ids(frames):
    return [f"{name}-{f['seq']}" for name, f in frames]


@pytest.mark.parametrize("name,frame", REPLICATION_FRAMES, ids=_ids(REPLICATION_FRAMES))
def test_every_8088_frame_decodes_and_reencodes_byte_exact(name, frame):
    raw = bytes.fromhex(frame["hex"])
    if "decoded" not in frame or frame["message"].startswith("(not an ETF"):
        with pytest.raises(ETFError):
            etf.decode(raw)
        return
    term = etf.decode(raw)
    assert term == json_to_term(frame["decoded"])
    assert etf.encode(term) == raw


@pytest.mark.parametrize("name,frame", API_FRAMES, ids=_ids(API_FRAMES))
def test_etf_blobs_inside_8087_frames(name, frame):
    for raw, rendered in embedded_etf(frame.get("decoded", {})):
        term = etf.decode(raw)
        assert term == json_to_term(rendered)
        assert etf.encode(term) == raw


def test_terms_electric_produces_are_byte_exact():
    assert etf.encode(Atom("nil")) == bytes.fromhex("836400036e696c")
    assert etf.encode(Atom("ignore")) == bytes.fromhex("8364000669676e6f7265")
    assert etf.encode(b"hello world") == bytes.fromhex("836d0000000b68656c6c6f20776f726c64")
    # offsets {L, R} as handed to Satellite clients
    assert etf.encode((5354, 8837)) == bytes.fromhex("836802620000" "14ea6200002285")
    assert etf.encode((0, 4949)) == bytes.fromhex("8368026100620000" "1355")


@pytest.mark.parametrize(
    "value,hexbytes",
    [
        (0, "6100"),
        (255, "61ff"),
        (256, "6200000100"),
        (-1, "62ffffffff"),
        (2**31 - 1, "627fffffff"),
        (2**31, "6e040000000080"),
        (-(2**31), "6280000000"),
        (-(2**31) - 1, "6e040101000080"),
        (1795771229116096, "6e0700c09635923e6106"),
    ],
)
def test_integer_tags(value, hexbytes):
    assert etf.encode(value) == bytes.fromhex("83" + hexbytes)
    assert etf.decode(bytes.fromhex("83" + hexbytes)) == value


def test_large_big_roundtrip():
    n = 1 << 3000
    raw = etf.encode(n)
    assert raw[1] == etf.LARGE_BIG
    assert etf.decode(raw) == n
    assert etf.decode(etf.encode(-n)) == -n


def test_atoms_all_tags_decode():
    assert etf.decode(b"\x83\x73\x02ok") == Atom("ok")  # SMALL_ATOM
    assert etf.decode(b"\x83\x77\x02ok") == Atom("ok")  # SMALL_ATOM_UTF8 (OTP 26+)
    assert etf.decode(b"\x83\x76\x00\x02ok") == Atom("ok")  # ATOM_UTF8
    utf = "éa☃"
    raw = etf.encode(Atom(utf))
    assert raw[1] == etf.SMALL_ATOM_UTF8
    assert etf.decode(raw) == Atom(utf)
    assert etf.encode(Atom("é")) == b"\x83\x64\x00\x01\xe9"  # latin-1 stays ATOM_EXT


def test_strings_lists_and_improper_lists():
    assert etf.encode([104, 105]) == b"\x83\x6b\x00\x02hi"
    assert etf.decode(b"\x83\x6b\x00\x02hi") == [104, 105]
    assert etf.encode([]) == b"\x83\x6a"
    assert etf.encode([256]) == b"\x83\x6c\x00\x00\x00\x01\x62\x00\x00\x01\x00\x6a"
    cell = etf.cons_cell((b"k", Atom("t")), (1, b"v"))
    assert isinstance(cell, ImproperList)
    assert etf.decode(etf.encode(cell)) == cell
    assert etf.split_cell(cell) == ((b"k", Atom("t")), (1, b"v"))
    # [K | [a]] is the proper list [K, a]
    assert etf.cons_cell(1, [2]) == [1, 2]
    assert etf.split_cell([1, 2]) == (1, [2])


def test_maps_floats_pids_refs_roundtrip():
    for term in [
        {Atom("a"): 1, b"b": [1, 2.5]},
        3.25,
        Pid(Atom("n@h"), 1, 2, 3),
        Reference(Atom("n@h"), 7, (1, 2, 3)),
        (),
        tuple(range(300)),
        True,
    ]:
        assert etf.decode(etf.encode(term)) == (Atom("true") if term is True else term)


def test_old_pid_and_reference_tags():
    node = b"\x64\x00\x03a@b"
    pid = etf.decode(b"\x83\x67" + node + struct.pack(">IIB", 5, 6, 1))
    assert pid == Pid(Atom("a@b"), 5, 6, 1)
    ref = etf.decode(b"\x83\x72\x00\x01" + node + b"\x02" + struct.pack(">I", 9))
    assert ref == Reference(Atom("a@b"), 2, (9,))


def test_compressed_term():
    inner = etf.encode((Atom("x"), b"y" * 100))[1:]
    raw = b"\x83\x50" + struct.pack(">I", len(inner)) + zlib.compress(inner)
    assert etf.decode(raw) == (Atom("x"), b"y" * 100)
    bad = b"\x83\x50" + struct.pack(">I", 2**31) + zlib.compress(inner)
    with pytest.raises(ETFError):
        etf.decode(bad)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"hello",
        b"\x83",
        b"\x83\x6d\xff\xff\xff\xff",  # binary claims 4 GiB
        b"\x83\x6c\xff\xff\xff\xff",  # list claims 4 G elements
        b"\x83\x68\x05\x61",
        b"\x83\x74\x00\x00\x00\x01\x6a\x61\x01",  # map with a list key
        b"\x83\x61\x01\x61",  # trailing bytes
        b"\x83\x4d\x00\x00\x00\x01\x08\xff",  # bitstring
        b"\x83\xee",
        b"\x83" + b"\x68\x01" * 1000 + b"\x6a",  # too deep
        # short leaves inside the containers the fast decoder inlines
        b"\x83\x68\x02\x6d\x00\x00\x00\x09ab",  # 2-tuple, binary runs past the end
        b"\x83\x68\x02\x61\x01\x64\x00\x09ab",  # 2-tuple, atom runs past the end
        b"\x83\x68\x03\x61\x01\x61\x02\x6e\x08\x00\x01",  # bignum runs past the end
        b"\x83\x6c\x00\x00\x00\x01\x6d\x00\x00\x00\x09ab\x6a",  # list item too long
        b"\x83\x6c\x00\x00\x00\x02\x6a\x6a",  # list: no room for its tail
    ],
)
def test_malformed_input_raises_etferror(raw):
    with pytest.raises(ETFError):
        etf.decode(raw)


def test_encode_rejects_unknown_python_types():
    with pytest.raises(ETFError):
        etf.encode(object())
    with pytest.raises(ETFError):
        etf.encode(None)


terms = st.recursive(
    st.one_of(
        st.integers(),
        st.binary(max_size=20),
        st.text(max_size=10).map(Atom),
        st.floats(allow_nan=False),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
    ),
    max_leaves=20,
)


@given(terms)
def test_roundtrip_property(term):
    assert etf.decode(etf.encode(term)) == term


@given(st.binary(max_size=64))
def test_fuzz_never_crashes(raw):
    try:
        etf.decode(b"\x83" + raw)
    except ETFError:
        pass


def test_builders_splice_what_the_encoder_would_write():
    items = [b"a", b"", b"x" * 300]
    for n in (0, 1, 255, 256, -1, 2**31 - 1, 2**31, 1_700_000_000_000_000, 2**64, -(2**70)):
        assert etf.integer(n) == etf.encode_body(n)
    assert etf.binary(b"xyz") == etf.encode_body(b"xyz")
    assert etf.list_of([etf.binary(i) for i in items]) == etf.encode_body(items)
    assert etf.list_of([]) == etf.NIL_BYTES == etf.encode_body([])
    for n in (0, 2, 255, 256, 70_000):
        term = tuple(i % 256 for i in range(n))
        assert etf.tuple_head(len(term)) + b"".join(
            etf.encode_body(t) for t in term) == etf.encode_body(term)
    cell = etf.ImproperList((b"k",), (1, 2))  # [K | V]: a one-item list, V as its tail
    assert (etf.list_head(1) + etf.binary(b"k") + etf.encode_body((1, 2))
            == etf.encode_body(cell))
    assert etf.VERSION_BYTE + etf.binary(b"v") == etf.encode(b"v")
