"""Frames without an await each: uvicorn's protocol with a synchronous frame path, and the
plain-ASGI fallback a connection uses under any other server."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from realtime.wire import READ_AHEAD_FRAMES, AsgiFrameSink
from tests.helpers.client import Client
from tests.helpers.fake_llm import ThreadedServer
from tests.helpers.server import ServerProcess
from warmline.app import create_app
from warmline.config import Config


# The ASGI fallback, in process ------------------------------------------------------------
async def test_the_asgi_sink_sends_frames_in_order_and_stops_once_the_socket_fails() -> None:
    sent: list[dict[str, Any]] = []
    fail_after = 3

    async def send(message: dict[str, Any]) -> None:
        if len(sent) >= fail_after:
            raise OSError("gone")
        await asyncio.sleep(0)  # a real send may wait for the socket
        sent.append(message)

    sink = AsgiFrameSink(send)
    assert sink.write_frames(["a", b"b"]) and sink.paused()
    assert sink.write_frames(["c"])
    await sink.drain()
    assert not sink.paused()
    assert sent == [
        {"type": "websocket.send", "text": "a"},
        {"type": "websocket.send", "bytes": b"b"},
        {"type": "websocket.send", "text": "c"},
    ]
    assert sink.write_frames(["d", "e"])
    await sink.drain()
    assert not sink.write_frames(["f"])  # the send failed: nothing more is taken
    assert len(sent) == fail_after


async def test_discarding_drops_what_the_asgi_sink_has_not_sent() -> None:
    release = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        await release.wait()
        sent.append(message)

    sink = AsgiFrameSink(send)
    sink.write_frames(["a", "b", "c"])
    await asyncio.sleep(0)  # the first send is under way
    await sink.discard()
    release.set()
    await sink.drain()
    assert sent == [] and not sink.paused()


# Against real servers ---------------------------------------------------------------------
async def test_a_burst_beyond_the_read_ahead_is_answered_in_order(
    demo_server: ServerProcess,
) -> None:
    """More frames than the node reads ahead: the socket pauses and resumes, nothing lost."""
    customer = await Client.connect(demo_server.ws_url())
    await customer.request({"type": "hello", "tenant": "demo"})
    count = READ_AHEAD_FRAMES * 2 + 3
    for n in range(count):
        await customer.send({"type": "ping", "ref": f"p{n}"})
    pongs = [await customer.recv_until(lambda f: f.get("type") == "pong") for _ in range(count)]
    assert [p["ref"] for p in pongs] == [f"p{n}" for n in range(count)]
    await customer.close()


@pytest.fixture
def plain_uvicorn(tmp_path: Path) -> Iterator[str]:
    """Warmline under uvicorn's stock WebSocket protocol: no frame extension."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(Config(db=str(tmp_path / "plain.db"), demo=True, port=port))
    started = threading.Event()
    server = ThreadedServer(
        uvicorn.Config(app, ws="websockets-sansio", log_level="warning", lifespan="on"), started
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert started.wait(60), "the server did not start"
        yield f"ws://127.0.0.1:{port}/v1/ws/customer"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


async def test_under_another_server_frames_go_through_asgi(plain_uvicorn: str) -> None:
    customer, welcome = await Client.customer(plain_uvicorn)
    conversation_id = welcome["conversation_id"]
    await customer.send(
        {"type": "message", "conversation_id": conversation_id, "id": "m1", "text": "hello"}
    )
    ack = await customer.recv_until(lambda f: f.get("type") == "ack")
    echo = await customer.event(client_id="m1")
    assert ack["seq"] == echo["seq"] and echo["text"] == "hello"
    # The bot's answer comes from elsewhere (the bus), after the echo.
    answer = await customer.recv_until(
        lambda f: f.get("type") == "event" and f.get("author", {}).get("role") == "bot"
    )
    assert answer["seq"] > echo["seq"]
    await customer.close()
