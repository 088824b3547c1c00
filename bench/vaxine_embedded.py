"""Benchmark of the embedded Vaxine: ``python -m bench.vaxine_embedded [--standalone]``.

Measures committed 10-row transactions per second through the pool and row mapping, from
one writer and from 8 concurrent writers, and the delivery latency of commits to 10
concurrent WAL stream readers (from the commit acknowledgement to the reader's
``get()``; p50/p99). By default the server runs in this process, as it does inside
Electric; ``--standalone`` runs it as a separate process (``electric vaxine`` mode).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

import gevent  # noqa: E402
from loguru import logger  # noqa: E402

from electric.changes import NewRecord, Transaction  # noqa: E402
from electric.vaxine import rows  # noqa: E402
from electric.vaxine.embedded.server import EmbeddedVaxine  # noqa: E402
from electric.vaxine.memo import EncodingMemo  # noqa: E402
from electric.vaxine.pool import VaxinePool  # noqa: E402
from electric.vaxine.stream import WalStream  # noqa: E402


def _tx(tag: str, n_rows: int = 10) -> Transaction:
    changes = [NewRecord(("public", "bench"), {"id": f"{tag}-{r}", "a": "x" * 20, "b": None,
                                               "c": "some text value"}) for r in range(n_rows)]
    return Transaction(changes, datetime.now(UTC), origin=tag, publication="bench")


def _pk(_rel):
    return ["id"]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def commits_per_second(pool: VaxinePool, writers: int, seconds: float) -> tuple[float, float]:
    """(committed transactions/s, CPU ms of this process per transaction)."""
    done = [0]
    stop = time.monotonic() + seconds

    def writer(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            rows.write_transaction(pool, _tx(f"w{w}-{i}"), _pk)
            i += 1
            done[0] += 1

    start, cpu = time.monotonic(), _cpu_s()
    gevent.joinall([gevent.spawn(writer, w) for w in range(writers)], raise_error=True)
    return done[0] / (time.monotonic() - start), (_cpu_s() - cpu) * 1000 / max(done[0], 1)


def delivery_latency(pool: VaxinePool, port: int, readers: int, writers: int, count: int,
                     rate: float | None = None, memo: EncodingMemo | None = None):
    """p50/p99 ms from commit acknowledgement to ``get()`` in each of ``readers`` streams;
    ``rate`` paces each writer (transactions/s), ``None`` = as fast as possible."""
    acked: dict[str, float] = {}
    latencies: list[float] = []
    streams = [WalStream("127.0.0.1", port, "eof", buffer_size=1000, memo=memo)
               for _ in range(readers)]
    gevent.sleep(0.3)  # let every stream start

    def reader(stream: WalStream) -> None:
        for _ in range(count):
            tx, _off = stream.get(timeout=30)
            now = time.monotonic()
            latencies.append(now - acked.get(tx.changes[0].record["id"].rsplit("-", 1)[0], now))

    def writer(w: int) -> None:
        start = time.monotonic()
        for i in range(count // writers):
            if rate:
                gevent.sleep(max(0.0, start + i / rate - time.monotonic()))
            tag = f"lat{w}-{i}"
            rows.write_transaction(pool, _tx(tag), _pk)
            acked[tag] = time.monotonic()

    greenlets = [gevent.spawn(reader, s) for s in streams]
    gevent.joinall([gevent.spawn(writer, w) for w in range(writers)], raise_error=True)
    gevent.joinall(greenlets, raise_error=True)
    for s in streams:
        s.close()
    latencies.sort()
    return (statistics.median(latencies) * 1000,
            latencies[int(len(latencies) * 0.99) - 1] * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--standalone", action="store_true")
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory() as data_dir:
        proc = memo = None
        if args.standalone:
            api, repl = 18987, 18988
            proc = subprocess.Popen([sys.executable, "-m", "electric.vaxine.embedded",
                                     "--data-dir", data_dir, "--api-port", str(api),
                                     "--replication-port", str(repl)])
            time.sleep(2)
        else:
            memo = EncodingMemo()  # server and streams share this process
            server = EmbeddedVaxine(data_dir, api_port=0, replication_port=0, memo=memo).start()
            api, repl = server.api_port, server.replication_port
        pool = VaxinePool("127.0.0.1", api, size=10)
        try:
            where = "client only" if args.standalone else "client + server"
            for writers in (1, 8):
                rate, cpu_ms = commits_per_second(pool, writers, args.seconds)
                print(f"{writers} writer(s): {rate:6.0f} committed 10-row transactions/s "
                      f"({cpu_ms:.2f} ms CPU per transaction, {where})")
            for writers, rate in ((1, 20), (1, 50), (1, None), (8, None)):
                p50, p99 = delivery_latency(pool, repl, readers=10, writers=writers,
                                            count=400, rate=rate, memo=memo)
                pace = f"{rate} tx/s" if rate else "full speed"
                print(f"delivery to 10 readers, {writers} writer(s) at {pace}: "
                      f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        finally:
            pool.close()
            if proc is not None:
                proc.terminate()
                proc.wait()
            else:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
