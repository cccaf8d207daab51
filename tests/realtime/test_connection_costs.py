"""What keeps idle connections cheap and fan-out fast must not change what clients see.

The WebSocket endpoints are served in front of Starlette's router, the writer runs only while
there is something to write, heartbeat deadlines are one sweep per node, and a frame
published to many connections is encoded once: each of those is checked here from outside,
against a real server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
import websockets

from realtime.protocol import EncodeCache, encode
from tests.helpers.client import Client, Frame
from tests.helpers.server import ServerProcess

HEARTBEAT_S = 0.5


@pytest.fixture
def quick_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "quick.db", env={"WARMLINE_HEARTBEAT_S": str(HEARTBEAT_S)}) as s:
        yield s


@pytest.fixture
def server(demo_server: ServerProcess) -> ServerProcess:
    return demo_server


# The encode cache, in process -------------------------------------------------------------
def test_a_frame_sent_to_many_connections_is_encoded_once_per_encoding() -> None:
    cache = EncodeCache()
    frame: Frame = {"type": "queue", "items": [{"conversation_id": "c_1", "position": 1}]}
    text = cache.encode(frame, False)
    assert text == encode(frame, False) == json.dumps(frame, separators=(",", ":"))
    assert cache.encode(frame, False) is text
    packed = cache.encode(frame, True)
    assert isinstance(packed, bytes) and msgpack.unpackb(packed) == frame
    assert cache.encode(frame, True) is packed
    # Equal content in another dict is another frame: encoded on its own, never confused.
    twin = dict(frame)
    assert cache.encode(twin, False) == text and cache.encode(twin, False) is not text


def test_the_encode_cache_forgets_the_oldest_first_and_stays_small() -> None:
    cache = EncodeCache(max_entries=3, max_chars=40)
    frames: list[Frame] = [{"n": n} for n in range(5)]
    payloads = [cache.encode(f, False) for f in frames]
    assert len(cache) == 3
    assert cache.encode(frames[-1], False) is payloads[-1]  # the newest are kept
    assert cache.encode(frames[0], False) is not payloads[0]  # the oldest went
    # Too big to keep at all, and a big one pushes small ones out to stay under the size.
    huge: Frame = {"text": "x" * 60}
    assert cache.encode(huge, False) is not cache.encode(huge, False)
    big: Frame = {"text": "x" * 20}
    kept = cache.encode(big, False)
    assert cache.encode(big, False) is kept and len(cache) <= 2


def test_non_ascii_text_is_sent_as_is() -> None:
    frame: Frame = {"type": "event", "text": "Grüße, 你好 🙂"}
    assert encode(frame, False) == '{"type":"event","text":"Grüße, 你好 🙂"}'


# Against a real server --------------------------------------------------------------------
async def test_a_connection_that_keeps_talking_outlives_two_heartbeats(
    quick_server: ServerProcess,
) -> None:
    customer, welcome = await Client.customer(quick_server.ws_url())
    assert welcome["heartbeat_s"] == HEARTBEAT_S
    loop = asyncio.get_running_loop()
    # Four times the silence limit, pinging every half heartbeat as the widget does.
    until = loop.time() + 4 * 2 * HEARTBEAT_S
    pings = 0
    while loop.time() < until:
        assert (await customer.request({"type": "ping"}))["type"] == "pong"
        pings += 1
        # The client's own heartbeat: its pace is what this test is about.
        await asyncio.sleep(HEARTBEAT_S / 2)
    assert pings >= 8
    # Then it falls silent: closed for going away once two heartbeats pass without a frame.
    silent_since = loop.time()
    assert await customer.wait_closed(timeout=10) == 1001
    assert loop.time() - silent_since >= 2 * HEARTBEAT_S - HEARTBEAT_S / 2 - 0.1


async def handed_off(server: ServerProcess, agent_name: str) -> tuple[Client, Client, str]:
    """A customer whose conversation an agent (away, so dispatch leaves it alone) claimed."""
    customer, welcome = await Client.customer(server.ws_url())
    token = server.add_agent(agent_name)
    agent, _ = await Client.agent(server.ws_url("agent"), token, status="away")
    conversation_id = welcome["conversation_id"]
    await customer.request({"type": "request_human"})
    await agent.request({"type": "claim", "conversation_id": conversation_id})
    return customer, agent, conversation_id


async def test_an_idle_connection_still_gets_what_is_published_later(
    server: ServerProcess,
) -> None:
    """Nothing is written for a while (no writer runs), then events arrive from elsewhere."""
    customer, agent, conversation_id = await handed_off(server, "Idle Ida")
    await customer.recv_until(
        lambda f: f.get("type") == "event" and f.get("kind") == "state" and f.get("to") == "human"
    )
    for n in range(3):
        await agent.request(
            {"type": "message", "conversation_id": conversation_id, "id": f"a{n}", "text": f"{n}"}
        )
        seen = await customer.event(client_id=f"a{n}")
        mirror = await agent.event(client_id=f"a{n}")
        assert seen == mirror  # one event, the same frame on both sides
    for client in (customer, agent):
        await client.close()


async def test_one_queue_frame_reaches_every_agent_alike_in_either_encoding(
    server: ServerProcess,
) -> None:
    tokens = [server.add_agent(f"Fan {n}") for n in range(3)]
    agents = [
        (await Client.agent(server.ws_url("agent"), token, status="away"))[0]
        for token in tokens[:2]
    ]
    packed = await Client.connect(server.ws_url("agent"), binary=True)
    welcome = await packed.request({"type": "hello", "token": tokens[2], "status": "away"})
    assert welcome["type"] == "welcome" and packed.ws.subprotocol == "warmline.v1.msgpack"
    agents.append(packed)

    customer, hello = await Client.customer(server.ws_url())
    conversation_id = hello["conversation_id"]
    await customer.request({"type": "request_human"})

    def lists_it(frame: Frame) -> bool:
        return frame.get("type") == "queue" and any(
            i["conversation_id"] == conversation_id for i in frame.get("items", [])
        )

    seen = [await agent.recv_until(lists_it) for agent in agents]
    # The same publish, whichever frame each caught first: compare what they have in common.
    items = [
        next(i for i in frame["items"] if i["conversation_id"] == conversation_id) for frame in seen
    ]
    assert items[0] == items[1] == items[2]
    assert all(not k.startswith("_") for frame in seen for k in frame)
    for client in (*agents, customer):
        await client.close()


async def test_typing_reaches_the_other_side_without_internal_fields_and_no_echo(
    server: ServerProcess,
) -> None:
    customer, agent, conversation_id = await handed_off(server, "Typing Tom")
    await agent.request({"type": "subscribe", "conversation_id": conversation_id})

    await agent.send({"type": "typing", "conversation_id": conversation_id, "on": True})
    typing = await customer.recv_type("typing")
    assert typing == {
        "type": "typing",
        "conversation_id": conversation_id,
        "on": True,
        "role": "agent",
        "name": "Typing Tom",
    }
    # The agent's own typing never comes back to it: a ping sent after it is answered first.
    pong = await agent.request({"type": "ping"})
    assert pong["type"] == "pong"
    assert not [f for f in agent.received if f.get("type") == "typing"]
    for client in (customer, agent):
        await client.close()


def counter(server: ServerProcess, name: str, role: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{role="{role}"}} '):
            return float(line.split()[1])
    return 0.0


async def test_frames_are_counted_per_role(server: ServerProcess) -> None:
    customer, _ = await Client.customer(server.ws_url())
    received = counter(server, "warmline_frames_in_total", "customer")
    sent = counter(server, "warmline_frames_out_total", "customer")
    for _ in range(5):
        await customer.request({"type": "ping"})
    assert counter(server, "warmline_frames_in_total", "customer") == received + 5
    assert counter(server, "warmline_frames_out_total", "customer") >= sent + 5
    await customer.close()


async def test_only_the_websocket_endpoints_skip_the_router(server: ServerProcess) -> None:
    # An unknown WebSocket path is still refused at the handshake by the router.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await Client.connect(f"ws://127.0.0.1:{server.port}/v1/ws/nobody")
    assert refused.value.response.status_code == 403
    # A query string does not change which endpoint answers.
    customer, welcome = await Client.customer(server.ws_url() + "?tenant=demo")
    assert welcome["type"] == "welcome"
    await customer.close()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        # A plain GET on a WebSocket path is no handshake: the router answers it as before.
        assert (await http.get("/v1/ws/customer")).status_code in (404, 405)
