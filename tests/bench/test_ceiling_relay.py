"""bench/ceiling_relay.py with `--store`: every chat message committed before its ack, once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bench.loadkit.rig import RelayProcess


@pytest.fixture
async def storing_relay(tmp_path: Path) -> AsyncIterator[tuple[RelayProcess, Path]]:
    path = tmp_path / "relay.db"
    relay = await asyncio.to_thread(RelayProcess(path).start)
    try:
        yield relay, path
    finally:
        await asyncio.to_thread(relay.stop)


async def request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    return await next_frame(ws, lambda f: f.get("type") in ("ack", "welcome", "error"))


async def next_frame(ws: ClientConnection, wanted: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            if wanted(frame):
                return dict(frame)


async def test_messages_are_stored_before_their_ack_and_a_resend_only_once(
    storing_relay: tuple[RelayProcess, Path],
) -> None:
    relay, path = storing_relay
    async with (
        connect(relay.ws_url("customer")) as customer,
        connect(relay.ws_url("agent")) as agent,
    ):
        welcome = await request(customer, {"type": "hello", "tenant": "demo"})
        conversation_id = welcome["conversation_id"]
        await request(agent, {"type": "hello", "token": "x", "capacity": 0})
        await request(customer, {"type": "request_human"})
        await request(agent, {"type": "claim", "conversation_id": conversation_id})

        first = await request(customer, {"type": "message", "id": "k1", "text": "hello"})
        delivered = await next_frame(agent, lambda f: f.get("kind") == "message")
        resent = await request(customer, {"type": "message", "id": "k1", "text": "hello"})
        # The other side's ids are its own: the same id from the agent is a new message.
        reply = {"type": "message", "conversation_id": conversation_id, "id": "k1", "text": "hi"}
        answered = await request(agent, reply)
        after = await next_frame(customer, lambda f: f.get("text") == "hi")

    assert first == {"type": "ack", "id": "k1", "seq": delivered["seq"]}
    assert resent == first  # the stored seq, and no second delivery before the agent's reply
    assert after["seq"] == answered["seq"] > first["seq"]
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT seq, client_key, data FROM events WHERE conversation_id = ? ORDER BY seq",
            (conversation_id,),
        ).fetchall()
    finally:
        db.close()
    assert [(seq, key.rsplit(":", 1)[-1], json.loads(data)["text"]) for seq, key, data in rows] == [
        (first["seq"], "k1", "hello"),
        (answered["seq"], "k1", "hi"),
    ]
