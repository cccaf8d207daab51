"""Dispatch over real sockets: backlog draining, claim races, grace period and reply SLA."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """Short grace period, reply SLA and tick, so the timers are observable in a test."""
    env = {
        "WARMLINE_AGENT_GRACE_S": "1.0",
        "WARMLINE_REPLY_SLA_S": "1.5",
        "WARMLINE_DISPATCH_TICK_S": "0.2",
    }
    with ServerProcess(tmp_path / "fast.db", env=env) as server:
        yield server


async def queued_customer(url: str) -> tuple[Client, str]:
    customer, welcome = await Client.customer(url)
    ack = await customer.request({"type": "request_human"})
    assert ack["type"] == "ack", ack
    return customer, welcome["conversation_id"]


async def test_backlog_drains_without_double_assignment(demo_server: ServerProcess) -> None:
    tokens = [demo_server.add_agent(f"Agent {i}") for i in range(3)]
    agents = [
        (await Client.agent(demo_server.ws_url("agent"), token, status="away", capacity=2))[0]
        for token in tokens
    ]
    customers = await asyncio.gather(*(queued_customer(demo_server.ws_url()) for _ in range(20)))
    ids = {conversation_id for _, conversation_id in customers}
    # Each queued customer learns their place in line.
    for customer, _ in customers:
        frame = await customer.recv_type("queue")
        assert 1 <= frame["position"] <= 20

    full = await agents[0].recv_until(
        lambda f: f.get("type") == "queue" and {i["conversation_id"] for i in f["items"]} >= ids
    )
    queue_order = [i["conversation_id"] for i in full["items"] if i["conversation_id"] in ids]
    for agent in agents:
        await agent.request({"type": "presence", "status": "online", "capacity": 2})
    owner: dict[str, int] = {}

    async def collect(index: int, agent: Client, count: int) -> None:
        for _ in range(count):
            frame = await agent.recv_type("assigned")
            assert frame["conversation_id"] not in owner, "assigned twice"
            owner[frame["conversation_id"]] = index

    await asyncio.gather(*(collect(i, a, 2) for i, a in enumerate(agents)))
    assert len(owner) == 6 and set(owner) <= ids
    # The longest-waiting were served first.
    assert set(owner) == set(queue_order[:6])

    # As agents resolve, the backlog drains to the end, never over capacity.
    served = dict(owner)
    while len(served) < 20:
        for index, agent in enumerate(agents):
            mine = [c for c, i in owner.items() if i == index]
            if not mine:
                continue
            conversation_id = mine[0]
            del owner[conversation_id]
            ack = await agent.request({"type": "resolve", "conversation_id": conversation_id})
            assert ack["type"] == "ack", ack
            if len(served) < 20:
                frame = await agent.recv_type("assigned")
                assert frame["conversation_id"] not in served, "assigned twice"
                served[frame["conversation_id"]] = index
                owner[frame["conversation_id"]] = index
            assert sum(1 for i in owner.values() if i == index) <= 2
    assert set(served) == ids
    for client in [*agents, *(c for c, _ in customers)]:
        await client.close()


async def test_two_agents_racing_one_claim(demo_server: ServerProcess) -> None:
    tokens = [demo_server.add_agent(f"Racer {i}") for i in range(2)]
    racers = [
        (await Client.agent(demo_server.ws_url("agent"), token, status="away"))[0]
        for token in tokens
    ]
    customer, conversation_id = await queued_customer(demo_server.ws_url())
    replies = await asyncio.gather(
        *(r.request({"type": "claim", "conversation_id": conversation_id}) for r in racers)
    )
    kinds = sorted(r["type"] for r in replies)
    assert kinds == ["ack", "error"], replies
    assert next(r for r in replies if r["type"] == "error")["code"] == "conflict"
    states = [
        f for f in await _events(customer, 2) if f.get("kind") == "state" and f.get("to") == "human"
    ]
    assert len(states) == 1
    for client in [*racers, customer]:
        await client.close()


async def _events(client: Client, n: int) -> list[dict]:
    while len(client.events) < n:
        await client.recv()
    return client.events


async def test_disconnected_agent_is_requeued_after_grace(fast_server: ServerProcess) -> None:
    agent, _ = await Client.agent(fast_server.ws_url("agent"), fast_server.agent_token, capacity=1)
    customer, conversation_id = await queued_customer(fast_server.ws_url())
    await agent.recv_type("assigned", conversation_id=conversation_id)
    # A short blip within the grace period changes nothing...
    await agent.request(
        {"type": "message", "conversation_id": conversation_id, "id": "hi", "text": "Hello!"}
    )
    await agent.close()
    requeued = await customer.recv_until(
        lambda f: f.get("kind") == "state" and f.get("to") == "queued" and f.get("from") == "human",
        timeout=10,
    )
    assert requeued["reason"] == "agent_disconnected"
    # ...and when the agent is back, the conversation is dispatched again.
    agent, _welcome = await Client.agent(
        fast_server.ws_url("agent"), fast_server.agent_token, capacity=1
    )
    await agent.recv_type("assigned", conversation_id=conversation_id)
    await agent.close()
    await customer.close()


async def test_silent_agent_is_passed_over_after_reply_sla(fast_server: ServerProcess) -> None:
    second = fast_server.add_agent("Backup")
    silent, _ = await Client.agent(fast_server.ws_url("agent"), fast_server.agent_token, capacity=1)
    customer, conversation_id = await queued_customer(fast_server.ws_url())
    await silent.recv_type("assigned", conversation_id=conversation_id)
    backup, _ = await Client.agent(fast_server.ws_url("agent"), second, capacity=1)
    # The silent agent never answers: after the SLA the conversation goes to the other agent.
    requeued = await customer.recv_until(
        lambda f: f.get("kind") == "state" and f.get("to") == "queued" and f.get("from") == "human",
        timeout=10,
    )
    assert requeued["reason"] == "reply_sla"
    reassigned = await backup.recv_type("assigned", conversation_id=conversation_id, timeout=10)
    assert reassigned["context"]["transcript"]
    human = await customer.recv_until(
        lambda f: f.get("kind") == "state" and f.get("to") == "human" and f["seq"] > requeued["seq"]
    )
    assert human["agent"]["name"] == "Backup"
    for client in (silent, backup, customer):
        await client.close()
