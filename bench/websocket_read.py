"""The Satellite websocket's read path, two source trees side by side:
``python -m bench.websocket_read OLD_TREE NEW_TREE [--rounds 3]``.

For each tree a ``SatelliteServer`` runs alone in a subprocess (fake log, no Vaxine); one
client authenticates, then (1) pipelines 20,000 ``SatPingReq`` frames and counts the
``SatPingResp`` bytes coming back (small-frame rate), and (2) sends 60 messages of 512 KiB
and a ping (big-payload rate). Trees alternate round by round; the medians and the ratio
NEW/OLD are printed (absolute numbers are noise on a shared machine, the ratio is the result).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import websocket

from electric.pb import satellite_pb2 as pb
from electric.satellite import frames

SERVER = """
import os, tempfile
import gevent
try:
    from electric.offsets.store import OffsetStore  # trees since the offsets split
except ImportError:
    from electric.offsets import OffsetStore
from electric.satellite.auth import InsecureAuth
from electric.satellite.server import SatelliteServer
tmp = tempfile.mkdtemp()
srv = SatelliteServer("127.0.0.1", 0, auth=InsecureAuth(), cluster_id="b",
                      lookup_table={}.get, write_transaction=lambda tx: None,
                      open_stream=lambda s: iter(()),
                      offsets=OffsetStore(os.path.join(tmp, "o.dat")))
srv.start()
print(srv.port, flush=True)
gevent.wait()
"""
PINGS = 20_000
BIG = 60
PING_RESP_FRAME = 5  # 2 header bytes + SatPingResp{lsn: ""} (06 0a 00)


def masked(payload: bytes, opcode: int = 2) -> bytes:
    n, key = len(payload), b"\x11\x22\x33\x44"
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    k = (key * (n // 4 + 1))[:n]
    return head + key + (int.from_bytes(payload, "big")
                         ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def _drain(sock, n: int) -> None:
    got = 0
    while got < n:
        got += len(sock.recv(1 << 20))


def one_round(tree: str) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env, cwd="/tmp",
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        port = int(proc.stdout.readline())
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=60)
        ws.send_binary(frames.encode(pb.SatAuthReq(id="bench", token="t")))
        ws.recv()
        ws.recv()
        ws.send_binary(frames.encode(pb.SatInStartReplicationResp()))
        sock = ws.sock
        ping = masked(frames.encode(pb.SatPingReq()))
        start = time.perf_counter()
        sock.sendall(ping * PINGS)
        _drain(sock, PING_RESP_FRAME * PINGS)
        pings = PINGS / (time.perf_counter() - start)
        big = masked(frames.encode(pb.SatRelation(schema_name="x" * (512 * 1024), table_name="t")))
        start = time.perf_counter()
        for _ in range(BIG):
            sock.sendall(big)
        sock.sendall(ping)
        _drain(sock, PING_RESP_FRAME)
        mib = BIG * len(big) / (1 << 20) / (time.perf_counter() - start)
        ws.close()
        return pings, mib
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        results["old"].append(one_round(args.old))
        results["new"].append(one_round(args.new))
    for i, name in enumerate(("small frames (pings/s)", "512 KiB messages (MiB/s)")):
        old = statistics.median(r[i] for r in results["old"])
        new = statistics.median(r[i] for r in results["new"])
        print(f"{name}: old {old:,.1f}  new {new:,.1f}  new/old {new / old:.2f}")


if __name__ == "__main__":
    main()
