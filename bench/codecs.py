"""Micro-benchmark of the publisher's per-row codec work: ``python -m bench.codecs``.

* *encode*: ``SlotEncoder.encode`` of 100-row transactions plus the XLogData framing the
  publisher does for every message (what a subscriber catching up costs per row);
* *decode*: ``pgoutput_decode.decode`` of a 3-column Insert (every row Electric reads from a source
  Postgres, including the echo of what it applied there).

Best of 5, microseconds per row.
"""

from __future__ import annotations

import json
import sys
import timeit
from datetime import UTC, datetime

from electric.changes import Column, NewRecord, Table, Transaction
from electric.postgres import copyboth, pgoutput, pgoutput_decode, pgoutput_encode, pgtime
from electric.postgres.lsn import Lsn
from electric.postgres.slot import SlotEncoder

TABLE = Table("public", "t3", 16385,
              (Column("id", "int8"), Column("v", "text"), Column("n", "int4")), ("id",))


def encode_us_per_row(n_tx: int = 50, rows: int = 100) -> float:
    txs = [Transaction([NewRecord(TABLE.relation, {"id": str(k * rows + i),
                                                   "v": f"row {i} with some text", "n": "0"})
                        for i in range(rows)], datetime.now(UTC), origin="pg_a")
           for k in range(n_tx)]

    def run() -> None:
        enc = SlotEncoder(lambda _rel: TABLE, Lsn(0x1000))
        for k, tx in enumerate(txs):
            out = enc.encode(tx, b"offset-%d" % k)
            now = pgtime.pg_now_micros()
            b"".join(copyboth.xlog_data(lsn, lsn, p, now) for lsn, p in out.messages)

    return min(timeit.repeat(run, number=3, repeat=5)) / 3 / (n_tx * rows) * 1e6


def decode_us_per_row(n: int = 2000) -> float:
    msgs = [pgoutput_encode.encode(pgoutput.Insert(16385, (str(i).encode(), b"row with some text",
                                                    b"0"))) for i in range(n)]

    def run() -> None:
        for m in msgs:
            pgoutput_decode.decode(m)

    return min(timeit.repeat(run, number=10, repeat=5)) / 10 / n * 1e6


def main() -> int:
    print(json.dumps({"encode_us_per_row": round(encode_us_per_row(), 2),
                      "decode_us_per_row": round(decode_us_per_row(), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
