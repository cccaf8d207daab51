"""A small cluster for issue 3: several real server processes sharing one SQLite file and
one real redis-server, each test with its own (nodes are cheap to start: well under a second).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess


class Cluster:
    def __init__(self, tmp_path: Path, redis: RedisServer, env: Mapping[str, str]) -> None:
        self.db = tmp_path / "warmline.db"
        self.redis = redis
        self.env = dict(env)
        self.nodes: dict[str, ServerProcess] = {}

    def start(self, *names: str) -> None:
        # One after the other: the first start seeds the demo tenant into the shared file.
        for name in names:
            node = ServerProcess(
                self.db, redis_url=self.redis.url, node_id=f"node-{name}", env=self.env
            )
            self.nodes[name] = node
            node.start()

    async def astart(self, *names: str) -> None:
        await asyncio.to_thread(self.start, *names)

    def __getitem__(self, name: str) -> ServerProcess:
        return self.nodes[name]

    @property
    def agent_token(self) -> str:
        return next(iter(self.nodes.values())).agent_token

    @property
    def supervisor_token(self) -> str:
        return next(iter(self.nodes.values())).supervisor_token

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop(timeout=15)
            node.kill()


async def ready_status(node: ServerProcess) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(node.url + "/readyz")).status_code


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """Overridden per module for tighter timings (e.g. presence TTLs)."""
    return {}


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def cluster(
    tmp_path: Path, redis: RedisServer, cluster_env: dict[str, str]
) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, redis, cluster_env)
    try:
        await c.astart("a", "b", "c")
        yield c
    finally:
        await asyncio.to_thread(c.close)
