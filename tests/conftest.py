from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.procs import RedisServer, redis_server

# No test is timed (performance is measured by bench/): hypothesis's per-example deadline
# would fail property tests whenever the 2-core machine is busy with other work.
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    with redis_server() as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` soaks run only when asked (X402_SLOW=1, `make soak`): `make test` stays short."""
    if os.environ.get("X402_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="a soak: X402_SLOW=1 (make soak) runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
