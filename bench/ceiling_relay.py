"""The ceiling: a bare chat relay written with the `websockets` library.

No store, no state machine, no bus, no rate limits: it speaks just enough of protocol v1 for
the load generator's chat scenario (customer `hello`/`message`/`request_human`/`ping`, agent
`hello`/`claim`/`message`/`ping`) and does the same frame work per message as Warmline
(an `ack` to the sender, the `event` to both sides). Whatever Warmline reaches against this
on the same machine is its share of what Python can do here.

    python bench/ceiling_relay.py --port 0     # prints "Ceiling relay listening on ws://…"
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]


def dumps(frame: Frame) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Conversation:
    id: str
    customer: ServerConnection | None = None
    agents: set[ServerConnection] = field(default_factory=set)
    seq: int = 0
    state: str = "bot"


class Relay:
    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}
        self._ids = itertools.count(1)
        self._messages = itertools.count(1)

    async def handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        on_frame = self.on_agent if path.endswith("/agent") else self.on_customer
        state: dict[str, Any] = {}
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if not isinstance(frame, dict):
                    continue
                await on_frame(ws, frame, state)
        except ConnectionClosed:
            pass
        finally:
            conversation = state.get("conversation")
            if isinstance(conversation, Conversation) and conversation.customer is ws:
                conversation.customer = None
            for conversation in state.get("owned", ()):
                conversation.agents.discard(ws)

    # Shared steps ----------------------------------------------------------------------------
    async def _reply(self, ws: ServerConnection, frame: Frame, ref: Any) -> None:
        if ref is not None:
            frame["ref"] = ref
        await ws.send(dumps(frame))

    async def _publish(self, conversation: Conversation, frame: Frame) -> None:
        text = dumps(frame)  # encoded once for every receiver
        targets = [conversation.customer, *conversation.agents]
        for target in targets:
            if target is not None:
                try:
                    await target.send(text)
                except ConnectionClosed:
                    pass

    def _event(self, conversation: Conversation, kind: str, **data: Any) -> Frame:
        conversation.seq += 1
        return {
            "type": "event",
            "conversation_id": conversation.id,
            "seq": conversation.seq,
            "ts": time.time(),
            "kind": kind,
            **data,
        }

    async def _message(
        self, ws: ServerConnection, conversation: Conversation, frame: Frame, author: Frame
    ) -> None:
        client_id = frame.get("id")
        event = self._event(
            conversation,
            "message",
            id=f"m_{next(self._messages)}",
            client_id=client_id,
            author=author,
            text=frame.get("text", ""),
            sources=[],
        )
        await self._reply(
            ws, {"type": "ack", "id": client_id, "seq": event["seq"]}, frame.get("ref")
        )
        await self._publish(conversation, event)

    # Customers -------------------------------------------------------------------------------
    async def on_customer(self, ws: ServerConnection, frame: Frame, state: dict[str, Any]) -> None:
        kind, ref = frame.get("type"), frame.get("ref")
        conversation: Conversation | None = state.get("conversation")
        if kind == "ping":
            await self._reply(ws, {"type": "pong"}, ref)
        elif kind == "hello" and conversation is None:
            conversation = Conversation(f"c_{next(self._ids)}", customer=ws)
            self.conversations[conversation.id] = conversation
            state["conversation"] = conversation
            welcome = {
                "type": "welcome",
                "conversation_id": conversation.id,
                "token": conversation.id,
                "state": conversation.state,
                "last_seq": 0,
                "heartbeat_s": 15.0,
            }
            await self._reply(ws, welcome, ref)
        elif conversation is None:
            await self._reply(ws, _error("unauthorized", "say hello first"), ref)
        elif kind == "message":
            author = {"role": "customer", "id": conversation.id, "name": "Customer"}
            await self._message(ws, conversation, frame, author)
        elif kind == "request_human":
            conversation.state = "queued"
            await self._reply(ws, {"type": "ack", "of": "request_human"}, ref)
            queued = self._event(conversation, "state", to="queued", reason="request_human")
            await self._publish(conversation, queued)
        else:
            await self._reply(ws, _error("bad_request", f"unsupported frame {kind!r}"), ref)

    # Agents ----------------------------------------------------------------------------------
    async def on_agent(self, ws: ServerConnection, frame: Frame, state: dict[str, Any]) -> None:
        kind, ref = frame.get("type"), frame.get("ref")
        if kind == "ping":
            await self._reply(ws, {"type": "pong"}, ref)
        elif kind == "hello":
            agent = {"id": f"a_{next(self._ids)}", "name": "Agent", "tenant": "demo"}
            state["agent"] = agent
            state["owned"] = []
            welcome = {"type": "welcome", "agent": agent, "queue": [], "assigned": []}
            await self._reply(ws, welcome, ref)
        elif "agent" not in state:
            await self._reply(ws, _error("unauthorized", "say hello first"), ref)
        elif kind == "claim":
            conversation = self.conversations.get(str(frame.get("conversation_id")))
            if conversation is None or conversation.state != "queued":
                await self._reply(ws, _error("conflict", "not queued"), ref)
                return
            conversation.state = "human"
            conversation.agents.add(ws)
            state["owned"].append(conversation)
            ack = {"type": "ack", "of": "claim", "conversation_id": conversation.id}
            await self._reply(ws, ack, ref)
            context = {"reason": "request_human", "transcript": []}
            assigned = {"type": "assigned", "conversation_id": conversation.id, "context": context}
            await ws.send(dumps(assigned))
            human = self._event(
                conversation, "state", to="human", reason="claimed", agent=state["agent"]
            )
            await self._publish(conversation, human)
        elif kind == "message":
            conversation = self.conversations.get(str(frame.get("conversation_id")))
            if conversation is None or ws not in conversation.agents:
                await self._reply(ws, _error("forbidden", "not yours"), ref)
                return
            agent = state["agent"]
            author = {"role": "agent", "id": agent["id"], "name": agent["name"]}
            await self._message(ws, conversation, frame, author)
        else:
            await self._reply(ws, _error("bad_request", f"unsupported frame {kind!r}"), ref)


def _error(code: str, message: str) -> Frame:
    return {"type": "error", "code": code, "message": message}


async def main(host: str, port: int) -> None:
    relay = Relay()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(relay.handler, host, port, compression=None, max_size=1 << 20) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(f"Ceiling relay listening on ws://{bound[0]}:{bound[1]}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(options.host, options.port))
    else:
        uvloop.run(main(options.host, options.port))
