"""Replay the golden transcripts' client frames against the embedded server.

S1–S7 run in file order against one server (as they did against the real Vaxine), then the
server is restarted on the same data dir for S8. Every server frame we receive is compared
with the recorded one: byte for byte where the README calls it deterministic, structurally
(masked timestamps, tokens, pids, refs, offsets) elsewhere.
"""

from __future__ import annotations

import struct

import pytest
from gevent import socket

from electric.pb import antidote_pb2 as pb
from electric.vaxine import antidote, crdt_terms, etf
from electric.vaxine.embedded.server import EmbeddedVaxine
from electric.vaxine.etf import Atom, Pid, Reference
from tests.fixtures.vaxine.golden import load

QUIET_S = 0.2  # stands in for the recordings' 1.5–2.5 s "no frame" waits


def recv_frame(sock, timeout=5.0):
    sock.settimeout(timeout)
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            return None
        header += chunk
    (n,) = struct.unpack(">I", header)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        assert chunk, "connection closed mid-frame"
        body += chunk
    return body


# --------------------------------------------------------------------------- masking


def norm_state(ctype, term):
    if ctype == crdt_terms.LWW:
        return ("LWW", term[1])
    if ctype == crdt_terms.FLAG_DW:
        return "FLAG"  # real Vaxine's streamed flag states are unreliable (README §Surprises)
    return {(f, t.name): norm_state(t, v) for (f, t), v in crdt_terms.dict_to_list(term)}


def norm_effect(ctype, eff):
    if ctype == crdt_terms.LWW:
        assert isinstance(eff[0], int)
        return ("LWW", eff[1])
    if ctype == crdt_terms.FLAG_DW:
        _seen, new_enable, new_disable = eff
        assert all(len(t) == 20 for t in new_enable + new_disable)
        return ("FLAG", len(new_enable), len(new_disable))
    updates, removes = eff
    return ([((f, t.name), norm_effect(t, e[1])) for (f, t), e in updates], removes)


def norm_txn(term):
    tag, txid, dcid, offset, ops = term
    assert tag == Atom("vx_wal_txn")
    assert txid[0] == Atom("tx_id") and isinstance(txid[1], int) and isinstance(txid[2], Pid)
    assert isinstance(dcid[0], Atom) and len(dcid[1]) == 3
    assert len(offset) == 2 and 0 <= offset[0] <= offset[1]
    out = []
    for (key, bucket), ctype, state, effects in ops:
        out.append((key, bucket, ctype, norm_state(ctype, state),
                    [norm_effect(ctype, e) for e in effects]))
    return sorted(out, key=lambda x: x[0])


def compare_api(recorded: bytes, ours: bytes):
    rec, got = antidote.decode_body(recorded), antidote.decode_body(ours)
    assert type(got) is type(rec), (rec, got)
    if isinstance(rec, pb.ApbStartTransactionResp):
        assert got.success
        txid = etf.decode(got.transaction_descriptor)
        assert txid[0] == Atom("tx_id") and isinstance(txid[2], Pid)
    elif isinstance(rec, pb.ApbCommitResp):
        assert got.success == rec.success
        (dc, us), = etf.decode(got.commit_time).items()
        assert isinstance(dc[0], Atom) and isinstance(us, int)
    elif isinstance(rec, pb.ApbStaticReadObjectsResp):
        assert got.objects == rec.objects
        assert got.committime.success
    elif isinstance(rec, pb.ApbErrorResp):
        assert got.errcode == rec.errcode
        assert got.errmsg.split(b"\n")[0] == rec.errmsg.split(b"\n")[0]
    else:
        assert ours == recorded  # 111, 126: deterministic


# --------------------------------------------------------------------------- replay


