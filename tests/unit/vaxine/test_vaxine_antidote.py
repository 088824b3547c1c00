import pytest
from google.protobuf.message import Message

from electric.pb import antidote_pb2 as pb
from electric.vaxine import antidote
from electric.vaxine.antidote import AntidoteDecodeError, VaxineError
from electric.vaxine.framing import FrameDecoder, FrameTooLarge, encode_frame
from tests.fixtures.vaxine.golden import all_frames, frames

API_FRAMES = all_frames(port=8087)
MALFORMED = {"(unknown message code 250)", "(empty frame)"}


def _ids(fs):
    return [f"{name}-{f['seq']}" for name, f in fs]


def normalise_json(node):
    """Fixture rendering → comparable plain structure (bytes for binaries, ints for enums)."""
    if isinstance(node, dict):
        if "binary_hex" in node:
            return bytes.fromhex(node["binary_hex"])
        if "binary_utf8" in node:
            return node["binary_utf8"].encode()
        if "enum" in node:
            return node["value"]
        if "message" in node and "fields" in node:
            return {"message": node["message"],
                    "fields": {k: normalise_json(v) for k, v in node["fields"].items()}}
        return {k: normalise_json(v) for k, v in node.items()}
    if isinstance(node, list):
        return [normalise_json(x) for x in node]
    return node


def render(message: Message):
    fields = {}
    for fd, value in message.ListFields():
        if fd.is_repeated:
            fields[fd.name] = [render(v) if isinstance(v, Message) else v for v in value]
        else:
            fields[fd.name] = render(value) if isinstance(value, Message) else value
    return {"message": message.DESCRIPTOR.name, "fields": fields}


def _is_malformed(frame):
    return frame["message"] in MALFORMED or "truncated" in frame["step"]


@pytest.mark.parametrize("name,frame", API_FRAMES, ids=_ids(API_FRAMES))
def test_every_8087_frame_decodes_reencodes_and_matches(name, frame):
    body = bytes.fromhex(frame["hex"])
    assert frame["length"] == len(body)
    if _is_malformed(frame):
        with pytest.raises(AntidoteDecodeError):
            antidote.decode_body(body)
        return
    message = antidote.decode_body(body)
    assert antidote.code_of(message) == frame["decoded"]["code"]
    expected = normalise_json(frame["decoded"])
    assert render(message) == {"message": expected["message"], "fields": expected["fields"]}
    assert antidote.encode_body(message) == body


def test_client_builders_match_recorded_frames_byte_for_byte():
    s1 = frames("s1_insert", 8087)
    start_req, start_resp = s1[0], s1[1]
    assert antidote.encode_body(antidote.start_transaction()).hex() == start_req["hex"]
    resp = antidote.check_response(antidote.decode_body(bytes.fromhex(start_resp["hex"])),
                                   pb.ApbStartTransactionResp)
    desc = resp.transaction_descriptor
    read = antidote.read_objects(desc, [antidote.bound_object(b"metadata:0", antidote.RRMAP)])
    assert antidote.encode_body(read).hex() == s1[4]["hex"]
    commit = [f for f in s1 if f["message"].startswith("ApbCommitTransaction")][0]
    assert antidote.encode_body(antidote.commit_transaction(desc)).hex() == commit["hex"]
    abort = [f for f in frames("s6_errors", 8087) if f["message"].startswith("ApbAbort")][0]
    desc6 = antidote.decode_body(bytes.fromhex(abort["hex"])).transaction_descriptor
    assert antidote.encode_body(antidote.abort_transaction(desc6)).hex() == abort["hex"]


def test_spec_start_transaction_frame():
    assert antidote.encode_message(antidote.start_transaction()).hex() == (
        "0000000f770a0a8364000669676e6f72651200"
    )


def test_flag_false_is_still_encoded():
    assert antidote.flag_set(False).SerializeToString().hex() == "3a020800"


def test_check_response_raises_on_errors():
    err = antidote.decode_body(bytes.fromhex(frames("s6_errors", 8087)[3]["hex"]))
    with pytest.raises(VaxineError, match="function_clause"):
        antidote.check_response(err, pb.ApbOperationResp)
    with pytest.raises(VaxineError, match="aborted"):
        antidote.check_response(pb.ApbCommitResp(success=False, errorcode=3), pb.ApbCommitResp)
    with pytest.raises(VaxineError):
        antidote.check_response(pb.ApbOperationResp(success=True), pb.ApbCommitResp)


def test_read_value_of_recorded_row():
    s1 = frames("s1_insert", 8087)
    resp = antidote.decode_body(bytes.fromhex(s1[9]["hex"]))
    value = antidote.read_value(resp.objects[0])
    assert value[(b"deleted?", antidote.FLAG_DW)] is False
    assert value[(b"row", antidote.RRMAP)][(b"content", antidote.LWWREG)] == (
        bytes.fromhex("836d0000000b") + b"hello world"
    )


@pytest.mark.parametrize("body", [b"", b"\xfa\x0a\x01x", b"\x77\x0a\x05\x83", b"\x79", b"\x76\x0a"])
def test_decode_rejects_bad_bodies(body):
    with pytest.raises(AntidoteDecodeError):
        antidote.decode_body(body)


def test_frame_decoder_splits_and_limits():
    dec = FrameDecoder(max_frame=10)
    data = encode_frame(b"abc") + encode_frame(b"") + encode_frame(b"0123456789")
    out = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    assert out == [b"abc", b"", b"0123456789"]
    assert dec.buffered == 0
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame=10).feed(b"\x00\x00\x00\x0b")
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff")
