"""Re-checking the rules when the replicated tables change (electric/sync_rules/watch.py)."""

import gevent
from loguru import logger

from electric.changes import Column, Table
from electric.schema import SchemaRegistry
from electric.sync_rules import parse
from electric.sync_rules.watch import RulesWatch
from tests.support.waiting import wait_until

RULES = parse('[claims]\nsub = "string"\n\n[tables.items]\nrows = "owner_id = claims.sub"\n',
              "rules.toml")
WITH_OWNER = Table("public", "items", 0, (Column("id", "text"), Column("owner_id", "text")),
                   ("id",))
WITHOUT_OWNER = Table("public", "items", 0, (Column("id", "text"),), ("id",))


def test_a_migration_dropping_a_rule_column_is_one_error_and_clears_when_fixed():
    registry = SchemaRegistry()
    registry.put_tables("pub", [WITH_OWNER])
    checked = []
    lines = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])),
                      level="INFO")
    watch = RulesWatch(RULES, registry, checked.append)
    runner = gevent.spawn(watch.run)
    try:
        wait_until(lambda: checked, what="the first re-check")
        registry.put_tables("pub", [WITHOUT_OWNER])
        wait_until(lambda: watch.problem, what="the problem seen")
        assert "no column 'owner_id'" in watch.problem and "rules.toml" in watch.problem
        before = watch.checks
        registry.put_tables("pub", [WITHOUT_OWNER])  # the same problem again: no new line
        wait_until(lambda: watch.checks > before, what="the re-check of the same problem")
        registry.put_tables("pub", [WITH_OWNER])
        wait_until(lambda: watch.problem is None, what="the problem cleared")
        assert watch.status() == {"file": "rules.toml", "problem": None}
    finally:
        runner.kill()
        logger.remove(sink)
    errors = [m for level, m in lines if level == "ERROR"]
    assert len(errors) == 1 and "no longer fits" in errors[0], lines
    assert any("fit the replicated tables again" in m for level, m in lines if level == "INFO")
    assert len(checked) >= 2  # rules re-bound after each fitting change
