"""The scale-out journey on PostgreSQL + Redis: the nodes share a database server instead of a
SQLite file, as they would on separate hosts.

Same checks as tests/multinode/test_cluster.py, event by event against the stored transcript
(nothing lost, nothing delivered twice, nothing out of order), plus the database's own view:
the transcript in PostgreSQL is gap-free, and racing claims from two nodes assign once.

The database server is WARMLINE_TEST_POSTGRES_URL (see tests/store/conftest.py); each test
creates and drops its own database. Skipped only when that server is unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import asyncpg
import pytest

from tests.helpers.client import Client
from tests.helpers.redis_server import RedisServer
from tests.multinode.conftest import Cluster
from tests.multinode.support import (
    assert_exact,
    events_of,
    hand_to_agent,
    is_state,
    read_until_closed,
    transcript,
    wait_for_seq,
)
from tests.store.conftest import POSTGRES_URL, PostgresEnv

PACE_S = 0.12  # writers stay under the per-connection rate limit (as in test_cluster.py)


class PostgresCluster(Cluster):
    def __init__(
        self, tmp_path: Path, database_url: str, redis: RedisServer, env: Mapping[str, str]
    ) -> None:
        super().__init__(tmp_path, redis, env)
        self.database_url = database_url
        self.db = database_url  # type: ignore[assignment]  # ServerProcess takes a path or URL


@pytest.fixture
async def database() -> AsyncIterator[PostgresEnv]:
    env = PostgresEnv(POSTGRES_URL)
    await env.setup()
    try:
        yield env
    finally:
        await env.teardown()


@pytest.fixture
async def cluster(
    tmp_path: Path, database: PostgresEnv, redis: RedisServer, cluster_env: dict[str, str]
) -> AsyncIterator[PostgresCluster]:
    c = PostgresCluster(tmp_path, database.url, redis, cluster_env)
    try:
        await c.astart("a", "b", "c")
        yield c
    finally:
        await asyncio.to_thread(c.close)


async def stored_seqs(database_url: str, conversation_id: str) -> list[int]:
    """The transcript's seqs as PostgreSQL holds them, tenant-keyed."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT seq FROM events WHERE tenant = 'demo' AND conversation_id = $1 ORDER BY seq",
            conversation_id,
        )
        return [r["seq"] for r in rows]
    finally:
        await conn.close()


async def test_nodes_share_the_postgres_database(cluster: PostgresCluster) -> None:
    for name in ("a", "b", "c"):
        assert cluster[name].db.startswith("postgresql://")
        assert "Traceback" not in cluster[name].output()
    result = await asyncio.to_thread(cluster["a"].cli, "db", "migrate")
    assert result.returncode == 0 and result.stdout.startswith("schema at version"), result


async def test_customer_on_a_agent_on_b_through_a_handoff(cluster: PostgresCluster) -> None:
    observer_token = await asyncio.to_thread(cluster["c"].add_agent, "Blake")
    agent, _ = await Client.agent(cluster["b"].ws_url("agent"), cluster.agent_token)
    await agent.request({"type": "presence", "status": "online", "capacity": 2})
    observer, _ = await Client.agent(cluster["c"].ws_url("agent"), observer_token, status="away")
    customer, welcome = await Client.customer(cluster["a"].ws_url())
    cid, token = welcome["conversation_id"], welcome["token"]
    ack = await observer.request({"type": "subscribe", "conversation_id": cid, "last_seq": 0})
    assert ack["type"] == "ack", ack

    # A question for the bot first (answered on A), then the handoff to the agent on B.
    ack = await customer.request({"type": "message", "id": "q0", "text": "How do refunds work?"})
    assert ack["type"] == "ack", ack
    await customer.recv_until(
        lambda f: f.get("type") == "event" and (f.get("author") or {}).get("role") == "bot",
        timeout=20,
    )
    await hand_to_agent(customer, agent, cid)

    last = 0
    for i in range(15):
        ack = await customer.request({"type": "message", "id": f"c{i}", "text": f"customer {i}"})
        reply = await agent.request(
            {"type": "message", "conversation_id": cid, "id": f"a{i}", "text": f"agent {i}"}
        )
        assert ack["type"] == reply["type"] == "ack", (ack, reply)
        last = reply["seq"]
    # A resend of an acked message from the customer's side is acked again, stored once.
    again = await customer.request({"type": "message", "id": "c3", "text": "customer 3"})
    assert again["type"] == "ack"

    for client in (customer, agent, observer):
        await wait_for_seq(client, cid, last)
    stored = await transcript(cluster["c"].ws_url(), token)
    assert stored[-1]["seq"] == last
    assert_exact(events_of(customer, cid), stored)
    assert_exact(events_of(observer, cid), stored)
    agent_seen = events_of(agent, cid)
    assert_exact(agent_seen, stored, first_seq=agent_seen[0]["seq"])
    assert [e["seq"] for e in stored if e.get("id") and e.get("text") == "customer 3"] == [
        again["seq"]]
    assert await stored_seqs(cluster.database_url, cid) == list(range(1, last + 1))
    for client in (customer, agent, observer):
        await client.close()


