"""Hostile and unlucky clients: malformed frames, oversize, slow readers, dead peers, drains."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess, wait_until


def snapshot(db: str) -> tuple[list[tuple], list[tuple]]:
    """Everything stored about conversations, read straight from the file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conversations = conn.execute("SELECT * FROM conversations ORDER BY id").fetchall()
        events = conn.execute("SELECT * FROM events ORDER BY conversation_id, seq").fetchall()
    return conversations, events


BAD_CUSTOMER_FRAMES: list[str] = [
    "not json",
    "[1, 2, 3]",
    '"a string"',
    "{}",
    '{"type": 5}',
    '{"type": "no_such_type"}',
    '{"type": "message"}',
    '{"type": "message", "id": "x"}',
    '{"type": "message", "id": 7, "text": "hi"}',
    '{"type": "message", "id": "x", "text": ["hi"]}',
    '{"type": "message", "id": "x", "text": "   "}',
    '{"type": "message", "id": "' + "x" * 500 + '", "text": "hi"}',
    '{"type": "typing", "on": "yes"}',
    '{"type": "rate", "score": 9}',
    '{"type": "rate", "score": true}',
    '{"type": "rate", "score": "5"}',
    '{"type": "hello", "tenant": "demo"}',
    '{"type": "ping", "ref": 12}',
    '{"type": "ping", "ref": "' + "r" * 65 + '"}',
    '{"type": "message", "id": "x", "text": "' + "a" * 9000 + '"}',
    '{"type": "message", "id": "x", "text": "hi", "deep": ' + "[" * 50 + "]" * 50 + "}",
]

BAD_AGENT_FRAMES: list[dict] = [
    {"type": "claim"},
    {"type": "claim", "conversation_id": 3},
    {"type": "presence", "status": "asleep"},
    {"type": "presence", "status": "online", "capacity": -1},
    {"type": "subscribe", "conversation_id": "c_x", "last_seq": "0"},
    {"type": "message", "conversation_id": "c_x", "id": "m", "text": ""},
    {"type": "transfer", "conversation_id": "c_x"},
    {"type": "resolve", "conversation_id": "c_missing"},
    {"type": "requeue", "conversation_id": "c_missing"},
    {"type": "typing", "conversation_id": "c_missing", "on": True},
    {"type": "launch_missiles"},
]


async def test_malformed_frames_get_errors_and_change_nothing(demo_server: ServerProcess) -> None:
    customer, welcome = await Client.customer(demo_server.ws_url())
    await customer.request(
        {"type": "message", "id": "first", "text": "How do I reset my password?"}
    )
    await customer.recv_until(lambda f: f.get("type") == "event" and f["author"]["role"] == "bot")
    agent, _ = await Client.agent(
        demo_server.ws_url("agent"), demo_server.agent_token, status="away"
    )
    before = snapshot(demo_server.db)

    for raw in BAD_CUSTOMER_FRAMES:
        await customer.send_raw(raw)
        error = await customer.recv_type("error")
        assert error["code"] == "bad_request", (raw[:80], error)
        assert (await customer.request({"type": "ping"}))["type"] == "pong"
    # A binary frame on a JSON connection.
    await customer.send_raw(b"\x93\x01\x02\x03")
    assert (await customer.recv_type("error"))["code"] == "bad_request"
    # Rating before resolution is refused by the state machine.
    error = await customer.request({"type": "rate", "score": 4})
    assert error["code"] == "invalid_transition"

    for frame in BAD_AGENT_FRAMES:
        reply = await agent.request(dict(frame))
        assert reply["type"] == "error", (frame, reply)
        assert reply["code"] in ("bad_request", "not_found"), (frame, reply)
    # An agent cannot resolve or write in a conversation that is not theirs.
    conversation_id = welcome["conversation_id"]
    reply = await agent.request({"type": "resolve", "conversation_id": conversation_id})
    assert reply["code"] == "invalid_transition"
    reply = await agent.request(
        {"type": "message", "conversation_id": conversation_id, "id": "m", "text": "hi"}
    )
    assert reply["code"] == "forbidden"

    assert snapshot(demo_server.db) == before
    await customer.close()
    await agent.close()


async def test_oversize_frame_closes_with_1009(demo_server: ServerProcess) -> None:
    customer, _ = await Client.customer(demo_server.ws_url())
    await customer.send_raw(json.dumps({"type": "message", "id": "big", "text": "x" * 70_000}))
    error = await customer.recv_type("error")
    assert error["code"] == "too_large"
    assert await customer.wait_closed() == 1009


