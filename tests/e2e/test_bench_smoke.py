"""The benchmark harness at toy size, so ``make bench`` cannot rot unnoticed.

Not a performance test: it only checks that every section runs end to end (both pipelines
converge, Satellite ingest reaches Postgres) and that the report is written.
"""

import json
import os

from bench.__main__ import run


def test_bench_harness_runs_at_toy_size(tmp_path):
    out = str(tmp_path / "results")
    results = run("smoke", {"throughput", "latency", "catch_up", "trigger", "ingest", "big_tx",
                            "scale", "store", "initial_sync", "vaxine_server"}, out, fsync=False)
    for name in ("native", "electric"):
        assert results["throughput"][name]["total"]["converged"], results["throughput"][name]
        assert results["catch_up"][name]["converged"], results["catch_up"][name]
        (lat,) = results["latency"][name]
        assert lat["delivered"] == lat["transactions"] > 0, lat
    # the catch-up waited for Electric's own count of written transactions (status layout)
    assert results["catch_up"]["electric"]["source_drained_before_enable"]
    assert results["trigger"]["generic_ms"] > 0
    for name in ("native", "electric"):
        assert results["big_transaction"][name]["converged"], results["big_transaction"]
    assert results["big_transaction"]["electric"]["peak_rss_mib"] > 0
    assert results["scale"]["converged"] and results["scale"]["store_to_table"] > 0
    assert results["store_alone"]["store"]["tx_per_s"] > 0
    assert all(results["initial_sync"][n]["converged"] for n in ("native", "electric"))
    assert results["store_alone"]["wire_server"]["tx_per_s"] > 0
    assert results["vaxine_server"]["new"]["rows_per_s"] > 0
    (ingest,) = results["satellite_ingest"]
    assert ingest["errors"] == [] and ingest["postgres_tx_per_s"], ingest
    with open(os.path.join(out, "results.md")) as fh:
        text = fh.read()
    assert "## Targets" in text and "PG → PG throughput" in text
    assert "embedded store alone" in text and "data directory" in text
    assert "`electric vaxine` alone" in text
    assert os.path.exists(os.path.join(out, "throughput.png"))
    assert json.load(open(os.path.join(out, "results.json")))["meta"]["mode"] == "smoke"