async def test_customer_resumes_on_another_node_after_kill_9(cluster: PostgresCluster) -> None:
    agent, _ = await Client.agent(cluster["b"].ws_url("agent"), cluster.agent_token)
    await agent.request({"type": "presence", "status": "online", "capacity": 2})
    customer, welcome = await Client.customer(cluster["a"].ws_url())
    cid, token = welcome["conversation_id"], welcome["token"]
    await hand_to_agent(customer, agent, cid)

    acked: list[int] = []

    async def agent_writes() -> None:
        for i in range(12):
            ack = await agent.request(
                {"type": "message", "conversation_id": cid, "id": f"a{i}", "text": f"agent {i}"}
            )
            assert ack["type"] == "ack", ack
            acked.append(ack["seq"])
            await asyncio.sleep(PACE_S)  # pacing under the rate limit, not waiting on a state

    start_seq = events_of(customer, cid)[-1]["seq"]
    writer = asyncio.create_task(agent_writes())
    await wait_for_seq(customer, cid, start_seq + 4)
    # Maybe stored, maybe not, when node A dies: the resend below settles it either way.
    await customer.send({"type": "message", "id": "in-flight", "text": "are you there?"})
    await asyncio.to_thread(cluster["a"].kill)
    await read_until_closed(customer)
    before = events_of(customer, cid)

    resumed, again = await Client.resume(cluster["b"].ws_url(), token, before[-1]["seq"])
    assert again["conversation_id"] == cid
    ack = await resumed.request({"type": "message", "id": "in-flight", "text": "are you there?"})
    assert ack["type"] == "ack", ack
    await writer
    final = max(acked[-1], ack["seq"])
    await wait_for_seq(resumed, cid, final)
    await wait_for_seq(agent, cid, final)

    stored = await transcript(cluster["c"].ws_url(), token)
    assert stored[-1]["seq"] == final
    assert_exact(before + events_of(resumed, cid), stored)
    assert [e["seq"] for e in stored if e.get("text") == "are you there?"] == [ack["seq"]]
    agent_seen = events_of(agent, cid)
    assert_exact(agent_seen, stored, first_seq=agent_seen[0]["seq"])
    assert await stored_seqs(cluster.database_url, cid) == list(range(1, final + 1))
    await resumed.close()
    await agent.close()


async def test_claims_racing_on_two_nodes_assign_once(cluster: PostgresCluster) -> None:
    blake_token = await asyncio.to_thread(cluster["a"].add_agent, "Blake")
    # Both away: nobody is dispatched automatically, the conversation waits to be claimed.
    alex, _ = await Client.agent(cluster["b"].ws_url("agent"), cluster.agent_token, status="away")
    blake, _ = await Client.agent(cluster["a"].ws_url("agent"), blake_token, status="away")
    for agent in (alex, blake):
        ack = await agent.request({"type": "presence", "status": "away", "capacity": 2})
        assert ack["type"] == "ack", ack
    customer, welcome = await Client.customer(cluster["c"].ws_url())
    cid, token = welcome["conversation_id"], welcome["token"]
    ack = await customer.request({"type": "request_human"})
    assert ack["type"] == "ack", ack
    await customer.recv_until(is_state("queued", cid), timeout=20)

    answers = await asyncio.gather(
        *(agent.request({"type": "claim", "conversation_id": cid}) for agent in (alex, blake))
    )
    kinds = sorted(a["type"] for a in answers)
    assert kinds == ["ack", "error"], answers
    (refused,) = [a for a in answers if a["type"] == "error"]
    assert refused["code"] == "conflict", refused

    human = await customer.recv_until(is_state("human", cid), timeout=20)
    stored = await transcript(cluster["a"].ws_url(), token)
    assignments = [e for e in stored if e.get("kind") == "state" and e.get("to") == "human"]
    assert len(assignments) == 1 and assignments[0]["seq"] == human["seq"]
    assert await stored_seqs(cluster.database_url, cid) == [e["seq"] for e in stored]
    for client in (alex, blake, customer):
        await client.close()
