"""Conversation helpers for the multi-node tests: hand a conversation to the agent, and check
what a client saw against the stored transcript, event by event."""

from __future__ import annotations

from typing import Any

import websockets

from tests.helpers.client import Client

Frame = dict[str, Any]


def is_state(to: str, conversation_id: str | None = None) -> Any:
    return lambda f: (
        f.get("type") == "event"
        and f.get("kind") == "state"
        and f.get("to") == to
        and (conversation_id is None or f.get("conversation_id") == conversation_id)
    )


def events_of(client: Client, conversation_id: str) -> list[Frame]:
    return [e for e in client.events if e.get("conversation_id") == conversation_id]


def seqs_of(client: Client, conversation_id: str) -> list[int]:
    return [e["seq"] for e in events_of(client, conversation_id)]


async def wait_for_seq(
    client: Client, conversation_id: str, seq: int, within_s: float = 20.0
) -> None:
    if any(s >= seq for s in seqs_of(client, conversation_id)):
        return
    await client.recv_until(
        lambda f: (
            f.get("type") == "event"
            and f.get("conversation_id") == conversation_id
            and f["seq"] >= seq
        ),
        within_s,
    )


async def read_until_closed(client: Client, within_s: float = 20.0) -> int | None:
    """Keep reading (recording every event) until the server side goes away."""
    try:
        while True:
            await client.recv(within_s)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def hand_to_agent(customer: Client, agent: Client, conversation_id: str) -> None:
    """Customer asks for a human; the online agent (on whatever node) gets it assigned."""
    ack = await customer.request({"type": "request_human"})
    assert ack["type"] == "ack", ack
    await agent.recv_type("assigned", timeout=20, conversation_id=conversation_id)
    await customer.recv_until(is_state("human"), timeout=20)


async def transcript(ws_url: str, token: str) -> list[Frame]:
    """The stored transcript, replayed from seq 0 by a fresh connection."""
    reader, welcome = await Client.resume(ws_url, token, 0)
    try:
        await wait_for_seq(reader, welcome["conversation_id"], welcome["last_seq"])
        return events_of(reader, welcome["conversation_id"])
    finally:
        await reader.close()


def fingerprint(event: Frame) -> tuple[Any, ...]:
    author = event.get("author") or {}
    return (
        event["seq"],
        event.get("kind"),
        event.get("id"),
        event.get("text"),
        author.get("role"),
        event.get("to"),
    )


def assert_exact(seen: list[Frame], stored: list[Frame], first_seq: int = 1) -> None:
    """`seen` is the stored transcript from first_seq on: nothing lost, doubled or reordered."""
    seqs = [e["seq"] for e in seen]
    expected = list(range(first_seq, stored[-1]["seq"] + 1))
    lost = sorted(set(expected) - set(seqs))
    doubled = sorted({s for s in seqs if seqs.count(s) > 1})
    assert not lost and not doubled, f"lost {lost}, duplicated {doubled}"
    assert seqs == expected, f"out of order: {seqs}"
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    for event in seen:
        assert fingerprint(event) == fingerprint(stored[event["seq"] - 1])
