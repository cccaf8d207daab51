"""An agent's hello is all or nothing: when presence cannot be written (Redis frozen), the
agent gets an error and no welcome, stays unauthenticated, and a second hello succeeds."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.client import Client
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess


async def test_a_failed_hello_can_be_said_again(tmp_path: Path) -> None:
    with RedisServer() as redis, ServerProcess(tmp_path / "w.db", redis_url=redis.url) as node:
        token = node.add_agent("Robin")
        agent = await Client.connect(node.ws_url("agent"))
        try:
            redis.pause()  # SIGSTOP: presence writes time out
            try:
                refused = await agent.request({"type": "hello", "token": token}, timeout=15)
            finally:
                redis.resume()
            assert refused["type"] == "error" and refused["code"] == "internal"
            assert "presence" in refused["message"]
            # Still unauthenticated: anything but hello or ping is refused as before.
            early = await agent.request({"type": "claim", "conversation_id": "c_x"})
            assert early["type"] == "error" and early["code"] == "unauthorized"

            welcome = await agent.request({"type": "hello", "token": token}, timeout=15)
            assert welcome["type"] == "welcome" and welcome["agent"]["name"] == "Robin"
            # Exactly one welcome: the refused hello did not send one of its own.
            assert [f["type"] for f in agent.received].count("welcome") == 1
        finally:
            await agent.close()