async def test_drain_on_sigterm_sends_reconnect_then_1012(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "drain.db").start()
    try:
        customer, welcome = await Client.customer(server.ws_url())
        agent, _ = await Client.agent(server.ws_url("agent"), server.agent_token)
        await customer.request({"type": "message", "id": "m1", "text": "Where is my order?"})
        server.signal(signal.SIGTERM)
        for client in (customer, agent):
            reconnect = await client.recv_type("reconnect")
            assert reconnect["after_ms"] >= 0
            assert await client.wait_closed() == 1012
        # uvicorn re-raises the signal once its graceful shutdown is done.
        assert await asyncio.to_thread(server.wait, 30) in (0, -signal.SIGTERM)
        # Nothing written before the drain is lost: a restarted node replays it.
        server.start()
        resumed, _again = await Client.resume(server.ws_url(), welcome["token"], 0)
        await resumed.recv_until(
            lambda f: (
                f.get("type") == "event" and f.get("id") and f.get("text") == "Where is my order?"
            )
        )
        await resumed.close()
    finally:
        server.stop()
        server.kill()


@pytest.fixture
def tight_server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"WARMLINE_SEND_QUEUE_FRAMES": "8", "WARMLINE_HEARTBEAT_S": "0.5"}
    with ServerProcess(tmp_path / "tight.db", env=env) as server:
        yield server


async def test_dead_connection_is_noticed_within_two_heartbeats(
    tight_server: ServerProcess,
) -> None:
    customer, welcome = await Client.customer(tight_server.ws_url())
    assert welcome["heartbeat_s"] == 0.5
    # A client that says nothing at all is closed after two missed heartbeats.
    code = await customer.wait_closed(timeout=5)
    assert code == 1001


class RawClient:
    """A WebSocket client on a plain socket that reads only when told to, using the
    sans-I/O protocol of the `websockets` library: a truly stalled reader."""

    def __init__(self, url: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so the advertised window stays small.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while not any(isinstance(e, Response) for e in self.events()):
            pass

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def events(self) -> list[object]:
        data = self.sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        return list(self.protocol.events_received())

    def send(self, frame: dict) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        self._flush()

    def close_code(self) -> int | None:
        """Read everything the server sent until its close frame."""
        while self.protocol.close_rcvd is None:
            self.events()
            if self.protocol.state is State.CLOSED:
                break
        self.sock.close()
        return self.protocol.close_rcvd.code if self.protocol.close_rcvd else None


def slow_consumers(server: ServerProcess) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("warmline_slow_consumers_total "):
            return float(line.split()[1])
    return 0.0


async def test_slow_consumer_is_cut_off_with_1013_and_can_resume(tmp_path: Path) -> None:
    env = {
        "WARMLINE_SEND_QUEUE_FRAMES": "16",
        "WARMLINE_MAX_TEXT_CHARS": "400000",
        "WARMLINE_MAX_FRAME_BYTES": "524288",
    }
    with ServerProcess(tmp_path / "slow.db", env=env) as server:
        # A long transcript: replaying it takes more than the kernel's socket buffers hold.
        customer, welcome = await Client.customer(server.ws_url())
        token, conversation_id = welcome["token"], welcome["conversation_id"]
        big = "x" * 400_000
        for i in range(20):
            ack = await customer.request({"type": "message", "id": f"big-{i}", "text": big})
            assert ack["type"] == "ack", ack
        assert slow_consumers(server) == 0

        # An agent that never reads subscribes from seq 0: its writer is stuck replaying
        # while live events pile up in its bounded queue, which overflows.
        slow = await asyncio.to_thread(RawClient, server.ws_url("agent"), server.port)
        slow.send({"type": "hello", "token": server.agent_token, "status": "away"})
        slow.send({"type": "subscribe", "conversation_id": conversation_id, "last_seq": 0})
        live, _ = await Client.resume(server.ws_url(), token, 0)
        for i in range(20):
            await live.request({"type": "message", "id": f"live-{i}", "text": f"still there? {i}"})
        await asyncio.to_thread(wait_until, lambda: slow_consumers(server) >= 1, 20)
        assert await asyncio.to_thread(slow.close_code) == 1013

        # The agent can come straight back and resume by seq; the server is fine.
        again, _ = await Client.agent(server.ws_url("agent"), server.agent_token, status="away")
        reply = await again.request(
            {"type": "subscribe", "conversation_id": conversation_id, "last_seq": 20}
        )
        assert reply["type"] == "ack"
        last = await again.recv_until(
            lambda f: f.get("type") == "event" and f.get("text") == "still there? 19", timeout=20
        )
        assert [f["seq"] for f in again.events] == list(range(21, last["seq"] + 1))
        for client in (again, live, customer):
            await client.close()
