from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.procs import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    with redis_server() as server:
        yield server
