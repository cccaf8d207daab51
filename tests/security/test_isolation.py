"""Tenant isolation on a real server: tenant A ("demo") tries every path into tenant B ("b")
and gets `forbidden` or `not_found`; nothing of B shows up in anything A receives, and nothing
of B's changes. (Knowledge isolation is the retrieval suite's, property-based.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess
from tests.security.support import snapshot

SECRET = "b-secret-7f3a9c"  # text only B's customers write


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("isolation") / "warmline.db"
    with ServerProcess(db) as server:
        assert server.cli("tenant", "add", "b").returncode == 0
        yield server


@dataclass
class TenantB:
    agent_id: str
    agent_token: str
    supervisor_token: str
    assigned: str  # a conversation of B owned by B's agent
    queued: str  # a conversation of B still in the queue
    customer_token: str

    def markers(self) -> list[str]:
        return [self.agent_id, self.assigned, self.queued, self.customer_token, SECRET, "Bea"]


async def queued_customer(server: ServerProcess, tenant: str, text: str) -> tuple[Client, dict]:
    customer, welcome = await Client.customer(server.ws_url(), tenant=tenant)
    await customer.request({"type": "message", "id": "m1", "text": text})
    # The bot's turn first: a request_human racing it can get `conflict` (reported).
    await customer.recv_until(lambda f: f.get("kind") == "message" and f["author"]["role"] == "bot")
    assert (await customer.request({"type": "request_human"}))["type"] == "ack"
    await customer.recv_until(lambda f: f.get("kind") == "state" and f.get("to") == "queued")
    return customer, welcome


async def _populate_b(server: ServerProcess) -> TenantB:
    agent_token = server.add_agent("Bea", tenant="b")
    supervisor_token = server.add_agent("Boss B", tenant="b", role="supervisor")
    first, assigned = await queued_customer(server, "b", f"{SECRET} first")
    second, queued = await queued_customer(server, "b", f"{SECRET} second")
    agent, welcome = await Client.agent(
        server.ws_url("agent"), agent_token, status="online", capacity=1
    )
    got = await agent.recv_type("assigned", conversation_id=assigned["conversation_id"])
    assert got["context"]["transcript"]
    # Closed again: B's conversation stays its agent's for the grace period (30 s).
    for client in (first, second, agent):
        await client.close()
    return TenantB(
        welcome["agent"]["id"],
        agent_token,
        supervisor_token,
        assigned["conversation_id"],
        queued["conversation_id"],
        assigned["token"],
    )


@pytest.fixture(scope="module")
def tenant_b(server: ServerProcess) -> TenantB:
    """B with two conversations: one its agent owns, one still queued."""
    return asyncio.run(_populate_b(server))


def b_rows(db: str, b: TenantB) -> dict[str, list[tuple[Any, ...]]]:
    """Everything stored about B (read-only)."""
    rows = snapshot(db)
    ids = {b.assigned, b.queued}
    return {
        "conversations": [r for r in rows["conversations"] if r[0] == "b"],
        "events": [r for r in rows["events"] if r[0] in ids],
        "agents": [r for r in rows["agents"] if r[0] == "b"],
    }


def assert_nothing_of_b(frames: list[dict], b: TenantB) -> None:
    text = json.dumps(frames)
    for marker in b.markers():
        assert marker not in text, f"{marker!r} leaked to tenant A"


async def test_an_agent_of_a_cannot_touch_bs_conversations(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    before = b_rows(server.db, tenant_b)
    agent, welcome = await Client.agent(server.ws_url("agent"), server.agent_token, status="away")
    assert tenant_b.agent_id not in json.dumps(welcome["agents"])
    for conversation_id in (tenant_b.assigned, tenant_b.queued):
        for frame in [
            {"type": "claim", "conversation_id": conversation_id},
            {"type": "subscribe", "conversation_id": conversation_id, "last_seq": 0},
            {"type": "message", "conversation_id": conversation_id, "id": "x", "text": "hi"},
            {"type": "typing", "conversation_id": conversation_id, "on": True},
            {"type": "resolve", "conversation_id": conversation_id},
            {"type": "requeue", "conversation_id": conversation_id, "reason": "mine now"},
            {"type": "transfer", "conversation_id": conversation_id, "to_agent_id": "a_x"},
            {
                "type": "transfer",
                "conversation_id": conversation_id,
                "to_agent_id": welcome["agent"]["id"],
            },
        ]:
            reply = await agent.request(frame)
            assert reply["type"] == "error", (frame, reply)
            assert reply["code"] in ("not_found", "forbidden"), (frame, reply)
    assert (await agent.request({"type": "ping"}))["type"] == "pong"
    assert_nothing_of_b(agent.received, tenant_b)
    assert b_rows(server.db, tenant_b) == before
    await agent.close()


async def test_no_transfer_to_an_agent_of_another_tenant(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    customer, welcome = await queued_customer(server, "demo", "Where is my parcel?")
    agent, _ = await Client.agent(server.ws_url("agent"), server.agent_token, status="away")
    conversation_id = welcome["conversation_id"]
    claimed = await agent.request({"type": "claim", "conversation_id": conversation_id})
    assert claimed["type"] == "ack", claimed
    reply = await agent.request(
        {"type": "transfer", "conversation_id": conversation_id, "to_agent_id": tenant_b.agent_id}
    )
    assert reply["code"] == "not_found"
    # Still A's: the agent of A can go on writing in it.
    ok = await agent.request(
        {"type": "message", "conversation_id": conversation_id, "id": "a1", "text": "Still me"}
    )
    assert ok["type"] == "ack"
    assert_nothing_of_b(agent.received + customer.received, tenant_b)
    await agent.close()
    await customer.close()


async def test_an_agent_of_b_cannot_transfer_to_an_agent_of_a(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    a_agent, a_welcome = await Client.agent(
        server.ws_url("agent"), server.agent_token, status="away"
    )
    await a_agent.close()
    b_agent, _ = await Client.agent(server.ws_url("agent"), tenant_b.agent_token, status="away")
    reply = await b_agent.request(
        {
            "type": "transfer",
            "conversation_id": tenant_b.assigned,
            "to_agent_id": a_welcome["agent"]["id"],
        }
    )
    assert reply["code"] == "not_found"
    await b_agent.close()


async def test_agent_hello_naming_another_tenant_is_forbidden(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    for endpoint, token in (("agent", server.agent_token), ("supervisor", server.supervisor_token)):
        client = await Client.connect(server.ws_url(endpoint))
        error = await client.request({"type": "hello", "token": token, "tenant": "b"})
        assert error["code"] == "forbidden"
        assert await client.wait_closed() == 1008


async def test_a_customer_token_of_one_tenant_does_not_open_the_other(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    customer, a = await Client.customer(server.ws_url(), tenant="demo")
    await customer.close()
    for tenant, token in (("b", a["token"]), ("demo", tenant_b.customer_token)):
        client = await Client.connect(server.ws_url())
        error = await client.request({"type": "hello", "tenant": tenant, "token": token})
        assert error["code"] == "forbidden"
        assert await client.wait_closed() == 1008
        assert_nothing_of_b(client.received, tenant_b)


async def test_long_polling_with_as_token_reaches_nothing_of_b(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    send, poll = server.url + "/v1/lp/customer/send", server.url + "/v1/lp/customer/poll"
    async with httpx.AsyncClient(timeout=10) as http:
        hello = await http.post(send, json={"type": "hello", "tenant": "demo"})
        token = hello.json()[0]["token"]
        responses = [
            await http.post(send, json={"type": "hello", "tenant": "b", "token": token}),
            await http.post(
                send, json={"type": "hello", "tenant": "demo", "token": tenant_b.customer_token}
            ),
        ]
        assert [r.status_code for r in responses] == [403, 403]
        assert all(r.json()[0]["code"] == "forbidden" for r in responses)
        # The token names A's conversation; nothing in the request can point it elsewhere.
        polled = await http.get(
            poll,
            params={"token": token, "after": "0", "timeout": "0", "tenant": "b"},
            headers={"X-Tenant": "b"},
        )
        assert polled.status_code == 200
        sent = await http.post(
            send,
            json={"type": "message", "id": "m1", "text": "hi", "token": token, "tenant": "b"},
        )
        assert sent.status_code == 200 and sent.json()[0]["type"] == "ack"
        polled = await http.get(poll, params={"token": token, "after": "0", "timeout": "0"})
        frames = polled.json()["frames"]
        assert {f["conversation_id"] for f in frames if f.get("type") == "event"} == {
            hello.json()[0]["conversation_id"]
        }
    text = json.dumps([r.json() for r in responses]) + json.dumps(frames)
    for marker in tenant_b.markers():
        assert marker not in text


async def test_a_supervisor_of_a_sees_only_as_stats(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    def api(token: str, tenant: str | None) -> httpx.Response:
        params = {"tenant": tenant} if tenant else {}
        return server.get(
            "/v1/api/stats", params=params, headers={"Authorization": f"Bearer {token}"}
        )

    refused = api(server.supervisor_token, "b")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    own = api(server.supervisor_token, None)
    assert own.status_code == 200 and own.json()["tenant"] == "demo"
    theirs = api(tenant_b.supervisor_token, None)
    assert theirs.status_code == 200 and theirs.json()["tenant"] == "b"
    assert theirs.json()["queue_depth"] >= 1  # the check below is not vacuous
    assert api(tenant_b.supervisor_token, "demo").status_code == 403

    watcher, _ = await Client.agent(server.ws_url("supervisor"), server.supervisor_token)
    frame = await watcher.recv_type("stats")
    assert frame["tenant"] == "demo"
    assert_nothing_of_b([*watcher.received, own.json()], tenant_b)
    await watcher.close()


async def test_nothing_of_b_reaches_a_while_b_is_busy(
    server: ServerProcess, tenant_b: TenantB
) -> None:
    """A's agent, supervisor and customer stay connected while B's conversations move."""
    a_agent, _ = await Client.agent(server.ws_url("agent"), server.agent_token, status="away")
    a_watcher, _ = await Client.agent(server.ws_url("supervisor"), server.supervisor_token)
    a_customer, _ = await Client.customer(server.ws_url(), tenant="demo")
    await a_watcher.recv_type("stats")

    b_customer, b_welcome = await queued_customer(server, "b", f"{SECRET} third")
    b_agent, _ = await Client.agent(server.ws_url("agent"), tenant_b.agent_token, status="away")
    claimed = await b_agent.request({"type": "claim", "conversation_id": tenant_b.queued})
    assert claimed["type"] == "ack", claimed
    sent = await b_agent.request(
        {"type": "message", "conversation_id": tenant_b.queued, "id": "b1", "text": SECRET}
    )
    assert sent["type"] == "ack", sent
    await b_agent.send({"type": "typing", "conversation_id": tenant_b.queued, "on": True})
    assert (await b_agent.request({"type": "resolve", "conversation_id": tenant_b.queued}))[
        "type"
    ] == "ack"
    # B's own queue frame shows B's movement (so A really was listening while it happened).
    await b_agent.recv_until(
        lambda f: (
            f.get("type") == "queue"
            and any(i["conversation_id"] == b_welcome["conversation_id"] for i in f["items"])
        )
    )
    # A's connections answer a ping after all of that: whatever was for them has arrived.
    for client in (a_agent, a_watcher, a_customer):
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    markers = [*tenant_b.markers(), b_welcome["conversation_id"]]
    text = json.dumps(a_agent.received + a_watcher.received + a_customer.received)
    for marker in markers:
        assert marker not in text
    for client in (a_agent, a_watcher, a_customer, b_customer, b_agent):
        await client.close()
