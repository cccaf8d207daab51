"""The systems under test, each in its own process on 127.0.0.1 and a port the OS picks.

Warmline nodes and redis-server come from the test helpers (the same lifecycle the test
suite trusts: readiness read from the log, process groups killed on the way out); the
ceiling relay is started here the same way.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from warmline.store import open_store

BENCH_DIR = Path(__file__).resolve().parent.parent
RELAY_READY = re.compile(r"listening on ws://[\d.]+:(\d+)")

# Server settings for every benchmark (each one is printed with the results):
# - All load comes from one address (127.0.0.1) and one tenant (demo), so the per-address
#   connect limit and the per-tenant limits would measure the limiter, not the server: off.
#   The per-connection limits (messages, frames) stay at their defaults; the generator keeps
#   every connection under them and scales by adding conversations.
# - A conversation may sit idle between steps longer than the reply SLA; a requeue would
#   change what is measured, so the SLA is pushed out of the way.
BENCH_ENV = {
    "WARMLINE_LOG_LEVEL": "warning",
    "WARMLINE_REPLY_SLA_S": "36000",
    "WARMLINE_RATE_IP_CONNECT_PER_S": "0",
    "WARMLINE_RATE_IP_POLL_PER_S": "0",
    "WARMLINE_RATE_TENANT_MESSAGE_PER_S": "0",
    "WARMLINE_RATE_TENANT_CONVERSATION_PER_S": "0",
}


class RelayProcess:
    """bench/ceiling_relay.py in its own process."""

    def __init__(self, store: Path | None = None) -> None:
        self.store = store
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ws_url(self, role: str = "customer") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws/{role}"

    def start(self) -> RelayProcess:
        command = [sys.executable, str(BENCH_DIR / "ceiling_relay.py"), "--port", "0"]
        if self.store is not None:
            command += ["--store", str(self.store)]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30) or not self.port:
            self.stop()
            raise RuntimeError("relay did not start:\n" + "".join(self.lines[-20:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = RELAY_READY.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def server_pid(node: ServerProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


class Rig:
    """Everything one run needs, torn down in reverse on exit (also on errors)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="warmline-bench-"))
        self.env = {**BENCH_ENV, **(env or {})}
        # `--env WARMLINE_DB=postgresql://…/postgres` runs on PostgreSQL: a scratch database
        # is created on that server for the run and dropped after it.
        self.postgres_admin_url = self.env.pop("WARMLINE_DB", "")
        self.scratch_database = ""
        self.db: Path | str = self.dir / "warmline.db"
        if self.postgres_admin_url.startswith(("postgresql://", "postgres://")):
            self.scratch_database = f"warmline_bench_{secrets.token_hex(4)}"
            parts = urlsplit(self.postgres_admin_url)
            self.db = urlunsplit(parts._replace(path=f"/{self.scratch_database}"))
        self.nodes: list[ServerProcess] = []
        self.redis: RedisServer | None = None
        self.relay: RelayProcess | None = None

    async def start_redis(self) -> RedisServer:
        self.redis = RedisServer()
        await self.redis.astart()
        return self.redis

    async def _create_scratch_database(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.postgres_admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.scratch_database}"')
        finally:
            await conn.close()

    async def _drop_scratch_database(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.postgres_admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.scratch_database}" WITH (FORCE)')
        finally:
            await conn.close()

    async def start_nodes(self, count: int, redis: bool = False) -> list[ServerProcess]:
        if self.scratch_database and not self.nodes:
            await self._create_scratch_database()
        redis_url = None
        if redis:
            server = self.redis or await self.start_redis()
            redis_url = server.url
        for index in range(count):
            # One after the other: the first start seeds the demo tenant into the shared file.
            node = ServerProcess(
                self.db,
                redis_url=redis_url,
                env=self.env,
                node_id=f"bench-{index}" if redis else "",
            )
            self.nodes.append(node)
            await asyncio.to_thread(node.start)
        return self.nodes

    async def start_relay(self, store: bool = False) -> RelayProcess:
        """The ceiling relay; with `store`, committing every chat message to a SQLite file."""
        self.relay = RelayProcess(self.dir / "relay.db" if store else None)
        await asyncio.to_thread(self.relay.start)
        return self.relay

    def pids(self) -> dict[str, int]:
        pids = {f"node{i}": server_pid(n) for i, n in enumerate(self.nodes) if n.proc is not None}
        if self.relay is not None and self.relay.proc is not None:
            pids["relay"] = self.relay.pid
        if self.redis is not None and self.redis.pid is not None:
            pids["redis"] = self.redis.pid
        return pids

    async def add_agents(self, count: int, prefix: str = "bench") -> list[str]:
        """`count` new agents of the demo tenant, straight through the store; their tokens."""
        if count <= 0:
            return []
        store = open_store(str(self.db))
        await store.open()
        try:
            start = len(await store.list_agents("demo"))
            created = await asyncio.gather(
                *(store.add_agent("demo", f"{prefix}-{start + i}", "agent") for i in range(count))
            )
            return [token for _, token in created]
        finally:
            await store.close()

    async def close(self) -> None:
        for node in reversed(self.nodes):
            await asyncio.to_thread(_stop_node, node)
        if self.relay is not None:
            await asyncio.to_thread(self.relay.stop)
        if self.redis is not None:
            await asyncio.to_thread(self.redis.close)
        if self.scratch_database:
            await self._drop_scratch_database()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> Rig:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def progress(message: str) -> None:
    """Progress for the person running the benchmark (stderr; results go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def _stop_node(node: ServerProcess) -> None:
    node.stop(timeout=20)
    node.kill()
