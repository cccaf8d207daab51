"""The whole customer journey over real WebSockets against a real server process."""

from __future__ import annotations

import asyncio

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess


def is_bot_message(frame: dict) -> bool:
    return frame.get("type") == "event" and frame.get("author", {}).get("role") == "bot"


def is_state(to: str):
    return lambda f: f.get("type") == "event" and f.get("kind") == "state" and f.get("to") == to


async def test_whole_journey(demo_server: ServerProcess) -> None:
    url = demo_server.ws_url()
    customer, welcome = await Client.customer(url)
    conversation_id = welcome["conversation_id"]
    assert welcome["state"] == "bot" and welcome["last_seq"] == 0 and welcome["token"]

    # A confident answer, streamed, with its source.
    ack = await customer.request(
        {"type": "message", "id": "q1", "text": "How do I reset my password?"}
    )
    assert ack == {"type": "ack", "id": "q1", "seq": 1, "ref": ack["ref"]}
    answer = await customer.recv_until(is_bot_message)
    assert answer["sources"] and answer["sources"][0]["url"].startswith("https://")
    assert "password" in answer["text"].lower()
    deltas = [f for f in customer.received if f.get("type") == "bot_delta"]
    assert deltas and all(d["message_id"] == answer["id"] for d in deltas)

    # Nonsense: confused, with a clarifying reply.
    await customer.request({"type": "message", "id": "q2", "text": "zorblax quint vapple"})
    confused = await customer.recv_until(is_state("confused"))
    assert confused["reason"] == "low_confidence"
    # The customer accepts a human: queued, with position and ETA.
    agent, _agent_welcome = await Client.agent(
        demo_server.ws_url("agent"), demo_server.agent_token, status="away"
    )
    await customer.request({"type": "message", "id": "q3", "text": "yes please"})
    queued = await customer.recv_until(is_state("queued"))
    assert queued["reason"] == "accepted_human"
    position = await customer.recv_type("queue")
    assert position["position"] >= 1 and position["eta_s"] >= 0

    queue = await agent.recv_until(
        lambda f: (
            f.get("type") == "queue"
            and any(i["conversation_id"] == conversation_id for i in f["items"])
        )
    )
    item = next(i for i in queue["items"] if i["conversation_id"] == conversation_id)
    assert item["reason"] == "accepted_human" and item["preview"] == "yes please"

    # The agent comes online and is assigned with the handoff context.
    await agent.request({"type": "presence", "status": "online", "capacity": 2})
    assigned = await agent.recv_type("assigned", conversation_id=conversation_id)
    context = assigned["context"]
    assert context["reason"] == "accepted_human"
    assert "password" in context["summary"].lower()
    assert [e["seq"] for e in context["transcript"]] == list(
        range(1, len(context["transcript"]) + 1)
    )
    human = await customer.recv_until(is_state("human"))
    assert human["agent"]["name"] == "Alex"

    # Chat both ways with typing shown to the other side.
    await agent.send({"type": "typing", "conversation_id": conversation_id, "on": True})
    typing = await customer.recv_type("typing")
    assert typing["role"] == "agent" and typing["on"] is True
    await agent.request(
        {"type": "message", "conversation_id": conversation_id, "id": "a1", "text": "Hi, Alex here"}
    )
    from_agent = await customer.recv_until(
        lambda f: f.get("type") == "event" and f.get("author", {}).get("role") == "agent"
    )
    assert from_agent["text"] == "Hi, Alex here"
    await customer.send({"type": "typing", "on": True})
    agent_typing = await agent.recv_type("typing", conversation_id=conversation_id)
    assert agent_typing["role"] == "customer"
    await customer.request({"type": "message", "id": "q4", "text": "Thanks, that fixed it"})
    await agent.recv_until(
        lambda f: f.get("type") == "event" and f.get("text") == "Thanks, that fixed it"
    )
    # The bot never speaks while a human owns the conversation.
    assert not any(is_bot_message(f) and f["seq"] > human["seq"] for f in customer.events)

    # Resolve, rate, then the customer writes again: reopened to the bot.
    ack = await agent.request({"type": "resolve", "conversation_id": conversation_id})
    assert ack["type"] == "ack"
    await customer.recv_until(is_state("resolved"))
    rated = await customer.request({"type": "rate", "score": 5, "comment": "great"})
    assert rated["type"] == "ack"
    await customer.request(
        {"type": "message", "id": "q5", "text": "Which payment methods do you accept?"}
    )
    reopened = await customer.recv_until(is_state("bot"))
    assert reopened["reason"] == "customer_message"
    reply = await customer.recv_until(lambda f: is_bot_message(f) and f["seq"] > reopened["seq"])
    assert reply["sources"]

    # Every event arrived exactly once and in order.
    seqs = [f["seq"] for f in customer.events]
    assert seqs == list(range(1, len(seqs) + 1))
    await customer.close()
    await agent.close()


