"""Long polling against a real server process: handoff, resend, wake-up, release, bad bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.fallback_longpoll.lp import (
    POLL,
    SEND,
    LongPollCustomer,
    is_message_from,
    is_state,
    live_polls,
    until_live_polls,
)
from tests.helpers.client import Client
from tests.helpers.server import ServerProcess, running_server


@pytest.fixture
async def customer(demo_server: ServerProcess) -> AsyncIterator[LongPollCustomer]:
    client = LongPollCustomer(demo_server.url)
    await client.hello()
    yield client
    await client.close()


def summary(frames: list[dict]) -> list[tuple]:
    return [(f["seq"], f["kind"], f.get("text") or f.get("to")) for f in frames]


async def test_handoff_long_polling_customer_with_websocket_agent(
    demo_server: ServerProcess, customer: LongPollCustomer
) -> None:
    agent, _ = await Client.agent(
        demo_server.ws_url("agent"), demo_server.agent_token, status="online", capacity=2
    )
    assert await customer.poll(wait_s=0) == []  # nothing yet

    # A confident answer, streamed, with its source.
    ack = await customer.request(
        {"type": "message", "id": "q1", "text": "How do I reset my password?"}
    )
    assert ack["type"] == "ack" and ack["seq"] == 1
    answer = await customer.poll_until(is_message_from("bot"))
    assert "password" in answer["text"].lower()
    assert answer["sources"] and answer["sources"][0]["url"].startswith("https://")

    # Escalation: queued (with a position), then assigned to the demo agent.
    ack = await customer.request({"type": "request_human"})
    assert ack == {"type": "ack", "of": "request_human", "ref": ack["ref"]}
    assigned = await agent.recv_type("assigned")
    conversation_id = assigned["conversation_id"]
    assert conversation_id == customer.events[0]["conversation_id"]
    human = await customer.poll_until(is_state("human"))
    assert human["agent"]["name"] == "Alex"
    assert any(f.get("kind") == "state" and f.get("to") == "queued" for f in customer.events)

    # The agent types and writes; the customer sees both.
    async def agent_typing_seen() -> bool:
        poll = asyncio.create_task(customer.poll(wait_s=5))
        await until_live_polls(demo_server.url, 1)
        await agent.send({"type": "typing", "conversation_id": conversation_id, "on": True})
        return any(f.get("type") == "typing" for f in await poll)

    assert await agent_typing_seen()
    typing = next(f for f in customer.received if f.get("type") == "typing")
    assert typing["role"] == "agent" and typing["on"] is True and "_origin" not in typing
    ack = await agent.request(
        {"type": "message", "conversation_id": conversation_id, "id": "a1", "text": "Hi, Alex here"}
    )
    assert ack["type"] == "ack"
    from_agent = await customer.poll_until(is_message_from("agent"))
    assert from_agent["text"] == "Hi, Alex here"

    # The customer types and writes back over long polling; the agent sees both.
    status, replies = await customer.send({"type": "typing", "on": True})
    assert (status, replies) == (200, [])
    agent_typing = await agent.recv_type("typing", conversation_id=conversation_id)
    assert agent_typing["role"] == "customer"
    ack = await customer.request({"type": "message", "id": "q2", "text": "Thanks, that fixed it"})
    await agent.recv_until(lambda f: f.get("type") == "event" and f.get("seq") == ack["seq"])

    # Resolve and rate.
    resolving = await agent.request({"type": "resolve", "conversation_id": conversation_id})
    assert resolving["type"] == "ack"
    resolved = await customer.poll_until(is_state("resolved"))
    await agent.recv_until(lambda f: f.get("type") == "event" and f.get("seq") == resolved["seq"])
    rated = await customer.request({"type": "rate", "score": 5, "comment": "great"})
    assert rated == {"type": "ack", "of": "rate", "ref": rated["ref"]}

    # Both sides saw the same events in the same order, each exactly once.
    agent_view = assigned["context"]["transcript"] + [
        f for f in agent.events if f["conversation_id"] == conversation_id
    ]
    seqs = [f["seq"] for f in customer.events]
    assert seqs == list(range(1, resolved["seq"] + 1))
    assert [f["seq"] for f in agent_view] == seqs
    assert summary(agent_view) == summary(customer.events)
    # The bot never spoke once the human owned the conversation.
    assert not any(is_message_from("bot")(f) and f["seq"] > human["seq"] for f in customer.events)
    # No internal frame (long-poll releases) ever reached the agent's socket.
    assert not any(str(f.get("type", "")).startswith("_") for f in agent.received)
    await agent.close()


async def test_idempotent_resend(customer: LongPollCustomer) -> None:
    first = await customer.request({"type": "message", "id": "same", "text": "Where is my order?"})
    again = await customer.request({"type": "message", "id": "same", "text": "Where is my order?"})
    assert first["seq"] == again["seq"] == 1
    await customer.poll_until(is_message_from("bot"))
    # A resend after later events still gets the original seq.
    later = await customer.request({"type": "message", "id": "same", "text": "Where is my order?"})
    assert later["seq"] == 1
    # Resent over the bearer header instead of the body: the same again.
    response = await customer.http.post(
        SEND,
        json={"type": "message", "id": "same", "text": "Where is my order?", "ref": "b"},
        headers={"Authorization": f"Bearer {customer.token}"},
    )
    assert response.json() == [{"type": "ack", "id": "same", "seq": 1, "ref": "b"}]
    everything = LongPollCustomer(customer.http.base_url.__str__(), customer.token)
    await everything.poll(wait_s=0)
    await everything.close()
    mine = [f for f in everything.events if is_message_from("customer")(f)]
    assert len(mine) == 1 and mine[0]["seq"] == 1


async def test_a_waiting_poll_wakes_on_a_new_event(
    demo_server: ServerProcess, customer: LongPollCustomer
) -> None:
    base = await live_polls(demo_server.url)
    # The poll may wait 20 s; this test gives it 3 s in all.
    async with asyncio.timeout(3):
        poll = asyncio.create_task(customer.poll(wait_s=20))
        await until_live_polls(demo_server.url, base + 1)  # subscribed, store read, waiting
        socket, _ = await Client.resume(demo_server.ws_url(), customer.token, 0)
        ack = await socket.request({"type": "message", "id": "ws1", "text": "Hello from a socket"})
        frames = await poll
    assert [f["seq"] for f in frames if f.get("type") == "event"] == [ack["seq"]]
    assert frames[-1]["text"] == "Hello from a socket"
    await socket.close()


async def test_a_new_poll_releases_the_older(
    demo_server: ServerProcess, customer: LongPollCustomer
) -> None:
    base = await live_polls(demo_server.url)
    other = httpx.AsyncClient(base_url=demo_server.url, timeout=40)
    async with asyncio.timeout(5):
        older = asyncio.create_task(customer.poll(wait_s=20))
        await until_live_polls(demo_server.url, base + 1)
        newer = asyncio.create_task(customer.poll(wait_s=20, client=other))
        assert await older == []  # released at once, with what it had: nothing
        await until_live_polls(demo_server.url, base + 1)  # only the newer one is live
        ack = await customer.request({"type": "message", "id": "m1", "text": "Are you there?"})
        frames = await newer
    assert [f["seq"] for f in frames if f.get("type") == "event"] == [ack["seq"]]
    await other.aclose()


async def test_a_queued_customer_is_told_its_position(
    demo_server: ServerProcess, customer: LongPollCustomer
) -> None:
    # No agent is online in this test: the conversation stays queued.
    await customer.request({"type": "request_human"})
    await customer.poll_until(is_state("queued"))
    positions = [f for f in customer.received if f.get("type") == "queue"]
    assert positions and positions[-1]["position"] >= 1 and positions[-1]["eta_s"] >= 0
    # A customer coming back (reload) learns its place from the hello answer at once.
    status, replies = await customer.send(
        {"type": "hello", "tenant": "demo", "token": customer.token, "last_seq": customer.last_seq}
    )
    assert status == 200 and [f["type"] for f in replies] == ["welcome", "queue"]
    assert replies[0]["state"] == "queued"


def bad_bodies(token: str) -> list[tuple[bytes | str, dict[str, str], int, str]]:
    """(body, headers, HTTP status, error code)"""
    def j(frame: object) -> str:
        return json.dumps(frame)

    return [
        ("{not json", {}, 400, "bad_request"),
        ("[1, 2]", {}, 400, "bad_request"),
        ('"hello"', {}, 400, "bad_request"),
        ("", {}, 400, "bad_request"),
        (b"\xff\xfe", {}, 400, "bad_request"),
        ("x" * (64 * 1024 + 1), {}, 413, "too_large"),
        (j({"type": "message", "id": "m", "text": "x" * (64 * 1024)}), {}, 413, "too_large"),
        (j({"type": "message", "id": "b1", "text": 5, "token": token}), {}, 400, "bad_request"),
        (j({"type": "message", "text": "no id", "token": token}), {}, 400, "bad_request"),
        (j({"type": "message", "id": "b2", "text": " ", "token": token}), {}, 400, "bad_request"),
        (j({"type": "nonsense", "token": token}), {}, 400, "bad_request"),
        (j({"type": "claim", "conversation_id": "c_x", "token": token}), {}, 400, "bad_request"),
        (j({"type": "rate", "score": 9, "token": token}), {}, 400, "bad_request"),
        (j({"type": "typing", "on": "yes", "token": token}), {}, 400, "bad_request"),
        (j({"type": "message", "id": "b3", "text": "hi", "token": 42}), {}, 400, "bad_request"),
        (j({"type": "message", "id": "b4", "text": "hi", "ref": "r" * 65, "token": token}), {}, 400,
         "bad_request"),
        (j({"type": "message", "id": "b5", "text": "hi"}), {}, 401, "unauthorized"),
        (j({"type": "message", "id": "b6", "text": "hi", "token": "forged.token"}), {}, 401,
         "unauthorized"),
        (j({"type": "message", "id": "b7", "text": "hi"}), {"Authorization": "Bearer nope.nope"},
         401, "unauthorized"),
        (j({"type": "rate", "score": 4, "token": token}), {}, 409, "invalid_transition"),
        (j({"type": "hello", "tenant": "no-such-tenant"}), {}, 404, "not_found"),
        (j({"type": "hello", "tenant": "demo", "token": "forged.token"}), {}, 401, "unauthorized"),
    ]


async def test_bad_bodies_get_an_error_and_change_nothing(
    demo_server: ServerProcess, customer: LongPollCustomer
) -> None:
    await customer.request({"type": "message", "id": "ok", "text": "How do refunds work?"})
    await customer.poll_until(is_message_from("bot"))
    before = LongPollCustomer(demo_server.url, customer.token)
    await before.poll(wait_s=0)

    for body, headers, status, code in bad_bodies(customer.token):
        raw = body.encode() if isinstance(body, str) else body
        response = await customer.http.post(SEND, content=raw, headers=headers)
        assert response.status_code == status, (body[:80], response.text)
        replies = response.json()
        assert isinstance(replies, list) and len(replies) == 1, replies
        assert replies[0]["type"] == "error" and replies[0]["code"] == code, (body[:80], replies)
        assert replies[0]["message"]

    # The ref of a frame that decoded is echoed on its error.
    response = await customer.http.post(
        SEND,
        json={"type": "message", "id": "b8", "text": 3, "ref": "mine", "token": customer.token},
    )
    assert response.json()[0]["ref"] == "mine"

    after = LongPollCustomer(demo_server.url, customer.token)
    await after.poll(wait_s=0)
    assert after.events == before.events
    _, replies = await customer.send({"type": "hello", "tenant": "demo", "token": customer.token})
    assert replies[0]["last_seq"] == before.last_seq
    for client in (before, after):
        await client.close()


async def test_bad_polls(demo_server: ServerProcess, customer: LongPollCustomer) -> None:
    cases = [
        ({"token": customer.token, "after": "x"}, 400, "bad_request"),
        ({"token": customer.token, "timeout": "soon"}, 400, "bad_request"),
        ({"after": "0"}, 401, "unauthorized"),
        ({"token": "forged.token"}, 401, "unauthorized"),
    ]
    for params, status, code in cases:
        response = await customer.http.get(POLL, params=params)
        assert response.status_code == status, response.text
        frames = response.json()["frames"]
        assert [(f["type"], f["code"]) for f in frames] == [("error", code)]
    response = await customer.http.get(POLL, params={"token": customer.token, "timeout": 0})
    assert response.json() == {"frames": []}


async def test_ping_needs_no_session(demo_server: ServerProcess) -> None:
    client = LongPollCustomer(demo_server.url)
    assert await client.send({"type": "ping", "ref": "p"}) == (200, [{"type": "pong", "ref": "p"}])
    await client.close()


async def test_a_client_that_goes_away_frees_its_poll(
    demo_server: ServerProcess, customer: LongPollCustomer
) -> None:
    base = await live_polls(demo_server.url)
    gone = httpx.AsyncClient(base_url=demo_server.url, timeout=40)
    async with asyncio.timeout(5):
        poll = asyncio.create_task(customer.poll(wait_s=20, client=gone))
        await until_live_polls(demo_server.url, base + 1)
        poll.cancel()
        await gone.aclose()  # the connection closes under the waiting request
        await until_live_polls(demo_server.url, base)


async def test_a_draining_node_sends_waiting_polls_elsewhere(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        client = LongPollCustomer(server.url)
        await client.hello()
        async with asyncio.timeout(10):
            poll = asyncio.create_task(client.poll(wait_s=20))
            await until_live_polls(server.url, 1)
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            frames = await poll
            await stopping  # exits (uvicorn re-raises SIGTERM after its graceful shutdown)
        assert frames == [{"type": "reconnect", "after_ms": 250}]
        await client.close()


async def test_cross_origin_requests_from_the_embedded_widget(
    demo_server: ServerProcess, customer: LongPollCustomer
) -> None:
    origin = {"Origin": "https://shop.example"}
    for path, method in ((SEND, "POST"), (POLL, "GET")):
        preflight = await customer.http.options(
            path,
            headers={
                **origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert method in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    sent = await customer.http.post(SEND, json={"type": "ping"}, headers=origin)
    polled = await customer.http.get(
        POLL, params={"token": customer.token, "timeout": 0}, headers=origin
    )
    refused = await customer.http.post(SEND, content=b"{", headers=origin)
    for response in (sent, polled, refused):
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["cache-control"] == "no-store"
