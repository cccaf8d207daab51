"""The ceiling: a bare chat relay written with the `websockets` library.

No store, no state machine, no bus, no rate limits: it speaks just enough of protocol v1 for
the load generator's chat scenario (customer `hello`/`message`/`request_human`/`ping`, agent
`hello`/`claim`/`message`/`ping`) and does the same frame work per message as Warmline
(an `ack` to the sender, the `event` to both sides). Whatever Warmline reaches against this
on the same machine is its share of what Python can do here.

With `--store FILE` the relay also commits every chat message to SQLite before its `ack`, as
Warmline does, and no more: one table of events with Warmline's two unique indexes (gap-free
seq per conversation; the client id, so a resend is acked with what was stored and not
stored twice), WAL with synchronous=NORMAL, one group commit per turn of the loop on the
loop's own connection, SQLite's own checkpoints. No conversation rows, no state machine, no
rate limits. That is the ceiling of a Python chat server that stores its messages.

    python bench/ceiling_relay.py --port 0     # prints "Ceiling relay listening on ws://…"
    python bench/ceiling_relay.py --port 0 --store /tmp/relay.db
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sqlite3
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


STORE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL, "
    "seq INTEGER NOT NULL, ts REAL NOT NULL, client_key TEXT, data TEXT NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_seq ON events (conversation_id, seq)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_client_key ON events (conversation_id, client_key) "
    "WHERE client_key IS NOT NULL",
)
INSERT_MESSAGE = (
    "INSERT INTO events (conversation_id, seq, ts, client_key, data) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (conversation_id, client_key) WHERE client_key IS NOT NULL DO NOTHING"
)
Stored = tuple[int, bool]  # (the message's seq, whether this send stored it)
PendingMessage = tuple[Conversation, str | None, str, "asyncio.Future[Stored]"]


class MessageLog:
    """Chat messages in SQLite, committed in groups on the event loop before they are acked."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("page_size = 2048", "journal_mode = WAL", "synchronous = NORMAL"):
            self.db.execute(f"PRAGMA {pragma}")
        for statement in STORE_SCHEMA:
            self.db.execute(statement)
        self._pending: list[PendingMessage] = []
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._commit_loop(), name="relay-group-commit")

    async def append(
        self, conversation: Conversation, author: Frame, client_id: Any, data: str
    ) -> Stored:
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        # As Warmline's: one key per author and client id (both sides count their own ids).
        client_key = None if client_id is None else f"{author['role']}:{author['id']}:{client_id}"
        self._pending.append((conversation, client_key, data, future))
        self._wake.set()
        return await future

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                outcomes = self._commit(batch)
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
            await asyncio.sleep(0)  # let the senders just answered run before the next batch

    def _commit(self, batch: list[PendingMessage]) -> list[Stored]:
        outcomes: list[Stored] = []
        # Seqs taken in this transaction: the conversations keep them only once it commits.
        taken: dict[str, tuple[Conversation, int]] = {}
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for conversation, client_key, data, _ in batch:
                seq = taken.get(conversation.id, (conversation, conversation.seq))[1] + 1
                row = (conversation.id, seq, now, client_key, data)
                if self.db.execute(INSERT_MESSAGE, row).rowcount:
                    taken[conversation.id] = (conversation, seq)
                    outcomes.append((seq, True))
                else:
                    found = self.db.execute(
                        "SELECT seq FROM events WHERE conversation_id = ? AND client_key = ?",
                        (conversation.id, client_key),
                    ).fetchone()
                    outcomes.append((int(found[0]), False))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for conversation, seq in taken.values():
            conversation.seq = seq
        return outcomes

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.db.close()


class Relay:
    def __init__(self, log: MessageLog | None = None) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.log = log
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

    def _event(
        self, conversation: Conversation, kind: str, seq: int | None = None, **data: Any
    ) -> Frame:
        if seq is None:
            conversation.seq += 1
            seq = conversation.seq
        return {
            "type": "event",
            "conversation_id": conversation.id,
            "seq": seq,
            "ts": time.time(),
            "kind": kind,
            **data,
        }

    async def _message(
        self, ws: ServerConnection, conversation: Conversation, frame: Frame, author: Frame
    ) -> None:
        client_id = frame.get("id")
        body = {
            "id": f"m_{next(self._messages)}",
            "client_id": client_id,
            "author": author,
            "text": frame.get("text", ""),
            "sources": [],
        }
        seq = None
        if self.log is not None:
            seq, stored = await self.log.append(conversation, author, client_id, dumps(body))
            if not stored:  # a resend: acked with what was stored, delivered once already
                ack = {"type": "ack", "id": client_id, "seq": seq}
                await self._reply(ws, ack, frame.get("ref"))
                return
        event = self._event(conversation, "message", seq, **body)
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


async def main(host: str, port: int, store: str | None = None) -> None:
    log = MessageLog(store) if store else None
    relay = Relay(log)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    try:
        async with serve(relay.handler, host, port, compression=None, max_size=1 << 20) as server:
            bound = next(iter(server.sockets)).getsockname()
            print(f"Ceiling relay listening on ws://{bound[0]}:{bound[1]}", flush=True)
            await stop
    finally:
        if log is not None:
            await log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--store", help="commit every chat message to this SQLite file first")
    options = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(options.host, options.port, options.store))
    else:
        uvloop.run(main(options.host, options.port, options.store))
