"""Long polling spread over two nodes (one SQLite file, a Redis bus), with no sticky sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fallback_longpoll.lp import (
    LongPollCustomer,
    is_message_from,
    live_polls,
    until_live_polls,
)
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    db: Path = tmp_path_factory.mktemp("two-nodes") / "warmline.db"
    with RedisServer() as redis:
        # One after the other: the first seeds the demo tenant, the second finds it there.
        with ServerProcess(db, redis_url=redis.url, node_id="node-a") as a:
            with ServerProcess(db, redis_url=redis.url, node_id="node-b") as b:
                yield a, b


async def test_send_on_one_node_poll_on_the_other_alternating(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    on_a = LongPollCustomer(a.url)
    welcome = await on_a.hello()
    on_b = LongPollCustomer(b.url, welcome["token"])
    questions = ["How do I reset my password?", "How long do refunds take?",
                 "Can I change my order?", "Do you ship internationally?"]
    acks = []
    for i, question in enumerate(questions):
        sender, poller = (on_a, on_b) if i % 2 == 0 else (on_b, on_a)
        ack = await sender.request({"type": "message", "id": f"q{i}", "text": question})
        acks.append(ack["seq"])
        # Whoever polls next continues from the last seq either side saw.
        poller.last_seq = max(on_a.last_seq, on_b.last_seq)
        await poller.poll_until(lambda f, n=ack["seq"]: is_message_from("bot")(f) and f["seq"] > n)

    events = sorted(on_a.events + on_b.events, key=lambda f: f["seq"])
    seqs = [f["seq"] for f in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # no gap, no duplicate across nodes
    assert [f["seq"] for f in events if is_message_from("customer")(f)] == acks
    # A resend on the other node is the same stored message.
    again = await on_b.request({"type": "message", "id": "q0", "text": questions[0]})
    assert again["seq"] == acks[0]
    await on_a.close()
    await on_b.close()


async def test_a_poll_on_one_node_wakes_on_an_event_sent_to_the_other(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    sender = LongPollCustomer(a.url)
    await sender.hello()
    poller = LongPollCustomer(b.url, sender.token)
    base = await live_polls(b.url)
    async with asyncio.timeout(5):
        poll = asyncio.create_task(poller.poll(wait_s=20))
        await until_live_polls(b.url, base + 1)
        ack = await sender.request({"type": "message", "id": "x", "text": "Where is my parcel?"})
        frames = await poll
    assert next(f["seq"] for f in frames if f.get("type") == "event") == ack["seq"]
    await sender.close()
    await poller.close()


async def test_a_new_poll_on_one_node_releases_the_older_on_the_other(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    on_a = LongPollCustomer(a.url)
    await on_a.hello()
    on_b = LongPollCustomer(b.url, on_a.token)
    base_a, base_b = await live_polls(a.url), await live_polls(b.url)
    async with asyncio.timeout(5):
        older = asyncio.create_task(on_a.poll(wait_s=20))
        await until_live_polls(a.url, base_a + 1)
        newer = asyncio.create_task(on_b.poll(wait_s=20))
        assert await older == []  # released through the bus
        await until_live_polls(a.url, base_a)
        await until_live_polls(b.url, base_b + 1)
        ack = await on_a.request({"type": "message", "id": "m", "text": "Still there?"})
        frames = await newer
    assert next(f["seq"] for f in frames if f.get("type") == "event") == ack["seq"]
    await on_a.close()
    await on_b.close()
