"""Catch-up: 10 sysbench-like tables x 1,000 rows already in the log reach a new subscriber.

The reference's catch-up scenario with our own data; the upsert trigger fires for every row.
"""

from __future__ import annotations

import random
import time

from electric.changes import Column, NewRecord, Table

from .conftest import PUBLICATION, wait_for

TABLES = 10
ROWS = 1000
PER_TX = 100


def sbtest(i: int) -> Table:
    return Table(
        "public",
        f"sbtest{i}",
        0,
        (
            Column("id", "int4", 23, -1, False, True),
            Column("k", "int4", 23, -1, False, False),
            Column("c", "bpchar", 1042, 124, False, False),
            Column("pad", "bpchar", 1042, 64, False, False),
        ),
        ("id",),
    )


def test_catch_up_10x1000_rows(setup):
    rng = random.Random(5)
    tables = [sbtest(i) for i in range(1, TABLES + 1)]
    setup.registry.put_tables(PUBLICATION, tables)
    ddl = []
    for t in tables:
        ddl.append(
            f"DROP TABLE IF EXISTS public.{t.name};"
            f"CREATE TABLE public.{t.name} (id serial PRIMARY KEY, k int NOT NULL DEFAULT 0,"
            " c char(120) NOT NULL DEFAULT '', pad char(60) NOT NULL DEFAULT '');"
        )
    setup.sql("".join(ddl))
    for t in tables:
        for start in range(1, ROWS + 1, PER_TX):
            setup.log.append(
                *[
                    NewRecord(
                        t.relation,
                        {
                            "id": str(i),
                            "k": str(rng.randrange(ROWS)),
                            "c": "-".join(f"{rng.randrange(10**11):011d}" for _ in range(10)),
                            "pad": "-".join(f"{rng.randrange(10**11):011d}" for _ in range(5)),
                        },
                    )
                    for i in range(start, start + PER_TX)
                ]
            )

    started = time.monotonic()
    setup.subscribe(relations=[t.relation for t in tables])
    counts = "SELECT " + " + ".join(f"(SELECT count(*) FROM public.{t.name})" for t in tables)
    wait_for(lambda: setup.sql(counts)[0][0] == TABLES * ROWS, timeout=30, what="all rows")
    elapsed = time.monotonic() - started
    print(
        f"\ncatch-up of {TABLES * ROWS} rows in {TABLES * ROWS // PER_TX} transactions: "
        f"{elapsed:.2f} s"
    )
    assert elapsed < 10
    for t in tables:
        assert setup.sql(f"SELECT count(*), max(id) FROM public.{t.name}")[0] == (ROWS, ROWS)
