"""Satellite fan-out benchmark: N websocket clients on one Electric server, a stream of T tx/s.

    .venv/bin/python -m bench.satellite_fanout --clients 1000 --rate 100 --duration 10 \
        [--mode fake|vaxine] [--json bench/results/satellite_fanout.json]

The server (``SatelliteServer``) runs in its own process so its memory can be measured
alone: RSS before any client, after all clients are connected and streaming, and at the end.
Clients run in this process as greenlets with a minimal websocket reader (real sockets, real
frames, protobuf-decoded SatOpLogs). Latency is receive time minus the transaction's commit
timestamp (ms precision, same machine clock).

Modes:
* ``fake``: one in-process producer whose transactions every client's stream receives — it
  measures the websocket/session layer alone.
* ``vaxine``: the embedded Vaxine in the server process; the producer writes real Vaxine
  transactions through the pool, and every client has its own WAL stream connection (the
  reference architecture: one Vaxine replication connection per socket).

``--filters F`` (sync rules, docs/sync-rules.md): the table gets an ``owner_id``, transaction
n changes a row of ``user{n % F}`` (an update without old row, as the store's log has them),
and client i authenticates as ``user{i % F}`` under ``owner_id = claims.sub``: F distinct
filters, each client receiving its own rows, key-only deletes of the others'.
``--filters 0`` is the same table and changes without rules: the anchor.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench.common import emit, paced, rss_kib

# ------------------------------------------------------------------------------ server side


def serve(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.pool
    from gevent.event import Event

    from electric.changes import Column, NewRecord, Table, Transaction, UpdatedRecord, utc_now
    from electric.offsets.store import OffsetStore
    from electric.satellite.auth import InsecureAuth
    from electric.satellite.server import SatelliteServer

    owned = args.filters >= 0
    columns = (Column("id", "text"), Column("content", "text"))
    if owned:
        columns += (Column("owner_id", "text"),)
    table = Table("public", "items", 20000, columns, ("id",))
    tables = {table.relation: table}
    rules = None
    if args.filters > 0:
        from electric.sync_rules import parse

        rules = parse('[claims]\nsub = "string"\n\n[tables.items]\n'
                      'rows = "owner_id = claims.sub"\n', "bench-rules.toml")
    tmp = tempfile.mkdtemp(prefix="sat-bench-")
    offsets = OffsetStore(os.path.join(tmp, "offsets.dat"))

    def make_tx(n: int) -> Transaction:
        if owned:
            row = {"id": f"row-{n}", "content": "x" * 40,
                   "owner_id": f"user{n % max(1, args.filters)}"}
            return Transaction([UpdatedRecord(table.relation, row)], utc_now(), origin="bench")
        return Transaction(
            [NewRecord(table.relation, {"id": f"row-{n}", "content": "x" * 40})],
            utc_now(),
            origin="bench",
        )

    if args.mode == "fake":
        log: list = []
        state = {"event": Event()}

        def open_stream(start):
            pos = len(log) if start == "eof" else 0

            def gen():
                nonlocal pos
                while True:
                    while pos < len(log):
                        pos += 1
                        yield log[pos - 1]
                    state["event"].wait()

            return gen()

        def produce(n: int) -> None:
            log.append((make_tx(n), (n, n)))
            event, state["event"] = state["event"], Event()
            event.set()
    else:
        from electric.vaxine import rows
        from electric.vaxine.embedded.server import EmbeddedVaxine
        from electric.vaxine.memo import EncodingMemo
        from electric.vaxine.pool import VaxinePool
        from electric.vaxine.stream import WalStream

        memo = EncodingMemo()  # server and streams share this process
        vaxine = EmbeddedVaxine(os.path.join(tmp, "vaxine"), api_port=0, replication_port=0,
                                memo=memo)
        vaxine.start()
        pool = VaxinePool("127.0.0.1", vaxine.api_port, size=4)

        def open_stream(start):
            return WalStream("127.0.0.1", vaxine.replication_port, start, memo=memo)

        def produce(n: int) -> None:
            rows.write_transaction(pool, make_tx(n), lambda rel: ["id"])

    server = SatelliteServer(
        "127.0.0.1",
        0,
        auth=InsecureAuth(),
        cluster_id="bench",
        lookup_table=tables.get,
        write_transaction=lambda tx: None,
        open_stream=open_stream,
        offsets=offsets,
        sync_rules=(lambda: rules) if rules is not None else None,
    )
    server.start()
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()

        def dump():
            profiler.disable()
            profiler.dump_stats(os.environ["BENCH_PROFILE"])
            os._exit(0)

        gevent.signal_handler(signal.SIGTERM, dump)
    else:
        from electric import metrics

        def report_encodings():
            # How many SatOpLogs were serialised vs reused (one per transaction per filter).
            print(f"ENCODINGS {metrics.ENCODED['satellite']} {metrics.REUSED['satellite']}",
                  file=sys.stderr, flush=True)
            os._exit(0)

        gevent.signal_handler(signal.SIGTERM, report_encodings)
    print(f"READY {server.port}", flush=True)

    go = Event()
    gevent.signal_handler(signal.SIGUSR1, go.set)

    def one(n: int) -> None:
        try:
            produce(n)
        except Exception as exc:  # reported by the driver, the run goes on
            print(f"PRODUCER-FAILED {n} {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)

    def producer():
        go.wait()  # the driver sends SIGUSR1 once every client is streaming
        paced(args.rate, args.duration, one)

    gevent.spawn(producer).join()
    gevent.sleep(3600)
    return 0


# ------------------------------------------------------------------------------ client side


def run(args: argparse.Namespace) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import socket
    import struct

    import gevent

    from electric.pb import satellite_pb2 as pb
    from electric.satellite import frames

    server_log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives for the whole run
        mode="w+", prefix="sat-bench-server-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.satellite_fanout",
            "serve",
            "--mode",
            args.mode,
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--filters",
            str(args.filters),
        ],
        stdout=subprocess.PIPE,
        text=True,
        stderr=None if args.verbose else server_log,
    )
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", line
    port = int(line[1])
    gevent.sleep(0.5)
    rss0 = rss_kib(proc.pid)

    latencies: list[float] = []
    received = [0]
    per_client = [0] * args.clients
    own_rows = [0] * args.clients  # rows in the client's scope it received (update ops)
    ready = [0]
    failures: list[str] = []

    def send(sock, data: bytes) -> None:
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x82]) + (
            bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        sock.sendall(head + mask + masked)

    def client(i: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            rfile = sock.makefile("rb")
            while rfile.readline() not in (b"\r\n", b""):
                pass
            token = "u"
            if args.filters > 0:
                from electric.satellite.auth import InsecureAuth

                user = f"user{i % args.filters}"
                token = InsecureAuth().mint(user, claims={"sub": user})[0]
            send(sock, frames.encode(pb.SatAuthReq(id=f"bench-{i}", token=token)))
            send(sock, frames.encode(pb.SatInStartReplicationReq(lsn=b"eof")))
            counted = False
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
                if kind == 7:  # server start request: answer it
                    send(sock, frames.encode(pb.SatInStartReplicationResp()))
                elif kind == 8 and not counted:
                    counted = True
                    ready[0] += 1
                elif kind == 5:
                    send(sock, frames.encode(pb.SatPingResp()))
                elif kind == 11:
                    now_ms = time.time() * 1000
                    msg = frames.decode(data)
                    latencies.append(now_ms - msg.ops[0].begin.commit_timestamp)
                    received[0] += 1
                    per_client[i] += 1
                    own_rows[i] += sum(1 for op in msg.ops if op.HasField("update"))
                    if i == 0 and os.environ.get("BENCH_TRACE"):
                        op = msg.ops[1]
                        row = getattr(op, op.WhichOneof("op"))
                        print("TRACE", row.row_data[0].decode(), file=sys.stderr)
        except Exception as exc:  # reported, not fatal for the others
            failures.append(f"{type(exc).__name__}: {exc}")

    t0 = time.monotonic()
    greenlets = []
    for i in range(args.clients):
        greenlets.append(gevent.spawn(client, i))
        if i % 50 == 49:
            gevent.sleep(0.05)
    while ready[0] < args.clients and time.monotonic() - t0 < 120:
        gevent.sleep(0.1)
    connect_s = time.monotonic() - t0
    gevent.sleep(1.0)
    rss1 = rss_kib(proc.pid)
    proc.send_signal(signal.SIGUSR1)
    expected = int(args.rate * args.duration) * args.clients
    deadline = time.monotonic() + args.duration + 90
    while received[0] < expected and time.monotonic() < deadline:
        gevent.sleep(0.2)
    rss2 = rss_kib(proc.pid)
    proc.terminate()
    proc.wait()
    gevent.killall(greenlets, block=False)
    latencies.sort()
    server_log.seek(0)
    producer_failures, producer_elapsed = [], None
    encoded = reused = None
    for line in server_log:
        if line.startswith("ENCODINGS"):
            encoded, reused = (int(v) for v in line.split()[1:3])
        elif "PRODUCER-FAILED" in line:
            producer_failures.append(line.strip())
        elif line.startswith("PRODUCER-DONE"):
            producer_elapsed = float(line.split()[1])
    server_log.close()
    os.unlink(server_log.name)

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    return {
        "mode": args.mode,
        "clients": args.clients,
        "clients_streaming": ready[0],
        "rate_tx_per_s": args.rate,
        "duration_s": args.duration,
        "connect_seconds": round(connect_s, 2),
        "expected_deliveries": expected,
        "delivered": received[0],
        "per_client_min_max": [min(per_client), max(per_client)],
        "filters": args.filters,
        "encodings": encoded,
        "encodings_reused": reused,
        "own_rows_per_client_min_max": [min(own_rows), max(own_rows)],
        "latency_ms_p50": pct(0.50),
        "latency_ms_p99": pct(0.99),
        "latency_ms_max": round(latencies[-1], 1) if latencies else None,
        "server_rss_mb_idle": round(rss0 / 1024, 1),
        "server_rss_mb_connected": round(rss1 / 1024, 1),
        "server_rss_mb_end": round(rss2 / 1024, 1),
        "kb_per_client_connected": round((rss1 - rss0) / max(1, args.clients), 1),
        "kb_per_client_end": round((rss2 - rss0) / max(1, args.clients), 1),
        "client_failures": failures[:5],
        "producer_failures": producer_failures[:5],
        "producer_elapsed_s": producer_elapsed,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.satellite_fanout")
    parser.add_argument("role", nargs="?", default="run", choices=("run", "serve"))
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--mode", choices=("fake", "vaxine"), default="fake")
    parser.add_argument("--filters", type=int, default=-1,
                        help="sync rules with this many distinct filters (0: none, same rows)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "serve":
        return serve(args)
    result = run(args)
    return emit(result, args.json, indent=2)


if __name__ == "__main__":
    sys.exit(main())
