"""``python -m bench [--quick|--smoke] [--only a,b] [--out DIR]`` — run the benchmarks.

Sections (``--only`` picks some): ``throughput``, ``latency``, ``catch_up``, ``trigger``,
``ingest``, ``big_tx``, ``scale``, ``profile``, ``whatif``, ``store``, ``vaxine_server``,
``fanout``, ``fanout_scale`` (Satellite: raw-websocket ceiling ratio, sustained 1,000 × 100
tx/s, idle memory), ``pg_fanout`` (10 Postgres subscribers: native vs Electric),
``sync_rules`` (Satellite fan-out to 1,000 clients over 100 distinct sync rules filters
beside the same fan-out without rules, and the pure filtering cost). Full size
fits in well under 15 minutes on 2 cores; ``--quick``
takes about two; ``--smoke`` is the toy size the test suite runs.

Results: ``results.json`` (raw), ``results.md`` (tables, targets) and PNG plots in ``--out``
(default ``bench/results`` for a full run, a temporary directory otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

from bench import bulk, pgpg, report, satellite_ingest
from bench.rig import Rig

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTIONS = ("throughput", "latency", "catch_up", "trigger", "ingest", "big_tx", "scale",
            "initial_sync", "profile", "whatif", "store", "vaxine_server", "fanout",
            "fanout_scale", "pg_fanout", "sync_rules")

SIZES = {
    "full": {"rows": 50_000, "rates": (50, 200, 1000), "lat_s": 8.0, "catch_rows": 1000,
             "ingest": ((1, 1000), (10, 200)), "fanout": (10, 100, 1000), "fanout_s": 5.0,
             "profile_rows": 10_000, "trigger_rows": 10_000, "stall_puts": 300,
             "big_tx_rows": 1_000_000, "scale_rows": 1_000_000, "store_s": 5.0,
             "sync_rows": 1_000_000, "vx_rows": 100_000, "pg_fanout": (50_000, 10),
             "rules": (1000, 100, 20.0, 10.0)},
    "quick": {"rows": 5_000, "rates": (50, 200, 1000), "lat_s": 2.0, "catch_rows": 1000,
              "ingest": ((1, 200), (10, 30)), "fanout": (10, 100), "fanout_s": 2.0,
              "profile_rows": 3_000, "trigger_rows": 10_000, "stall_puts": 300,
              "big_tx_rows": 100_000, "scale_rows": 100_000, "store_s": 2.0,
              "sync_rows": 100_000, "vx_rows": 30_000, "pg_fanout": (10_000, 3),
              "rules": (300, 30, 20.0, 3.0)},
    "smoke": {"rows": 200, "rates": (50,), "lat_s": 0.3, "catch_rows": 10,
              "ingest": ((1, 10),), "fanout": (3,), "fanout_s": 0.5, "profile_rows": 0,
              "trigger_rows": 100, "stall_puts": 20, "big_tx_rows": 1000, "scale_rows": 1000,
              "store_s": 0.3, "sync_rows": 1000, "vx_rows": 2_000, "pg_fanout": (1000, 2),
              "rules": (10, 2, 20.0, 0.5)},
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_fanout(clients: int, duration: float, rate: float = 20.0, mode: str = "vaxine",
               filters: int = -1) -> dict:
    """``bench/satellite_fanout.py`` in its own process (it monkey-patches with gevent)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "bench.satellite_fanout", "--clients", str(clients),
                        "--rate", str(rate), "--duration", str(duration), "--mode", mode,
                        "--filters", str(filters),
                        "--json", out.name], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=duration + 180)
        with open(out.name) as fh:
            return json.load(fh)


