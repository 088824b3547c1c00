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
