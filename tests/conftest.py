"""Shared fixtures: real PostgreSQL clusters and Electric as a subprocess."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import settings as hypothesis_settings

from electric.devenv import PgCluster, new_cluster
from tests.support.electric import ElectricProcess

# CI runs must be reproducible: the same examples every run. Locally hypothesis explores.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def pg_factory():
    """``pg_factory(name)`` → a started, throwaway PgCluster (wal_level=logical, free port).

    Clusters live for the whole test session and are destroyed at its end; tests that need a
    clean database should create their own objects (tables, slots) with unique names, or ask
    for a fresh cluster with a new name.
    """
    clusters: dict[str, PgCluster] = {}

    def make(name: str = "pg", **kwargs) -> PgCluster:
        if name not in clusters:
            clusters[name] = new_cluster(name, fsync=False, **kwargs)
        return clusters[name]

    yield make
    for cluster in clusters.values():
        cluster.destroy()


@pytest.fixture
def electric_factory(tmp_path):
    """``electric_factory(env={...})`` → a started ElectricProcess; stopped after the test."""
    started: list[ElectricProcess] = []

    def make(env: dict[str, str] | None = None, args: list[str] | None = None,
             wait: bool = True, workdir: str | None = None) -> ElectricProcess:
        process = ElectricProcess(workdir or str(tmp_path / f"electric{len(started)}"),
                                  env=dict(env or {}), args=list(args or []))
        started.append(process)
        return process.start(wait=wait)

    yield make
    for process in started:
        process.kill()


@pytest.fixture
def scratch_dir():
    path = tempfile.mkdtemp(prefix="electric-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