class Replayer:
    """Replays the transcripts against ``server``: anything with ``host``, ``api_port`` and
    ``replication_port`` (the embedded server here, any Vaxine in the ``vaxine_suite``)."""

    def __init__(self, server):
        self.server = server
        self.socks: dict[str, socket.socket] = {}
        self.descriptors: dict[bytes, bytes] = {}  # recorded → ours
        self.clocks: dict[bytes, bytes] = {}
        self.rep_ids: dict[Reference, Reference] = {}
        self.offsets: dict[int, tuple] = {}  # recorded R → our (L, R)
        self.streamed: dict[str, list] = {}

    def port(self, recorded_port):
        return self.server.api_port if recorded_port == 8087 else self.server.replication_port

    def rewrite_api(self, body: bytes) -> bytes:
        msg = antidote.decode_body(body)
        for holder in (msg, getattr(msg, "transaction", None)):
            if holder is None:
                continue
            for name in ("transaction_descriptor", "timestamp"):
                if holder.DESCRIPTOR.fields_by_name.get(name) and holder.HasField(name):
                    value = getattr(holder, name)
                    value = self.descriptors.get(value, self.clocks.get(value, value))
                    setattr(holder, name, value)
        return antidote.encode_body(msg)

    def rewrite_repl(self, body: bytes) -> bytes:
        term = etf.decode(body)
        tag, ref, req = term
        if req[0] == Atom("vx_cli_stop_req"):
            req = (req[0], self.rep_ids.get(req[1], req[1]))
        elif req[0] == Atom("vx_cli_start_req"):
            opts = []
            for key, value in req[1]:
                if key == Atom("offset") and isinstance(value, tuple):
                    value = self.offsets[value[1]]
                opts.append((key, value))
            req = (req[0], opts)
        return etf.encode((tag, ref, req))

    def learn(self, entry, recorded: bytes, ours: bytes):
        if entry["port"] == 8087:
            rec, got = antidote.decode_body(recorded), antidote.decode_body(ours)
            if isinstance(rec, pb.ApbStartTransactionResp):
                self.descriptors[rec.transaction_descriptor] = got.transaction_descriptor
            if isinstance(rec, pb.ApbCommitResp) and rec.success:
                self.clocks[rec.commit_time] = got.commit_time
            return
        rec, got = etf.decode(recorded), etf.decode(ours)
        if rec[0] == Atom("vx_srv_res") and rec[2][0] == Atom("vx_srv_start_res"):
            self.rep_ids[rec[2][1]] = got[2][1]
        if rec[0] == Atom("vx_wal_txn"):
            self.offsets[rec[3][1]] = got[3]

    def run(self, name: str):
        for entry in load(name)["transcript"]:
            conn = entry["conn"]
            event = entry.get("event")
            if event == "client_connected":
                self.socks[conn] = socket.create_connection(
                    (getattr(self.server, "host", "127.0.0.1"), self.port(entry["port"])))
            elif event == "client_closed":
                self.socks.pop(conn).close()
            elif event == "closed_by_server":
                assert recv_frame(self.socks[conn]) is None, entry["step"]
            elif event == "no_frame_within_timeout":
                with pytest.raises(TimeoutError):
                    recv_frame(self.socks[conn], timeout=QUIET_S)
            elif entry["dir"] == "client->server":
                body = bytes.fromhex(entry["hex"])
                malformed = entry.get("erlang_view", "").startswith("real decoder fails") or \
                    entry["message"].startswith("(")
                if not malformed:
                    body = (self.rewrite_api if entry["port"] == 8087 else self.rewrite_repl)(body)
                self.socks[conn].sendall(struct.pack(">I", len(body)) + body)
            else:
                recorded = bytes.fromhex(entry["hex"])
                ours = recv_frame(self.socks[conn])
                assert ours is not None, f"{name} seq {entry['seq']}: server closed"
                if entry["port"] == 8087:
                    compare_api(recorded, ours)
                else:
                    rec_t, our_t = etf.decode(recorded), etf.decode(ours)
                    if rec_t[0] == Atom("vx_wal_txn"):
                        assert norm_txn(our_t) == norm_txn(rec_t), f"{name} seq {entry['seq']}"
                        self.streamed.setdefault(conn, []).append(our_t[3])
                    else:
                        assert type(our_t) is type(rec_t) and our_t[0] == rec_t[0]
                        if len(rec_t) == 3:
                            assert our_t[1] == rec_t[1]  # the request ref is echoed
                            assert our_t[2][0] == rec_t[2][0]
                        else:
                            assert our_t == rec_t  # {error, bad_proto}
                self.learn(entry, recorded, ours)
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


def replay_s1_to_s7(replayer: Replayer) -> list:
    """S1–S7 in file order (as recorded against a fresh real Vaxine); returns the offsets
    streamed from 0."""
    for name in ["s1_insert", "s2_update", "s3_delete", "s4_multi_row", "s5_static",
                 "s6_errors", "s7_replication"]:
        replayer.run(name)
    from_zero = replayer.streamed["vx_a"]
    assert len(from_zero) == 5  # S1–S5; the aborted S6 txn is never streamed
    assert len(replayer.streamed["vx_b"]) == 3  # resumed after S2: S3, S4, S5
    assert len(replayer.streamed["vx_c"]) == 1  # eof, then the live S7 txn
    assert [r for _l, r in from_zero] == sorted(r for _l, r in from_zero)
    return from_zero


def replay_s8_after_restart(replayer: Replayer, from_zero: list) -> None:
    replayer.streamed.clear()
    replayer.run("s8_restart")
    # offsets are unchanged across the restart
    assert replayer.streamed["vx_a"][:5] == from_zero
    assert len(replayer.streamed["vx_a"]) == 6
    assert len(replayer.streamed["vx_b"]) == 1  # resumed from S7's offset: only the new txn


def test_golden_transcripts_against_embedded_server(tmp_path):
    server = EmbeddedVaxine(str(tmp_path), api_port=0, replication_port=0).start()
    replayer = Replayer(server)
    try:
        from_zero = replay_s1_to_s7(replayer)
    finally:
        server.stop()
    server = EmbeddedVaxine(str(tmp_path), api_port=0, replication_port=0).start()
    try:
        replayer.server = server
        replay_s8_after_restart(replayer, from_zero)
    finally:
        server.stop()
