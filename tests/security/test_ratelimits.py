"""Rate limits on real servers: graceful refusals, shared budgets, per-address limits, frame
pacing, and buckets shared across nodes through Redis."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.helpers.client import Client
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess

LIMITS = {
    "WARMLINE_RATE_MESSAGE_PER_S": "0.01",
    "WARMLINE_RATE_MESSAGE_BURST": "3",
    "WARMLINE_RATE_TYPING_PER_S": "0.01",
    "WARMLINE_RATE_TYPING_BURST": "2",
    "WARMLINE_RATE_TENANT_MESSAGE_PER_S": "0.01",
    "WARMLINE_RATE_TENANT_MESSAGE_BURST": "5",
    "WARMLINE_RATE_FRAME_PER_S": "40",
    "WARMLINE_RATE_FRAME_BURST": "20",
    "WARMLINE_RATE_IP_POLL_PER_S": "0.01",
    "WARMLINE_RATE_IP_POLL_BURST": "3",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("ratelimits") / "warmline.db"
    with ServerProcess(db, env=LIMITS) as server:
        # One tenant per test: the tenant budget would otherwise be shared between them.
        for tenant in ("t-message", "t-typing", "t-shared", "t-lp"):
            assert server.cli("tenant", "add", tenant).returncode == 0
        yield server


def customer_messages(db: str, conversation_id: str) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT data FROM events WHERE conversation_id = ? AND kind = 'message'",
            (conversation_id,),
        ).fetchall()
    return [
        row[0] for row in rows if '"role": "customer"' in row[0] or '"role":"customer"' in row[0]
    ]


async def test_a_message_over_the_limit_gets_rate_limited_with_a_retry_after(
    server: ServerProcess,
) -> None:
    customer, welcome = await Client.customer(server.ws_url(), tenant="t-message")
    acks = [
        await customer.request({"type": "message", "id": f"m{i}", "text": "hi"}) for i in range(3)
    ]
    assert [a["type"] for a in acks] == ["ack"] * 3
    refused = await customer.request({"type": "message", "id": "m3", "text": "hi"})
    assert refused["type"] == "error" and refused["code"] == "rate_limited"
    assert refused["retry_after_s"] > 0 and refused["ref"]
    # The connection is fine, and the refused message was not stored.
    assert (await customer.request({"type": "ping"}))["type"] == "pong"
    assert len(customer_messages(server.db, welcome["conversation_id"])) == 3
    await customer.close()


async def test_typing_over_the_limit_is_dropped_silently(server: ServerProcess) -> None:
    customer, welcome = await Client.customer(server.ws_url(), tenant="t-typing")
    agent_token = server.add_agent("Typist", tenant="t-typing")
    agent, _ = await Client.agent(server.ws_url("agent"), agent_token, status="away")
    conversation_id = welcome["conversation_id"]
    await agent.request({"type": "subscribe", "conversation_id": conversation_id, "last_seq": 0})
    for i in range(6):
        await customer.send({"type": "typing", "on": bool(i % 2)})
    assert (await customer.request({"type": "ping"}))["type"] == "pong"
    assert not [f for f in customer.received if f.get("type") == "error"]
    # A stored message after the typing: once the agent has it, every relayed typing is in.
    await customer.request({"type": "message", "id": "after", "text": "are you there?"})
    await agent.recv_until(lambda f: f.get("text") == "are you there?")
    typing = [f for f in agent.received if f.get("type") == "typing"]
    assert len(typing) == 2
    for client in (customer, agent):
        await client.close()


async def test_a_tenants_budget_is_shared_by_all_its_connections(server: ServerProcess) -> None:
    first, _ = await Client.customer(server.ws_url(), tenant="t-shared")
    second, _ = await Client.customer(server.ws_url(), tenant="t-shared")
    for i in range(3):
        assert (await first.request({"type": "message", "id": f"a{i}", "text": "hi"}))[
            "type"
        ] == "ack"
    for i in range(2):
        assert (await second.request({"type": "message", "id": f"b{i}", "text": "hi"}))[
            "type"
        ] == "ack"
    # The second customer has a token of its own left, but the tenant has none.
    refused = await second.request({"type": "message", "id": "b2", "text": "hi"})
    assert refused["code"] == "rate_limited" and "busy" in refused["message"]
    # Other tenants are not affected.
    other, _ = await Client.customer(server.ws_url(), tenant="t-message")
    await other.close()
    for client in (first, second):
        await client.close()


async def test_long_polling_messages_and_polls_are_limited_with_429(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        hello = await http.post("/v1/lp/customer/send", json={"type": "hello", "tenant": "t-lp"})
        token = hello.json()[0]["token"]
        statuses = []
        for i in range(4):
            response = await http.post(
                "/v1/lp/customer/send",
                json={"type": "message", "id": f"m{i}", "text": "hi", "token": token},
            )
            statuses.append(response.status_code)
        assert statuses == [200, 200, 200, 429]
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()[0]["code"] == "rate_limited"
        assert response.json()[0]["retry_after_s"] > 0
        # Polls from one address: a burst, then 429 with a Retry-After.
        polls = [
            await http.get("/v1/lp/customer/poll", params={"token": token, "timeout": "0"})
            for _ in range(4)
        ]
        assert [p.status_code for p in polls] == [200, 200, 200, 429]
        assert "Retry-After" in polls[-1].headers


async def test_a_flooding_connection_is_paced_not_served_faster(server: ServerProcess) -> None:
    client = await Client.connect(server.ws_url())
    started = time.monotonic()
    for i in range(60):
        await client.send({"type": "ping", "ref": f"p{i}"})
    await client.recv_type("pong", ref="p59", timeout=20)
    # 20 at once, then 40 per second: the last of 60 cannot be answered before 1 s.
    assert time.monotonic() - started >= 0.95
    await client.close()


async def test_new_connections_per_address_are_limited(tmp_path: Path) -> None:
    env = {"WARMLINE_RATE_IP_CONNECT_PER_S": "0.01", "WARMLINE_RATE_IP_CONNECT_BURST": "3"}
    with ServerProcess(tmp_path / "connect.db", env=env, demo=False) as server:
        clients = [await Client.connect(server.ws_url()) for _ in range(3)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(server.ws_url())
        response = refused.value.response
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        # Long-poll hellos draw on the same budget (a new session either way).
        async with httpx.AsyncClient(base_url=server.url) as http:
            lp = await http.post("/v1/lp/customer/send", json={"type": "hello", "tenant": "x"})
        assert lp.status_code == 429
        # What is already open keeps working.
        for client in clients:
            assert (await client.request({"type": "ping"}))["type"] == "pong"
            await client.close()


async def test_buckets_are_shared_across_nodes_through_redis(tmp_path: Path) -> None:
    env = {
        "WARMLINE_RATE_TENANT_MESSAGE_PER_S": "0.01",
        "WARMLINE_RATE_TENANT_MESSAGE_BURST": "4",
    }
    with RedisServer() as redis:
        first = ServerProcess(tmp_path / "shared.db", redis_url=redis.url, env=env, node_id="a")
        second = ServerProcess(tmp_path / "shared.db", redis_url=redis.url, env=env, node_id="b")
        with first, second:
            on_a, _ = await Client.customer(first.ws_url())
            on_b, _ = await Client.customer(second.ws_url())
            for client, prefix in ((on_a, "a"), (on_b, "b")):
                for i in range(2):
                    ack = await client.request(
                        {"type": "message", "id": f"{prefix}{i}", "text": "hi"}
                    )
                    assert ack["type"] == "ack", ack
            # Four messages over two nodes used the tenant's whole budget, on both of them.
            for client in (on_a, on_b):
                refused = await client.request({"type": "message", "id": "over", "text": "hi"})
                assert refused["code"] == "rate_limited", refused
                await client.close()
