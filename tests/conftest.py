from __future__ import annotations

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
