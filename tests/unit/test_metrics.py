from electric.metrics import StatusCollector


def test_blocked_and_retrying_sources_show_as_metrics():
    connectors = {
        "pa": {"ready": True, "reader_connected": True, "lag_bytes": 0, "reconnects": 0,
               "blocked_lsn": "0/16B3748", "sink_retrying": True},
        "pb": {"ready": True, "reader_connected": True, "lag_bytes": 0, "reconnects": 0,
               "blocked_lsn": None, "sink_retrying": False},
    }
    collector = StatusCollector(lambda: connectors, dict, lambda: {}, lambda: True)
    samples = {(s.name, s.labels.get("connector")): s.value
               for family in collector.collect() for s in family.samples}
    assert samples[("electric_source_blocked", "pa")] == 1.0
    assert samples[("electric_source_blocked", "pb")] == 0.0
    assert samples[("electric_source_write_retrying", "pa")] == 1.0
    assert samples[("electric_source_write_retrying", "pb")] == 0.0


def test_satellite_clients_and_distinct_sync_filters_show_as_metrics():
    satellite = {"clients_connected": 3, "oplog_cache": {"distinct_filters": 2}}
    collector = StatusCollector(dict, dict, lambda: satellite, lambda: True)
    samples = {s.name: s.value for family in collector.collect() for s in family.samples}
    assert samples["electric_satellite_clients"] == 3.0
    assert samples["electric_satellite_sync_filters"] == 2.0
