"""Satellite ingest: transactions/s from 1 and from N websocket clients into Postgres.

Each client authenticates, announces the ``sat_ingest`` relation and sends single-row insert
transactions, keeping up to ``window`` of them unacknowledged (a real client streams its
oplog without waiting for each ack). Two rates are reported: *acked* (the transaction is
durable in Vaxine, the server answered ``SatPingResp``) and *into Postgres* (every row is
visible in cluster A's ``bench_electric`` database through Electric's publisher).
"""

from __future__ import annotations

import threading
import time
import uuid

import websocket

from bench.rig import ELECTRIC_DB, Rig, scalar
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames

COLUMNS = (("id", "text"), ("v", "text"), ("n", "int4"))


def _client(url: str, cid: str, prefix: str, count: int, window: int, errors: list) -> None:
    try:
        ws = websocket.create_connection(url, timeout=30)
        ws.send_binary(frames.encode(pb.SatAuthReq(id=cid, token="bench")))
        relation = pb.SatRelation(
            schema_name="public", table_name="sat_ingest", relation_id=1,
            columns=[pb.SatRelationColumn(name=n, type=t) for n, t in COLUMNS])
        started = False
        sent = acked = 0
        while acked < count:
            if started and sent < count and sent - acked < window:
                i = sent
                sent += 1
                ops = [pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=int(time.time() * 1000),
                                                         lsn=str(i).encode())),
                       pb.SatTransOp(insert=pb.SatOpInsert(relation_id=1, row_data=[
                           f"{prefix}-{i}".encode(), b"from satellite", b"0"])),
                       pb.SatTransOp(commit=pb.SatOpCommit())]
                ws.send_binary(frames.encode(pb.SatOpLog(ops=ops)))
                continue
            opcode, data = ws.recv_data(control_frame=True)
            if opcode != websocket.ABNF.OPCODE_BINARY:
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise ConnectionError("server closed the socket")
                continue
            msg = frames.decode(data)
            if isinstance(msg, pb.SatInStartReplicationReq):
                ws.send_binary(frames.encode(pb.SatInStartReplicationResp()))
                ws.send_binary(frames.encode(relation))
                started = True
            elif isinstance(msg, pb.SatPingResp) and msg.lsn:
                acked += 1
            elif isinstance(msg, pb.SatPingReq):
                ws.send_binary(frames.encode(frames.ping_resp(None)))
            elif isinstance(msg, pb.SatErrorResp):
                raise RuntimeError(f"server error {msg}")
        ws.close()
    except Exception as exc:  # reported in the result
        errors.append(f"{type(exc).__name__}: {exc}")


def ingest(rig: Rig, clients: int, per_client: int, window: int = 50,
           timeout: float = 120.0) -> dict:
    url = f"ws://127.0.0.1:{rig.electric.env['WEBSOCKET_PORT']}/ws"
    prefix = uuid.uuid4().hex[:8]
    errors: list[str] = []
    start = time.monotonic()
    threads = [threading.Thread(target=_client, args=(url, f"bench-{prefix}-{c}",
                                                      f"{prefix}-{c}", per_client, window,
                                                      errors), daemon=True)
               for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    acked = time.monotonic()
    total = clients * per_client
    deadline = acked + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = int(scalar(rig.a, ELECTRIC_DB,
                          "SELECT count(*) FROM sat_ingest WHERE id LIKE %s", (prefix + "-%",)))
        if seen >= total:
            break
        time.sleep(0.05)
    done = time.monotonic()
    ok = seen >= total and not errors
    return {
        "clients": clients, "transactions": total, "window": window,
        "acked_tx_per_s": round(total / (acked - start)) if not errors else None,
        "postgres_tx_per_s": round(total / (done - start)) if ok else None,
        "seconds_to_postgres": round(done - start, 3), "seen_in_postgres": seen,
        "errors": errors[:3],
    }
