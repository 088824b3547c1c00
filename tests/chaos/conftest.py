"""Fixtures for the fault-injection runs: two Postgres clusters that survive a crash.

``pg_factory`` clusters run with ``fsync=off``; that is safe for a *process* crash (the OS
keeps the written WAL) as long as commits are written before they return, hence
``synchronous_commit=on`` here: an immediate stop must not lose a transaction the writer saw
committed.
"""

import pytest


@pytest.fixture
def chaos_pgs(pg_factory):
    conf = {"synchronous_commit": "on"}
    pgs = (pg_factory("chaos_a", extra_conf=conf), pg_factory("chaos_b", extra_conf=conf))
    for pg in pgs:  # a previous test may have left one stopped
        if not pg.is_running():
            pg.start()
    return pgs
