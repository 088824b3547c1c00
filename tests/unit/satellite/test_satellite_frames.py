"""Byte vectors of docs/protocols.md §1.2 (recomputed and checked with the real npm decoder)."""

import pytest

from electric.pb import satellite_pb2 as pb
from electric.satellite import frames

ETF_5159_9941 = bytes.fromhex("836802620000142762000026d5")


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


@pytest.mark.parametrize(
    "msg, hexstr",
    [
        (frames.error(), "00"),
        (frames.error(frames.AUTH_REQUIRED), "00 08 01"),
        (frames.error(frames.INVALID_REQUEST), "00 08 04"),
        (
            pb.SatAuthReq(id="device-id-0000", token="user-1"),
            "01 0a 0e 6465766963652d69642d30303030 12 06 757365722d31",
        ),
        (
            pb.SatAuthResp(id="electric-development-cluster-0000"),
            "02 0a 21 656c6563747269632d646576656c6f706d656e742d636c75737465722d30303030",
        ),
        (pb.SatPingReq(), "05"),
        (frames.ping_resp(b""), "06 0a 00"),
        (frames.ping_resp(b"1"), "06 0a 01 31"),
        (frames.ping_resp(None), "06"),
        (frames.server_start_req(b""), "07 12 01 02 18 01"),
        (frames.server_start_req(b"x"), "07 0a 01 78 12 01 02 18 01"),
        (pb.SatInStartReplicationResp(), "08"),
        (pb.SatInStopReplicationReq(), "09"),
        (pb.SatInStopReplicationResp(), "0a"),
        (
            pb.SatRelation(
                schema_name="public",
                table_name="entries",
                relation_id=100001,
                columns=[
                    pb.SatRelationColumn(name="id", type="uuid"),
                    pb.SatRelationColumn(name="content", type="varchar"),
                ],
            ),
            "0c 0a06 7075626c6963 1a07 656e7472696573 20 a18d06 2a0a 0a02 6964 1204 75756964"
            " 2a12 0a07 636f6e74656e74 1207 76617263686172",
        ),
    ],
)
def test_encode_vectors(msg, hexstr):
    assert frames.encode(msg) == h(hexstr)
    back = frames.decode(h(hexstr))
    assert back == msg


def test_oplog_vector():
    uuid = "911fee88-2a0f-4fff-9d71-0c3eb7c9a380"
    ts = 1669200000000
    msg = pb.SatOpLog(
        ops=[
            pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=ETF_5159_9941)),
            pb.SatTransOp(
                update=pb.SatOpUpdate(relation_id=100001, row_data=[uuid.encode(), b"hello"])
            ),
            pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=ts, lsn=ETF_5159_9941)),
        ]
    )
    expected = (
        h("0b 0a18 0a16 08 80e8caa0ca30 1a0d 836802620000142762000026d5 0a33 1a31 08 a18d06 1224")
        + uuid.encode()
        + h("1205 68656c6c6f 0a18 1216 08 80e8caa0ca30 1a0d 836802620000142762000026d5")
    )
    assert frames.encode(msg) == expected
    assert frames.decode(expected) == msg


def test_ts_client_start_request_with_empty_packed_options():
    msg = frames.decode(h("07 0a 01 30 12 00"))
    assert msg.lsn == b"0"
    assert list(msg.options) == []


def test_ping_resp_presence():
    assert not frames.decode(h("06")).HasField("lsn")
    empty = frames.decode(h("06 0a 00"))
    assert empty.HasField("lsn") and empty.lsn == b""


def test_s11_roundtrip():
    ts = 1669200000000
    msgs = [
        pb.SatAuthReq(token="token"),
        pb.SatPingReq(),
        pb.SatOpLog(
            ops=[
                pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=b"234234")),
                pb.SatTransOp(insert=pb.SatOpInsert(relation_id=10, row_data=[b"1", b"2", b"10"])),
                pb.SatTransOp(
                    update=pb.SatOpUpdate(
                        relation_id=10,
                        row_data=[b"1", b"2", b"10"],
                        old_row_data=[b"21", b"22", b"101"],
                    )
                ),
                pb.SatTransOp(
                    delete=pb.SatOpDelete(relation_id=10, old_row_data=[b"21", b"22", b"101"])
                ),
                pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=ts, lsn=b"245242342")),
            ]
        ),
    ]
    for msg in msgs:
        assert frames.decode(frames.encode(msg)) == msg


def test_empty_frame():
    with pytest.raises(frames.FrameError) as exc:
        frames.decode(b"")
    assert exc.value.kind == "empty"


@pytest.mark.parametrize("type_byte", [13, 14, 0x72, 255])
def test_unknown_type(type_byte):
    with pytest.raises(frames.FrameError) as exc:
        frames.decode(bytes([type_byte]) + b"ubbish")
    assert exc.value.kind == "unknown_type"
    assert str(type_byte) in str(exc.value)


@pytest.mark.parametrize(
    "payload",
    [
        h("01 0a ff"),  # length runs past the end
        h("01 0a 02 ff fe"),  # invalid UTF-8 in a string field
        h("0b 0a 05 0a"),  # truncated nested message
        h("01 07"),  # wire type 7 does not exist
    ],
)
def test_undecodable(payload):
    with pytest.raises(frames.FrameError) as exc:
        frames.decode(payload)
    assert exc.value.kind == "undecodable"


def test_encode_rejects_non_frame_message():
    with pytest.raises(TypeError):
        frames.encode(pb.SatTransOp())
