from collections.abc import Iterator

import pytest

from tests.consul_double import ConsulDouble
from tests.registries import consul_address_from_env


@pytest.fixture(scope="module")
def consul() -> Iterator[str]:
    """A real Consul agent when CONSUL_HTTP_ADDR names one, else the suite's API double."""
    real = consul_address_from_env()
    if real:
        yield real
        return
    double = ConsulDouble().start()
    yield double.address
    double.stop()