def run(mode: str, only: set[str], out_dir: str, fsync: bool = True) -> dict:
    size = SIZES[mode]
    started = time.monotonic()
    results: dict = {"meta": {"mode": mode, "cpus": os.cpu_count(), "fsync": fsync,
                              "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}}
    needs_rig = only & {"throughput", "latency", "catch_up", "trigger", "ingest", "profile",
                        "whatif", "big_tx", "scale", "initial_sync"}
    rig = Rig(fsync=fsync).start() if needs_rig else None
    try:
        if rig:
            log(f"rig up: A on {rig.a.port}, B on {rig.b.port}, Electric pid "
                f"{rig.electric.proc.pid}")
        if "throughput" in only:
            tp = {"rows": size["rows"], "batch": 200}
            for k, name in enumerate(("native", "electric")):
                log(f"throughput {name}: {size['rows']} rows")
                tp[name] = pgpg.throughput(rig.pipelines[name], size["rows"], batch=200,
                                           base=k * 10_000_000)
                log(f"  {json.dumps(tp[name]['total'])}; settled in "
                    f"{rig.pipelines[name].settle():.1f} s")
            results["throughput"] = tp
        if "latency" in only:
            lat = {"duration_s": size["lat_s"], "native": [], "electric": []}
            for rate in size["rates"]:
                for name in ("native", "electric"):
                    log(f"latency {name} at {rate} tx/s")
                    r = pgpg.latency(rig.pipelines[name], rate, size["lat_s"],
                                     drain=max(10.0, 4 * size["lat_s"]))
                    log(f"  {json.dumps(r)}; settled in {rig.pipelines[name].settle():.1f} s")
                    lat[name].append(r)
            results["latency"] = lat
        if "catch_up" in only:
            cu = {}
            for name in ("native", "electric"):
                log(f"catch-up {name}: 10 × {size['catch_rows']} rows")
                cu[name] = pgpg.catch_up(rig.pipelines[name], size["catch_rows"])
                log(f"  {json.dumps(cu[name])}")
            results["catch_up"] = cu
        if "trigger" in only:
            log("apply-side cost of the upsert trigger")
            results["trigger"] = pgpg.trigger_cost(rig, rows=size["trigger_rows"])
            log(f"  {json.dumps(results['trigger'])}")
        if "ingest" in only:
            results["satellite_ingest"] = []
            for clients, per_client in size["ingest"]:
                log(f"satellite ingest: {clients} client(s) × {per_client} tx")
                r = satellite_ingest.ingest(rig, clients, per_client)
                log(f"  {json.dumps(r)}")
                results["satellite_ingest"].append(r)
        if "big_tx" in only:
            big = {}
            for k, name in enumerate(("native", "electric")):
                log(f"one transaction of {size['big_tx_rows']:,} rows: {name}")
                big[name] = bulk.big_transaction(rig.pipelines[name], size["big_tx_rows"],
                                                 base=100_000_000 + k * 10_000_000)
                log(f"  {json.dumps(big[name])}; settled in {rig.pipelines[name].settle():.1f} s")
            results["big_transaction"] = big
        if "scale" in only:
            log(f"scale: {size['scale_rows']:,} rows through Electric in 1,000-row transactions")
            results["scale"] = bulk.scale(rig.pipelines["electric"], size["scale_rows"],
                                          base=200_000_000)
            log(f"  {json.dumps(results['scale'])}")
        if "initial_sync" in only:
            log(f"initial sync of a {size['sync_rows']:,}-row table: native copy_data vs "
                "Electric")
            results["initial_sync"] = bulk.initial_sync(rig, size["sync_rows"])
            log(f"  {json.dumps(results['initial_sync'])}")
        if "profile" in only and size["profile_rows"]:
            from bench import profile

            if profile.py_spy() is None:
                log("profile skipped: py-spy not installed")
            else:
                raw = os.path.join(tempfile.mkdtemp(prefix="bench-prof-"), "electric.txt")
                log(f"profile: py-spy on Electric, {size['profile_rows']} rows")
                with profile.Recorder(rig.electric.proc.pid, raw):
                    prof_tp = pgpg.throughput(rig.pipelines["electric"], size["profile_rows"],
                                              base=20_000_000)
                summary = profile.summarise(raw)
                results["profile"] = {"throughput_while_profiled": prof_tp["total"],
                                      **summary}
                results["profile_md"] = profile.to_markdown(
                    f"{size['profile_rows']:,} rows inserted, updated, deleted", summary)
        if "whatif" in only:
            # Last, since it changes B: the same workloads with a static per-table trigger.
            p = rig.pipelines["electric"]
            pgpg.use_static_upsert(p)
            p.settle()
            log(f"what-if static upsert trigger: throughput {size['rows']} rows")
            wi = {"throughput": pgpg.throughput(p, size["rows"], base=30_000_000)}
            log(f"  {json.dumps(wi['throughput']['total'])}; settled in {p.settle():.1f} s")
            wi["catch_up"] = pgpg.catch_up(p, size["catch_rows"], base=60_000_000)
            log(f"  catch-up {json.dumps(wi['catch_up'])}")
            results["whatif_static_trigger"] = wi
    finally:
        if rig:
            rig.close()
    if "profile" in only:
        log("hub stall of offset-file fsyncs")
        proc = subprocess.run([sys.executable, "-m", "bench.hub_stall", str(size["stall_puts"])],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, check=True,
                              capture_output=True, text=True, timeout=120)
        results["hub_stall"] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  {json.dumps(results['hub_stall'])}")
    if "store" in only:
        log("embedded store alone: ten-row transactions, 64 writers, fsync on")
        proc = subprocess.run([sys.executable, "-m", "bench.store_alone", "--seconds",
                               str(size["store_s"])], cwd=ROOT, check=True, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
        results["store_alone"] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  {json.dumps(results['store_alone'])}")
    if "vaxine_server" in only:
        log(f"electric vaxine alone: {size['vx_rows']:,} rows through the Antidote API, "
            "SQLite engine vs the first release's in-memory engine")
        rounds = "1" if mode == "smoke" else "2"
        proc = subprocess.run([sys.executable, "-m", "bench.vaxine_server", "--rows",
                               str(size["vx_rows"]), "--rounds", rounds], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "PYTHONPATH": ROOT})
        results["vaxine_server"] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  {json.dumps(results['vaxine_server'])}")
    if "fanout" in only:
        results["satellite_fanout"] = []
        for clients in size["fanout"]:
            log(f"satellite fan-out: {clients} clients")
            r = run_fanout(clients, size["fanout_s"])
            log(f"  p50 {r['latency_ms_p50']} ms p99 {r['latency_ms_p99']} ms, "
                f"{r['kb_per_client_end']} KiB/client")
            results["satellite_fanout"].append(r)
    if "fanout_scale" in only:
        log("satellite fan-out at scale: raw websocket ceiling vs Electric, sustained, idle")
        cmd = [sys.executable, "-m", "bench.fanout_scale"] + ([f"--{mode}"] if mode != "full"
                                                              else [])
        proc = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True,
                              timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
        results["fanout_scale"] = json.loads(proc.stdout)
        fs = results["fanout_scale"]
        log(f"  ceiling ratio {fs['ceiling_ratio']}, sustained p99 "
            f"{fs['sustained']['latency_ms_p99']} ms, idle "
            f"{fs['idle']['kib_per_idle_client']} KiB/client")
    if "pg_fanout" in only:
        from bench import pg_fanout

        rows, subscribers = size["pg_fanout"]
        log(f"postgres fan-out: {rows:,} rows to {subscribers} subscribers, native vs Electric")
        results["pg_fanout"] = pg_fanout.run(rows, subscribers)
        log(f"  {json.dumps({k: results['pg_fanout'][k] for k in ('ratio', 'encode')})}")
    if "sync_rules" in only:
        from bench import sync_rules as rules_bench

        clients, filters, rate, seconds = size["rules"]
        log(f"sync rules: {clients} clients over {filters} filters vs no rules, {rate:g} tx/s")
        results["sync_rules"] = rules_bench.fanout_section(run_fanout, clients, filters, rate,
                                                           seconds)
        log(f"  {json.dumps(results['sync_rules']['summary'])}")
    results["meta"]["seconds"] = time.monotonic() - started
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    written = report.plots(results, out_dir)
    with open(os.path.join(out_dir, "results.md"), "w") as fh:
        fh.write(report.markdown(results))
    log(f"wrote {out_dir}/results.md, results.json, {', '.join(written)}")
    if os.path.abspath(out_dir) == os.path.join(HERE, "results") and results["meta"]["mode"] == "full":
        report.update_readme(results, os.path.join(os.path.dirname(HERE), "README.md"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, about two minutes")
    size.add_argument("--smoke", action="store_true", help="toy sizes (the test suite's)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--out", default=None, help="results directory")
    parser.add_argument("--no-fsync", action="store_true",
                        help="run both clusters with fsync off")
    parser.add_argument("--render", metavar="DIR", default=None,
                        help="only re-render DIR/results.md and the plots from results.json")
    args = parser.parse_args(argv)
    if args.render:
        with open(os.path.join(args.render, "results.json")) as fh:
            results = json.load(fh)
        report.plots(results, args.render)
        with open(os.path.join(args.render, "results.md"), "w") as fh:
            fh.write(report.markdown(results))
        if os.path.abspath(args.render) == os.path.join(HERE, "results"):
            report.update_readme(results, os.path.join(os.path.dirname(HERE), "README.md"))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    out = args.out or (os.path.join(HERE, "results") if mode == "full"
                       else tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    run(mode, only, out, fsync=not args.no_fsync)
    return 0


if __name__ == "__main__":
    sys.exit(main())
