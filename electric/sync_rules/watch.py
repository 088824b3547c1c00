"""Re-checking the sync rules whenever the replicated tables change (docs/sync-rules.md §1.2).

At start-up a rules file that does not fit the tables stops Electric (exit 2). Later, a
migration may drop or retype a column a rule uses: stopping then would take replication down
for every Postgres, so the watcher says so instead, once per problem, at ERROR, keeps it for
the status, and new clients keep the rules as last checked. (Filters naming a column that is
gone match no row: clients see less, never more.) The line clears with an INFO once the
tables fit again.
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from electric.schema import SchemaRegistry
from electric.sync_rules.check import check
from electric.sync_rules.model import RulesError, RuleSet


class RulesWatch:
    """The rules as last checked, and the current problem (``None``: they fit)."""

    def __init__(self, rules: RuleSet, registry: SchemaRegistry,
                 on_checked: Callable[[RuleSet], None]) -> None:
        self.rules = rules
        self.registry = registry
        self.on_checked = on_checked
        self.problem: str | None = None
        self.checks = 0

    def recheck(self) -> None:
        self.checks += 1
        try:
            checked = check(self.rules, self.registry.tables())
        except RulesError as exc:
            if str(exc) != self.problem:
                logger.error(f"SYNC_RULES_FILE no longer fits the replicated tables: {exc}; "
                             "new Satellite clients keep the rules as last checked")
            self.problem = str(exc)
            return
        if self.problem is not None:
            logger.info(f"sync rules {self.rules.path} fit the replicated tables again")
        self.problem = None
        self.on_checked(checked)

    def run(self) -> None:
        """Re-check after every change of the registry, forever (a greenlet)."""
        changed = self.registry.next_change()
        self.recheck()  # covers a change between the start-up check and now
        while True:
            changed.wait()
            changed = self.registry.next_change()
            self.recheck()

    def status(self) -> dict:
        return {"file": self.rules.path, "problem": self.problem}