async def test_resume_without_gap_or_duplicate(demo_server: ServerProcess) -> None:
    url = demo_server.ws_url()
    customer, welcome = await Client.customer(url)
    token = welcome["token"]
    for i in range(3):
        await customer.request({"type": "message", "id": f"m{i}", "text": f"where is my order {i}"})
    await customer.recv_until(lambda f: f.get("type") == "event" and f.get("seq", 0) >= 4)
    seen = max(f["seq"] for f in customer.events)
    await customer.ws.close()

    # Messages keep coming while the customer is away: the bot's answers land in the store.
    resumed, again = await Client.resume(url, token, seen)
    assert again["conversation_id"] == welcome["conversation_id"]
    # A resend of an already stored message id: same seq, stored once.
    ack = await resumed.request({"type": "message", "id": "m1", "text": "where is my order 1"})
    first_ack_seq = next(
        f["seq"] for f in customer.received if f.get("type") == "ack" and f.get("id") == "m1"
    )
    assert ack["seq"] == first_ack_seq
    await resumed.request({"type": "message", "id": "m9", "text": "how do I track my order"})
    await resumed.recv_until(is_bot_message)
    last = again["last_seq"]
    await resumed.recv_until(lambda f: f.get("type") == "event" and f["seq"] >= last)
    combined = [f["seq"] for f in customer.events if f["seq"] <= seen] + [
        f["seq"] for f in resumed.events
    ]
    assert combined == list(range(1, len(combined) + 1)), combined
    texts = [f.get("text") for f in customer.events + resumed.events if f.get("kind") == "message"]
    assert texts.count("where is my order 1") == 1
    await resumed.close()


async def test_msgpack_subprotocol(demo_server: ServerProcess) -> None:
    customer = await Client.connect(demo_server.ws_url(), binary=True)
    assert customer.ws.subprotocol == "warmline.v1.msgpack"
    welcome = await customer.request({"type": "hello", "tenant": "demo"})
    assert welcome["type"] == "welcome"
    pong = await customer.request({"type": "ping"})
    assert pong["type"] == "pong"
    # A text frame on a MessagePack connection is refused, and the connection stays usable.
    await customer.send_raw('{"type": "ping"}')
    error = await customer.recv_type("error")
    assert error["code"] == "bad_request"
    assert (await customer.request({"type": "ping"}))["type"] == "pong"
    await customer.close()


async def test_unknown_tenant_and_bad_token(demo_server: ServerProcess) -> None:
    client = await Client.connect(demo_server.ws_url())
    error = await client.request({"type": "message", "id": "x", "text": "hi"})
    assert error["code"] == "unauthorized"  # no hello yet: an error, the connection stays
    error = await client.request({"type": "hello", "tenant": "nope"})
    assert error["type"] == "error" and error["code"] == "not_found"
    welcome = await client.request({"type": "hello", "tenant": "demo"})
    assert welcome["type"] == "welcome"
    await client.close()

    # Refused credentials: an error that says why, then close 1008.
    forged = await Client.connect(demo_server.ws_url())
    error = await forged.request({"type": "hello", "tenant": "demo", "token": "forged.token"})
    assert error["code"] == "unauthorized"
    assert await forged.wait_closed() == 1008

    agent = await Client.connect(demo_server.ws_url("agent"))
    error = await agent.request({"type": "hello", "token": "wla_not_a_token"})
    assert error["code"] == "unauthorized"
    assert await agent.wait_closed() == 1008
    agent = await Client.connect(demo_server.ws_url("agent"))
    error = await agent.request({"type": "hello", "token": demo_server.supervisor_token})
    assert error["code"] == "forbidden"
    assert await agent.wait_closed() == 1008


async def test_concurrent_customers_get_their_own_events(demo_server: ServerProcess) -> None:
    async def one(i: int) -> list[int]:
        client, _ = await Client.customer(demo_server.ws_url())
        await client.request(
            {"type": "message", "id": "x", "text": "what payment methods do you accept"}
        )
        await client.recv_until(is_bot_message)
        await client.close()
        return [f["seq"] for f in client.events]

    results = await asyncio.gather(*(one(i) for i in range(10)))
    for seqs in results:
        assert seqs == list(range(1, len(seqs) + 1))
