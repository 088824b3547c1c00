"""Many Satellite clients in one gevent process (a load generator, run as a subprocess so
the server under test is measured and scheduled apart from its clients).

    python -m tests.support.satellite_clients PORT CLIENTS TRANSACTIONS

Each client authenticates as ``load-<i>``, starts replication from ``eof`` and records every
frame the server sends it except pings (relations and SatOpLogs, byte for byte). Prints
``READY`` once every client's stream has started, then, once every client has received
TRANSACTIONS SatOpLogs (or after a timeout), one JSON line: per distinct stream its sha256
and how many clients received exactly it, and the SatOpLog counts (min, max).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import struct
import sys
import time

TYPE_PING_REQ = 5
TYPE_START_REQ = 7
TYPE_START_RESP = 8
TYPE_OPLOG = 11


def main(argv: list[str]) -> int:
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent

    from electric.pb import satellite_pb2 as pb
    from electric.satellite import frames

    port, clients, transactions = int(argv[0]), int(argv[1]), int(argv[2])
    timeout = float(argv[3]) if len(argv) > 3 else 120.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, clients + 100)), hard))
    started = [0]
    digests = [hashlib.sha256() for _ in range(clients)]
    oplogs = [0] * clients
    failures: list[str] = []

    def send(sock, data: bytes) -> None:
        n = len(data)
        head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126
                                else bytes([0x80 | 126]) + struct.pack(">H", n))
        sock.sendall(head + b"\0\0\0\0" + data)  # zero mask: payload unchanged

    def client(i: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
            rfile = sock.makefile("rb")
            while rfile.readline() not in (b"\r\n", b""):
                pass
            send(sock, frames.encode(pb.SatAuthReq(id=f"load-{i}", token="load")))
            send(sock, frames.encode(pb.SatInStartReplicationReq(lsn=b"eof")))
            while True:
                head = rfile.read(2)
                if len(head) < 2:
                    return
                n = head[1] & 0x7F
                if n == 126:
                    n = struct.unpack(">H", rfile.read(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", rfile.read(8))[0]
                data = rfile.read(n)
                if head[0] & 0x0F != 2 or not data:
                    continue
                kind = data[0]
                if kind == TYPE_START_REQ:
                    send(sock, frames.encode(pb.SatInStartReplicationResp()))
                elif kind == TYPE_START_RESP:
                    started[0] += 1
                elif kind == TYPE_PING_REQ:
                    send(sock, frames.encode(pb.SatPingResp()))
                else:
                    digests[i].update(struct.pack(">I", len(data)) + data)
                    if kind == TYPE_OPLOG:
                        oplogs[i] += 1
                        if oplogs[i] >= transactions:
                            return
        except Exception as exc:  # reported in the result
            failures.append(f"client {i}: {type(exc).__name__}: {exc}")

    greenlets = []
    for i in range(clients):
        greenlets.append(gevent.spawn(client, i))
        if i % 100 == 99:
            gevent.sleep(0.01)
    deadline = time.monotonic() + timeout
    while started[0] < clients and time.monotonic() < deadline and not failures:
        gevent.sleep(0.05)
    print("READY", started[0], flush=True)
    gevent.joinall(greenlets, timeout=max(0.0, deadline - time.monotonic()))
    streams: dict[str, int] = {}
    for d in digests:
        streams[d.hexdigest()] = streams.get(d.hexdigest(), 0) + 1
    print(json.dumps({"streams": streams, "oplogs": [min(oplogs), max(oplogs)],
                      "started": started[0], "failures": failures[:5]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
