"""`/v1/ws/agent`: live dispatch for one agent: presence, queue, assignments, chat."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from realtime import protocol
from realtime.connection import CLOSE_POLICY, Connection
from warmline import logs
from warmline.bus import channels
from warmline.bus.base import Message
from warmline.errors import BadRequest, Forbidden, NotFound, Unauthorized
from warmline.models import Agent

DEFAULT_CAPACITY = 3


class AgentConnection(Connection):
    role = "agent"
    schema = protocol.AGENT_FRAMES

    agent: Agent | None = None
    status = "online"
    capacity = DEFAULT_CAPACITY
    _refresh_task: asyncio.Task[None] | None = None

    async def _authenticate(self, frame: Message) -> Agent:
        if self.authenticated:
            raise BadRequest("already authenticated")
        agent = await self.runtime.store.agent_by_token(frame["token"])
        if agent is None:
            raise Unauthorized("unknown or revoked token")
        if agent.role != self.role:
            raise Forbidden(f"a {agent.role} token cannot open the {self.role} endpoint")
        if frame.get("tenant") not in (None, agent.tenant):
            raise Forbidden("this token belongs to another tenant")
        if not await self.runtime.check_origin(self.ws, agent.tenant):
            raise Forbidden("origin not allowed")
        self.tenant = agent.tenant
        return agent

    async def handle(self, frame: Message, ref: str | None) -> None:
        kind = frame["type"]
        if kind == "ping":
            self.pong(ref)
            return
        if kind == "hello":
            await self._hello(frame, ref)
            return
        agent = self.agent
        assert agent is not None
        service = self.runtime.conversations
        conversation_id = frame.get("conversation_id", "")
        logs.bind(conversation_id=conversation_id or None)
        if kind == "presence":
            self.status = frame["status"]
            if frame.get("capacity") is not None:
                self.capacity = int(frame["capacity"])
            await self._heartbeat()
            self.runtime.dispatcher.wake(agent.tenant)
            self.runtime.dispatcher.queue_changed(agent.tenant)
            self.ack(ref, of="presence", status=self.status, capacity=self.capacity)
        elif kind == "claim":
            conversation = await service.claim(agent, conversation_id)
            self.ack(ref, of="claim", conversation_id=conversation.id)
        elif kind == "subscribe":
            conversation = await service.agent_conversation(agent, conversation_id)
            await self.follow(conversation.id, int(frame.get("last_seq") or 0))
            self.ack(ref, of="subscribe", conversation_id=conversation.id)
        elif kind == "unsubscribe":
            await self.unfollow(conversation_id)
            self.ack(ref, of="unsubscribe", conversation_id=conversation_id)
        elif kind == "message":
            await self.runtime.check_rate(self, "message")
            event = await service.agent_message(agent, conversation_id, frame["id"], frame["text"])
            self.ack(ref, id=frame["id"], seq=event.seq, conversation_id=conversation_id)
        elif kind == "typing":
            await service.owned(agent, conversation_id)
            if await self.runtime.allow_typing(self):
                await service.typing(conversation_id, "agent", frame["on"], self.id, agent.name)
        elif kind == "resolve":
            await service.resolve(agent, conversation_id)
            self.ack(ref, of="resolve", conversation_id=conversation_id)
        elif kind == "requeue":
            await service.requeue(agent, conversation_id, frame.get("reason") or "")
            self.ack(ref, of="requeue", conversation_id=conversation_id)
        elif kind == "transfer":
            await service.transfer(agent, conversation_id, frame["to_agent_id"])
            self.ack(ref, of="transfer", conversation_id=conversation_id)

    async def _hello(self, frame: Message, ref: str | None) -> None:
        agent = await self._authenticate(frame)
        previous = self.status, self.capacity
        status, capacity = previous
        if isinstance(frame.get("status"), str) and frame["status"] in (
            "online",
            "away",
            "offline",
        ):
            status = frame["status"]
        requested = frame.get("capacity")
        if isinstance(requested, int) and not isinstance(requested, bool) and 0 <= requested <= 100:
            capacity = requested
        # All or nothing: a hello that fails on the way (presence or store unavailable) leaves
        # the connection as it was, so the client can simply say hello again.
        self.agent, self.status, self.capacity = agent, status, capacity
        try:
            await self._heartbeat()
            await self.subscribe_channel(channels.agent(agent.id))
            await self.subscribe_channel(channels.tenant_queue(agent.tenant))
            items, _ = await self.runtime.dispatcher.queue_snapshot(agent.tenant)
            owned = await self.runtime.store.owned_by(agent.id)
            colleagues = await self.runtime.store.list_agents(agent.tenant)
        except BaseException:
            self.agent = None
            self.tenant = None
            self.status, self.capacity = previous
            for channel in list(self.channels):
                with contextlib.suppress(Exception):
                    await self.unsubscribe_channel(channel)
            with contextlib.suppress(Exception):
                await self.runtime.presence.drop(agent.id, agent.tenant, self.id, time.time())
            raise
        self.authenticated = True
        welcome: dict[str, Any] = {
            "type": "welcome",
            "agent": {"id": agent.id, "name": agent.name, "tenant": agent.tenant},
            "queue": items,
            "assigned": [c.id for c in owned],
            "agents": [
                {"id": a.id, "name": a.name}
                for a in colleagues
                if a.role == "agent" and not a.revoked and a.id != agent.id
            ],
            "status": self.status,
            "capacity": self.capacity,
            "heartbeat_s": self.config.heartbeat_s,
        }
        if ref is not None:
            welcome["ref"] = ref
        self.send(welcome)
        self._refresh_task = asyncio.create_task(
            self._refresh_presence(), name=f"presence:{self.id}"
        )
        self.runtime.dispatcher.wake(agent.tenant)
        self.runtime.dispatcher.queue_changed(agent.tenant)

    async def _heartbeat(self) -> None:
        if self.agent is None:
            return
        await self.runtime.presence.heartbeat(
            self.agent.id,
            self.agent.tenant,
            self.id,
            self.status,
            self.capacity,
            time.time(),
            self.config.presence_ttl_s,
        )

    async def on_resync(self) -> None:
        # Presence in Redis does not survive a Redis restart: announce it again at once
        # rather than at the next periodic refresh.
        with contextlib.suppress(Exception):
            await self._heartbeat()

    async def _refresh_presence(self) -> None:
        # Presence expires by TTL unless refreshed: a connection that is alive keeps it fresh.
        interval = max(self.config.presence_ttl_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            if await self._revoked():
                return
            with contextlib.suppress(Exception):
                await self._heartbeat()

    async def _revoked(self) -> bool:
        """A token revoked after hello ends its live connections too (checked periodically):
        send `unauthorized`, then close with 1008 as a refused hello does."""
        if self.agent is None:
            return False
        try:
            current: Agent | None = await self.runtime.store.get_agent(self.agent.id)
        except NotFound:
            current = None
        except Exception:
            return False  # a store hiccup is no reason to cut anyone off
        if current is not None and not current.revoked:
            return False
        self.reply_error(Unauthorized("token revoked"), None)
        self.send({"type": "_close", "code": CLOSE_POLICY, "reason": "token revoked"})
        return True

    async_kinds = Connection.async_kinds | {"assigned"}

    async def on_async(self, message: Message) -> None:
        if message.get("type") != "assigned":
            return
        frame = super().outgoing(message) or message
        self._write([self._payload(frame, message)])
        conversation_id = message.get("conversation_id")
        transcript = message.get("context", {}).get("transcript", [])
        if isinstance(conversation_id, str) and conversation_id not in self.feeds:
            # Follow the new conversation live from where its transcript ends.
            last_seq = max((e.get("seq", 0) for e in transcript), default=0)
            await self.follow(conversation_id, last_seq)

    def outgoing(self, message: Message) -> Message | None:
        if message.get("type") == "queue" and "items" not in message:
            return None  # per-customer position frames are not for agents
        return super().outgoing(message)

    async def on_close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        if self.agent is not None:
            await self.runtime.presence.drop(self.agent.id, self.agent.tenant, self.id, time.time())
            self.runtime.dispatcher.queue_changed(self.agent.tenant)


class SupervisorConnection(AgentConnection):
    """`/v1/ws/supervisor`: a `stats` frame whenever the numbers change (checked twice a second)."""

    role = "supervisor"
    schema = protocol.SUPERVISOR_FRAMES
    _stats_task: asyncio.Task[None] | None = None

    async def handle(self, frame: Message, ref: str | None) -> None:
        if frame["type"] == "ping":
            self.pong(ref)
            return
        agent = await self._authenticate(frame)
        self.agent = agent
        self.authenticated = True
        welcome: dict[str, Any] = {
            "type": "welcome",
            "supervisor": {"id": agent.id, "name": agent.name, "tenant": agent.tenant},
            "heartbeat_s": self.config.heartbeat_s,
        }
        if ref is not None:
            welcome["ref"] = ref
        self.send(welcome)
        self._stats_task = asyncio.create_task(
            self._stats_loop(agent.tenant), name=f"stats:{self.id}"
        )

    async def _stats_loop(self, tenant: str) -> None:
        last: dict[str, Any] | None = None
        last_sent = 0.0
        while True:
            if await self._revoked():  # one primary-key read per beat; supervisors are few
                return
            try:
                frame = await self.runtime.stats.snapshot(tenant, max_age_s=0.5)
            except asyncio.CancelledError:
                raise
            except Exception:
                frame = None
            if frame is not None:
                comparable = {k: v for k, v in frame.items() if k != "ts"}
                now = time.monotonic()
                if comparable != last or now - last_sent >= 5.0:
                    self.send(frame)
                    last, last_sent = comparable, now
            await asyncio.sleep(0.5)

    async def on_close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
