"""The fan-out benchmarks at toy size (``make bench`` sections ``fanout_scale`` and
``pg_fanout``), so they cannot rot unnoticed. Not a performance test."""

import os

from bench.__main__ import run


def test_fanout_benchmarks_run_at_toy_size(tmp_path):
    out = str(tmp_path / "results")
    results = run("smoke", {"fanout_scale", "pg_fanout"}, out, fsync=False)
    fs = results["fanout_scale"]
    for key in ("raw", "electric_saturated", "sustained"):
        r = fs[key]
        assert r["clients_streaming"] == r["clients"] and r["client_failures"] == [], r
        assert r["frames_per_s"] and r["delivered"] > 0, r
    assert fs["sustained"]["clients_short"] == 0, fs["sustained"]
    assert fs["idle"]["clients_streaming"] == fs["idle"]["clients"]
    pf = results["pg_fanout"]
    assert pf["native"]["converged"] and pf["electric"]["converged"], pf
    assert pf["encode"]["shared_us_per_row_per_subscriber"] > 0
    with open(os.path.join(out, "results.md")) as fh:
        text = fh.read()
    assert "Satellite fan-out at scale" in text and "Postgres fan-out to" in text
