"""Issue 3, scale-out: three nodes, one SQLite file, one Redis; clients spread over the nodes.

Every check is event by event against the stored transcript: nothing lost, nothing delivered
twice, nothing out of order, through node kills, Redis restarts and graceful drains.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.helpers.client import Client
from tests.multinode.conftest import Cluster, ready_status
from tests.multinode.support import (
    assert_exact,
    events_of,
    hand_to_agent,
    read_until_closed,
    transcript,
    wait_for_seq,
)

# Writers send about 8 messages a second per connection: under the server's per-connection
# limit (5/s sustained, bursts of 20) for the few seconds a test runs.
PACE_S = 0.12


async def stats(cluster: Cluster, node: str) -> dict:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(
            cluster[node].url + "/v1/api/stats",
            headers={"Authorization": f"Bearer {cluster.supervisor_token}"},
        )
        response.raise_for_status()
        return response.json()


async def test_clients_on_three_nodes_see_every_event_in_order(cluster: Cluster) -> None:
    # Customer on A, agent on B, a colleague following the conversation and the
    # supervisor's live stats on C.
    observer_token = await asyncio.to_thread(cluster["c"].add_agent, "Blake")
    agent, _ = await Client.agent(cluster["b"].ws_url("agent"), cluster.agent_token)
    await agent.request({"type": "presence", "status": "online", "capacity": 2})
    observer, _ = await Client.agent(cluster["c"].ws_url("agent"), observer_token, status="away")
    supervisor = await Client.connect(cluster["c"].ws_url("supervisor"))
    await supervisor.request({"type": "hello", "token": cluster.supervisor_token})
    customer, welcome = await Client.customer(cluster["a"].ws_url())
    cid, token = welcome["conversation_id"], welcome["token"]
    ack = await observer.request({"type": "subscribe", "conversation_id": cid, "last_seq": 0})
    assert ack["type"] == "ack", ack

    await hand_to_agent(customer, agent, cid)
    # The supervisor on C sees the agent (connected to B) online with the conversation.
    await supervisor.recv_until(
        lambda f: (
            f.get("type") == "stats"
            and f["states"]["human"] == 1
            and f["agents"]["online"] == 1
            and f["queue_depth"] == 0
        ),
        timeout=10,
    )

    last = 0
    for i in range(15):
        ack = await customer.request({"type": "message", "id": f"c{i}", "text": f"customer {i}"})
        reply = await agent.request(
            {"type": "message", "conversation_id": cid, "id": f"a{i}", "text": f"agent {i}"}
        )
        assert ack["type"] == reply["type"] == "ack"
        last = reply["seq"]

    for client in (customer, agent, observer):
        await wait_for_seq(client, cid, last)
    stored = await transcript(cluster["a"].ws_url(), token)
    assert stored[-1]["seq"] == last
    assert_exact(events_of(customer, cid), stored)
    assert_exact(events_of(observer, cid), stored)
    agent_seen = events_of(agent, cid)
    assert_exact(agent_seen, stored, first_seq=agent_seen[0]["seq"])
    for client in (customer, agent, observer, supervisor):
        await client.close()


async def test_customer_resumes_on_another_node_after_kill_9(cluster: Cluster) -> None:
    agent, _ = await Client.agent(cluster["b"].ws_url("agent"), cluster.agent_token)
    await agent.request({"type": "presence", "status": "online", "capacity": 2})
    customer, welcome = await Client.customer(cluster["a"].ws_url())
    cid, token = welcome["conversation_id"], welcome["token"]
    await hand_to_agent(customer, agent, cid)

    # The agent (on B) keeps writing while the customer's node dies under them.
    acked: list[int] = []

    async def agent_writes() -> None:
        for i in range(16):
            ack = await agent.request(
                {"type": "message", "conversation_id": cid, "id": f"a{i}", "text": f"agent {i}"}
            )
            assert ack["type"] == "ack", ack
            acked.append(ack["seq"])
            # Pacing the writer (under the per-connection rate limit), not waiting on a state.
            await asyncio.sleep(PACE_S)

    start_seq = events_of(customer, cid)[-1]["seq"]
    writer = asyncio.create_task(agent_writes())
    await wait_for_seq(customer, cid, start_seq + 5)
    # The customer's last message may or may not be stored when the node dies.
    await customer.send({"type": "message", "id": "in-flight", "text": "are you there?"})
    await asyncio.to_thread(cluster["a"].kill)
    await read_until_closed(customer)
    before = events_of(customer, cid)
    last_seen = before[-1]["seq"]

    resumed, again = await Client.resume(cluster["b"].ws_url(), token, last_seen)
    assert again["conversation_id"] == cid
    # Resending the in-flight message is safe: stored at most once, whatever happened.
    ack = await resumed.request({"type": "message", "id": "in-flight", "text": "are you there?"})
    assert ack["type"] == "ack"
    await writer
    final = max(acked[-1], ack["seq"])
    await wait_for_seq(resumed, cid, final)
    await wait_for_seq(agent, cid, final)

    stored = await transcript(cluster["c"].ws_url(), token)
    assert stored[-1]["seq"] == final
    assert_exact(before + events_of(resumed, cid), stored)
    in_flight = [e for e in stored if e.get("text") == "are you there?"]
    assert [e["seq"] for e in in_flight] == [ack["seq"]]
    agent_seen = events_of(agent, cid)
    assert_exact(agent_seen, stored, first_seq=agent_seen[0]["seq"])
    await resumed.close()
    await agent.close()


async def test_redis_restart_mid_conversation(cluster: Cluster) -> None:
    agent, _ = await Client.agent(cluster["b"].ws_url("agent"), cluster.agent_token)
    await agent.request({"type": "presence", "status": "online", "capacity": 2})
    customer, welcome = await Client.customer(cluster["a"].ws_url())
    cid, token = welcome["conversation_id"], welcome["token"]
    await hand_to_agent(customer, agent, cid)

    acked: list[int] = []

    async def writes(client: Client, prefix: str, extra: dict, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            ack = await client.request(
                {"type": "message", "id": f"{prefix}{i}", "text": f"{prefix} {i}", **extra}
            )
            assert ack["type"] == "ack", ack
            acked.append(ack["seq"])
            i += 1
            await asyncio.sleep(PACE_S)  # pacing under the rate limit, not waiting on a state

    async def until_acked(count: int) -> None:
        deadline = time.monotonic() + 20
        while len(acked) < count:
            assert time.monotonic() < deadline, "writes stalled"
            await asyncio.sleep(0.01)

    def start_writers(tag: str, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(writes(customer, f"c{tag}", {}, stop)),
            asyncio.create_task(writes(agent, f"a{tag}", {"conversation_id": cid}, stop)),
        ]

    # Phase 1: both sides write while Redis goes away; readiness says so, writes are still
    # acked (stored first) although nothing can be published.
    stop = asyncio.Event()
    writers = start_writers("1-", stop)
    try:
        await until_acked(6)
        await cluster.redis.astop()
        outage_started = len(acked)
        deadline = time.monotonic() + 10
        while await ready_status(cluster["a"]) != 503:
            assert time.monotonic() < deadline, "readyz never went 503 during the outage"
            await asyncio.sleep(0.05)
        await until_acked(outage_started + 6)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    during_outage = max(acked)

    # Phase 2: Redis comes back (empty). With no new traffic to reveal a gap, only the bus's
    # RESYNC can bring the outage's messages to the other side.
    await cluster.redis.astart()
    deadline = time.monotonic() + 15
    for name in ("a", "b", "c"):
        while await ready_status(cluster[name]) != 200:
            assert time.monotonic() < deadline, f"node {name} did not become ready again"
            await asyncio.sleep(0.05)
    await wait_for_seq(customer, cid, during_outage)
    await wait_for_seq(agent, cid, during_outage)

    # Phase 3: live delivery resumes.
    stop = asyncio.Event()
    writers = start_writers("2-", stop)
    try:
        await until_acked(len(acked) + 6)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    final = max(acked)
    await wait_for_seq(customer, cid, final)
    await wait_for_seq(agent, cid, final)

    stored = await transcript(cluster["c"].ws_url(), token)
    assert stored[-1]["seq"] == final
    assert_exact(events_of(customer, cid), stored)
    agent_seen = events_of(agent, cid)
    assert_exact(agent_seen, stored, first_seq=agent_seen[0]["seq"])
    await customer.close()
    await agent.close()


async def test_sigterm_moves_clients_to_another_node(cluster: Cluster) -> None:
    agent, _ = await Client.agent(cluster["a"].ws_url("agent"), cluster.agent_token)
    await agent.request({"type": "presence", "status": "online", "capacity": 2})
    customer, welcome = await Client.customer(cluster["a"].ws_url())
    cid, token = welcome["conversation_id"], welcome["token"]
    await hand_to_agent(customer, agent, cid)
    for i in range(3):
        await customer.request({"type": "message", "id": f"c{i}", "text": f"customer {i}"})

    cluster["a"].signal(signal.SIGTERM)
    for client in (customer, agent):
        frame = await client.recv_type("reconnect", timeout=10)
        assert frame["after_ms"] >= 0
        assert await read_until_closed(client) == 1012
    # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is done.
    assert await asyncio.to_thread(cluster["a"].wait, 30) in (0, -signal.SIGTERM)
    assert "Traceback" not in cluster["a"].output()

    last_seen = events_of(customer, cid)[-1]["seq"]
    resumed, _ = await Client.resume(cluster["b"].ws_url(), token, last_seen)
    agent2, agent_welcome = await Client.agent(cluster["c"].ws_url("agent"), cluster.agent_token)
    assert cid in agent_welcome["assigned"]
    agent_last = events_of(agent, cid)[-1]["seq"]
    await agent2.request({"type": "subscribe", "conversation_id": cid, "last_seq": agent_last})
    reply = await agent2.request(
        {"type": "message", "conversation_id": cid, "id": "after", "text": "still here"}
    )
    ack = await resumed.request({"type": "message", "id": "c-after", "text": "great"})
    final = max(reply["seq"], ack["seq"])
    await wait_for_seq(resumed, cid, final)
    await wait_for_seq(agent2, cid, final)

    stored = await transcript(cluster["b"].ws_url(), token)
    assert_exact(events_of(customer, cid) + events_of(resumed, cid), stored)
    agent_seen = events_of(agent, cid) + events_of(agent2, cid)
    assert_exact(agent_seen, stored, first_seq=agent_seen[0]["seq"])
    await resumed.close()
    await agent2.close()
