import pytest

from electric.vaxine.embedded.server import EmbeddedVaxine
from electric.vaxine.pool import VaxinePool


@pytest.fixture
def vaxine(tmp_path):
    """An embedded Vaxine in this process on free loopback ports, with a temp data dir."""
    server = EmbeddedVaxine(str(tmp_path / "vaxine"), api_port=0, replication_port=0).start()
    yield server
    server.stop()


@pytest.fixture
def pool(vaxine):
    p = VaxinePool("127.0.0.1", vaxine.api_port, size=4, connect_timeout_ms=2000)
    yield p
    p.close()
