"""Satellite fan-out at scale: Electric's websocket server against a raw gevent-websocket
broadcaster, measured in the same run.

    .venv/bin/python -m bench.fanout_scale [--quick|--smoke] [--json FILE]

Three measurements, each with the server alone in its own process and the clients in
separate load-generator processes (``clients`` role: gevent, real sockets, every frame read):

* **ceiling ratio**: the raw server (a ``WebSocketHandler`` app that answers the Satellite
  handshake with canned frames and broadcasts one pre-encoded SatOpLog per transaction to
  every socket with ``ws.send``) and Electric (``SatelliteServer`` on the embedded store, the
  producer writing store transactions) are both driven past what they can deliver; delivered
  frames/s at the clients, Electric ÷ raw;
* **sustained**: Electric, N clients × R tx/s for D seconds: latency (receive time − commit
  timestamp, on a sample of clients), and whether every client got every transaction;
* **idle memory**: Electric's RSS growth per idle authenticated, streaming client.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time

from bench.common import emit, paced, rss_kib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {
    # (clients, rate tx/s, seconds) per measurement, load-generator processes
    "full": {"ceiling": (1000, 250, 4.0), "sustained": (1000, 100, 60.0),
             "idle": 10_000, "procs": 2},
    "quick": {"ceiling": (500, 250, 3.0), "sustained": (500, 100, 10.0),
              "idle": 2000, "procs": 2},
    "smoke": {"ceiling": (20, 50, 1.0), "sustained": (20, 20, 1.0), "idle": 50, "procs": 1},
}




def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


# ------------------------------------------------------------------------------ servers


def _oplog(n: int, ts_ms: int) -> bytes:
    from electric.pb import satellite_pb2 as pb
    from electric.satellite import frames

    lsn = b"%d" % n
    row = pb.SatOpInsert(relation_id=20000, row_data=[f"row-{n}".encode(), b"x" * 40])
    return frames.encode(pb.SatOpLog(ops=[
        pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts_ms, lsn=lsn)),
        pb.SatTransOp(insert=row),
        pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=ts_ms, lsn=lsn))]))


def serve(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.pool
    from gevent.event import Event

    _raise_nofile(args.clients + 1000)
    go = Event()
    gevent.signal_handler(signal.SIGUSR1, go.set)
    if args.mode == "raw":
        produce, port = _serve_raw()
    else:
        produce, port = _serve_electric()
    print(f"READY {port}", flush=True)

    def producer() -> None:
        go.wait()
        paced(args.rate, args.duration, produce)

    gevent.spawn(producer).join()
    gevent.sleep(3600)
    return 0


def _serve_raw():
    """The ceiling: gevent-websocket and nothing else."""
    from gevent.pywsgi import WSGIServer
    from geventwebsocket.handler import WebSocketHandler

    from electric.pb import satellite_pb2 as pb
    from electric.satellite import frames

    sockets: set = set()
    canned = [frames.encode(pb.SatAuthResp(id="raw")), frames.encode(pb.SatInStartReplicationReq()),
              frames.encode(pb.SatInStartReplicationResp())]

    def app(environ, start_response):
        ws = environ["wsgi.websocket"]
        for data in canned:
            ws.send(data, binary=True)
        sockets.add(ws)
        try:
            while ws.receive() is not None:
                pass
        finally:
            sockets.discard(ws)
        return []

    server = WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
    server.start()

    def produce(n: int) -> None:
        data = _oplog(n, int(time.time() * 1000))
        for ws in list(sockets):
            try:
                ws.send(data, binary=True)
            except Exception:  # noqa: BLE001 - a gone client is counted by the driver
                sockets.discard(ws)

    return produce, server.server_port


def _serve_electric():
    from electric.app import _satellite_stream
    from electric.changes import Column, NewRecord, Table, Transaction, utc_now
    from electric.offsets.store import OffsetStore
    from electric.satellite.auth import InsecureAuth
    from electric.satellite.server import SatelliteServer
    from electric.store.service import LocalStore

    table = Table("public", "items", 20000, (Column("id", "text"), Column("content", "text")),
                  ("id",))
    tmp = tempfile.mkdtemp(prefix="fanout-scale-")
    store = LocalStore(os.path.join(tmp, "store"), lambda relation: ["id"])
    server = SatelliteServer(
        "127.0.0.1", 0, auth=InsecureAuth(), cluster_id="bench",
        lookup_table={table.relation: table}.get, write_transaction=store.write,
        open_stream=lambda start: _satellite_stream(store, start),
        offsets=OffsetStore(os.path.join(tmp, "offsets.dat")), max_connections=100_000)
    server.start()

    def produce(n: int) -> None:
        try:
            store.write(Transaction([NewRecord(table.relation, {"id": f"row-{n}",
                                                                "content": "x" * 40})],
                                    utc_now()))
        except Exception as exc:  # noqa: BLE001 - reported by the driver
            print(f"PRODUCER-FAILED {n} {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)

    return produce, server.port


# ------------------------------------------------------------------------------ clients


def clients(args: argparse.Namespace) -> int:
    """``args.count`` clients; latency measured on every ``args.sample``-th. Prints READY
    when all stream, a JSON result when stdin closes."""
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent

    from electric.pb import satellite_pb2 as pb
    from electric.satellite import frames

    _raise_nofile(args.count + 200)
    started = [0]
    counts = [0] * args.count
    latencies: list[float] = []
    first_last = [None, None]
    failures: list[str] = []
    hello = [frames.encode(pb.SatAuthReq(id=f"c{args.first}-{i}", token="u"))
             for i in range(args.count)]
    start_req = frames.encode(pb.SatInStartReplicationReq(lsn=b"eof"))
    start_resp = frames.encode(pb.SatInStartReplicationResp())
    ping_resp = frames.encode(pb.SatPingResp())

    def send(sock, data: bytes) -> None:
        n = len(data)
        sock.sendall(bytes([0x82, 0x80 | n]) + b"\0\0\0\0" + data)  # all < 126 bytes

    def client(i: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", args.port))
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                         f"Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13"
                         f"\r\n\r\n".encode())
            rfile = sock.makefile("rb", 65536)
            while rfile.readline() not in (b"\r\n", b""):
                pass
            send(sock, hello[i])
            send(sock, start_req)
            timed = i % args.sample == 0
            read = rfile.read
            while True:
                head = read(2)
                if len(head) < 2:
                    return
                n = head[1] & 0x7F
                if n == 126:
                    n = struct.unpack(">H", read(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", read(8))[0]
                data = read(n)
                if not data or head[0] & 0x0F != 2:
                    continue
                kind = data[0]
                if kind == 11:
                    counts[i] += 1
                    now = time.time()
                    if first_last[0] is None:
                        first_last[0] = now
                    first_last[1] = now
                    if timed:
                        msg = frames.decode(data)
                        latencies.append(now * 1000 - msg.ops[0].begin.commit_timestamp)
                elif kind == 7:
                    send(sock, start_resp)
                elif kind == 8:
                    started[0] += 1
                elif kind == 5:
                    send(sock, ping_resp)
        except Exception as exc:  # noqa: BLE001 - reported in the result
            failures.append(f"{type(exc).__name__}: {exc}")

    greenlets = []
    for i in range(args.count):
        greenlets.append(gevent.spawn(client, i))
        if i % 100 == 99:
            gevent.sleep(0.02)
    deadline = time.monotonic() + 300
    while started[0] < args.count and time.monotonic() < deadline and len(failures) < 10:
        gevent.sleep(0.1)
    print(f"READY {started[0]}", flush=True)
    gevent.get_hub().threadpool.apply(sys.stdin.read)  # until the driver closes stdin
    print(json.dumps({"counts": counts, "latencies": latencies, "first_last": first_last,
                      "failures": failures[:5], "started": started[0]}), flush=True)
    os._exit(0)


# ------------------------------------------------------------------------------ driver


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def run_case(mode: str, n_clients: int, rate: float, duration: float, procs: int,
             idle_only: bool = False) -> dict:
    """One server (``mode`` raw or electric) and ``procs`` client processes."""
    _raise_nofile(n_clients + 1000)
    env = {**os.environ, "PYTHONPATH": ROOT}
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - read at the end
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.fanout_scale", "serve", "--mode", mode, "--rate",
         str(rate), "--duration", str(duration), "--clients", str(n_clients)],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env)
    loaders: list[subprocess.Popen] = []
    try:
        line = server.stdout.readline().split()
        assert line and line[0] == "READY", line
        port = int(line[1])
        time.sleep(0.5)
        rss0 = rss_kib(server.pid)
        per = [n_clients // procs + (1 if k < n_clients % procs else 0) for k in range(procs)]
        t0 = time.monotonic()
        for k, count in enumerate(per):
            loaders.append(subprocess.Popen(
                [sys.executable, "-m", "bench.fanout_scale", "clients", "--port", str(port),
                 "--count", str(count), "--first", str(k), "--sample", "10"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env))
        started = sum(int(p.stdout.readline().split()[1]) for p in loaders)
        connect_s = time.monotonic() - t0
        time.sleep(2.0)
        rss1 = rss_kib(server.pid)
        out: dict = {"mode": mode, "clients": n_clients, "clients_streaming": started,
                     "connect_seconds": round(connect_s, 1),
                     "server_rss_mb_before": round(rss0 / 1024, 1),
                     "server_rss_mb_connected": round(rss1 / 1024, 1),
                     "kib_per_idle_client": round((rss1 - rss0) / max(1, n_clients), 1)}
        if idle_only:
            return out
        server.send_signal(signal.SIGUSR1)
        expected = int(rate * duration)
        time.sleep(duration)
        deadline = time.monotonic() + max(30.0, duration)
        log.seek(0)
        while "PRODUCER-DONE" not in log.read() and time.monotonic() < deadline:
            time.sleep(0.5)
            log.seek(0)
        time.sleep(3.0)  # what is still in flight
        rss2 = rss_kib(server.pid)
        results = []
        for p in loaders:
            p.stdin.close()
            results.append(json.loads(p.stdout.readline()))
        counts = [c for r in results for c in r["counts"]]
        lat = [x for r in results for x in r["latencies"]]
        firsts = [r["first_last"][0] for r in results if r["first_last"][0]]
        lasts = [r["first_last"][1] for r in results if r["first_last"][1]]
        delivered = sum(counts)
        span = (max(lasts) - min(firsts)) if firsts else 0.0
        log.seek(0)
        producer = [line.strip() for line in log if "PRODUCER" in line]
        out.update({
            "rate_tx_per_s": rate, "duration_s": duration, "expected_per_client": expected,
            "delivered": delivered, "per_client_min_max": [min(counts), max(counts)],
            "clients_short": sum(1 for c in counts if c < expected),
            "frames_per_s": round(delivered / span) if span > 0 else None,
            "latency_ms_p50": _pct(lat, 0.5), "latency_ms_p99": _pct(lat, 0.99),
            "latency_ms_max": _pct(lat, 1.0),
            "server_rss_mb_end": round(rss2 / 1024, 1),
            "client_failures": [f for r in results for f in r["failures"]][:5],
            "producer": producer[-3:],
        })
        return out
    finally:
        for p in loaders:
            p.kill()
        server.terminate()
        server.wait()
        for p in loaders:
            p.wait()


def run(size: str) -> dict:
    s = SIZES[size]
    out: dict = {"size": size, "cpu_count": os.cpu_count()}
    n, rate, secs = s["ceiling"]
    out["raw"] = run_case("raw", n, rate, secs, s["procs"])
    out["electric_saturated"] = run_case("electric", n, rate, secs, s["procs"])
    raw_fps, el_fps = out["raw"]["frames_per_s"], out["electric_saturated"]["frames_per_s"]
    out["ceiling_ratio"] = round(el_fps / raw_fps, 2) if raw_fps and el_fps else None
    n, rate, secs = s["sustained"]
    out["sustained"] = run_case("electric", n, rate, secs, s["procs"])
    # The same offered load on the raw server, shorter: what this machine's scheduling and
    # the load generators add to latency by themselves (Electric's latency also includes
    # the store's fsync'ed commit: commit timestamps are taken before it).
    out["raw_sustained"] = run_case("raw", n, rate, min(secs, 15.0), s["procs"])
    out["idle"] = run_case("electric", s["idle"], 1, 1, max(s["procs"], s["idle"] // 2500),
                           idle_only=True)
    out["raw_idle_kib_per_client"] = out["raw"]["kib_per_idle_client"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_scale")
    parser.add_argument("role", nargs="?", default="run",
                        choices=("run", "serve", "clients", "case"))
    parser.add_argument("--mode", choices=("raw", "electric"), default="electric")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--idle", action="store_true", help="case: memory only")
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--sample", type=int, default=10)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.role == "serve":
        return serve(args)
    if args.role == "clients":
        return clients(args)
    if args.role == "case":
        result = run_case(args.mode, args.clients, args.rate, args.duration, args.procs,
                          idle_only=args.idle)
    else:
        result = run("smoke" if args.smoke else "quick" if args.quick else "full")
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
