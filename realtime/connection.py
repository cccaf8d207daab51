"""The thin asyncio shell around one WebSocket: a reader, a writer, a bounded inbox.

Everything sent to the client goes through the inbox and the one writer task, so frames are
never interleaved and a slow reader is noticed: when the inbox overflows, the connection is
closed with 1013 (it can resume by seq) instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketState

from realtime import protocol
from realtime.delivery import DELIVER, DROP, Resequencer
from warmline import logs
from warmline.bus.base import Message, Subscriber, SubscriberOverflow
from warmline.errors import BadRequest, Forbidden, TooLarge, Unauthorized, WarmlineError
from warmline.limits import admit_websocket, require_utf8
from warmline.store.ids import new_id

if TYPE_CHECKING:
    from warmline.runtime import Runtime

log = logging.getLogger("warmline.realtime")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_LATER = 1013

REPLAY_PAGE = 500


class Connection:
    role = "base"
    schema: dict[str, dict[str, protocol.Field]] = {}
    tenant: str | None = None  # known once authenticated (customers: at hello)

    def __init__(self, websocket: WebSocket, runtime: Runtime) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.config = runtime.config
        self.id = new_id("ws")
        self.inbox = Subscriber(self.config.send_queue_frames, on_overflow=self._overflowed)
        self.binary = False
        self.feeds: dict[str, Resequencer] = {}
        self.channels: set[str] = set()
        self.authenticated = False
        self.closed = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        self.last_received = time.monotonic()

    # Lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        offered = list(self.ws.scope.get("subprotocols") or [])
        subprotocol = protocol.choose_subprotocol(offered)
        self.binary = subprotocol == protocol.MSGPACK_SUBPROTOCOL
        if not await admit_websocket(self.runtime, self.ws):  # origin, per-address limit
            return
        logs.bind(connection_id=self.id)
        await self.ws.accept(subprotocol=subprotocol)
        self.runtime.connections.add(self)
        self._writer_task = asyncio.create_task(self._writer(), name=f"writer:{self.id}")
        try:
            if self.runtime.draining:
                self.begin_drain(self.config.drain_reconnect_ms)
            await self._reader()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %s failed", self.id)
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        self.inbox.close()
        if self._writer_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._writer_task), timeout=1.0)
            if not self._writer_task.done():
                self._writer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._writer_task
        for channel in list(self.channels):
            with contextlib.suppress(Exception):
                await self.runtime.bus.unsubscribe(channel, self.inbox)
        self.channels.clear()
        try:
            await self.on_close()
        except Exception:
            log.exception("close hook of %s failed", self.id)
        self.runtime.connections.discard(self)
        self.runtime.forget_limits(self.id)
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code=CLOSE_NORMAL)
        self.closed.set()

    def _overflowed(self) -> None:
        # Called from a publisher: cut the slow consumer off without waiting on it.
        if self._closing:
            return
        log.info("connection %s fell behind; closing with 1013", self.id)
        self.runtime.metrics_slow_consumer()
        if self._writer_task is not None:
            self._writer_task.cancel()
        asyncio.get_running_loop().create_task(self._force_close(CLOSE_TRY_LATER, "slow consumer"))

    async def _force_close(self, code: int, reason: str) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason)

    def begin_drain(self, after_ms: int) -> None:
        """Ask the client to reconnect elsewhere, then close 1012 once that is written."""
        self.inbox.push({"type": "reconnect", "after_ms": after_ms})
        self.inbox.push({"type": "_close", "code": CLOSE_RESTART, "reason": "server restart"})

    # Sending -------------------------------------------------------------------------------
    def send(self, frame: Message) -> None:
        self.inbox.push(frame)

    def reply_error(self, error: WarmlineError, ref: str | None) -> None:
        extra: dict[str, Any] = {}
        retry_after = error.details.get("retry_after_s")
        if retry_after is not None:
            extra["retry_after_s"] = retry_after
        self.send(protocol.error_frame(error.code, error.message, ref, **extra))
        self.runtime.metrics_error(error.code)

    async def _send_now(self, frame: Message) -> None:
        payload = protocol.encode(frame, self.binary)
        if isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        else:
            await self.ws.send_text(payload)
        self.runtime.metrics_frame_out(self.role)

    async def _writer(self) -> None:
        try:
            while True:
                try:
                    message = await self.inbox.get()
                except SubscriberOverflow:
                    await self._force_close(CLOSE_TRY_LATER, "slow consumer")
                    return
                except EOFError:
                    return
                kind = message.get("type")
                if kind == "_close":
                    self._closing = True
                    await self.ws.close(code=message["code"], reason=message.get("reason", ""))
                    return
                if kind == "_fill":
                    await self._fill(message["conversation_id"])
                elif kind == "_resync":
                    await self.on_resync()
                    for conversation_id in list(self.feeds):
                        await self._fill(conversation_id)
                elif kind == "event":
                    await self._deliver_event(message)
                else:
                    outgoing = await self.outgoing(message)
                    if outgoing is not None:
                        await self._send_now(outgoing)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us
            log.debug("writer of %s stopped: %r", self.id, exc)

    async def _deliver_event(self, frame: Message) -> None:
        conversation_id = frame.get("conversation_id")
        if not isinstance(conversation_id, str):
            return
        feed = self.feeds.get(conversation_id)
        if feed is None:
            return
        action = feed.offer(int(frame["seq"]))
        if action == DROP:
            return
        if action == DELIVER:
            await self._send_now(frame)
            feed.delivered(int(frame["seq"]))
            self.runtime.metrics_delivered(frame)
            return
        await self._fill(conversation_id)  # the store has everything up to this seq

    async def _fill(self, conversation_id: str) -> None:
        feed = self.feeds.get(conversation_id)
        if feed is None:
            return
        while True:
            events = await self.runtime.store.events_after(
                conversation_id, feed.last_seq, limit=REPLAY_PAGE
            )
            for event in events:
                if event.seq <= feed.last_seq:
                    continue
                await self._send_now(event.to_frame())
                feed.delivered(event.seq)
            if len(events) < REPLAY_PAGE:
                return

    async def outgoing(self, message: Message) -> Message | None:
        """The frame to send for a non-event bus message, or None to drop it."""
        kind = message.get("type")
        if message.get("_origin") == self.id or (isinstance(kind, str) and kind.startswith("_")):
            return None  # our own echo, or node-internal traffic (e.g. long-poll releases)
        return {k: v for k, v in message.items() if not k.startswith("_")}

    # Following conversations ---------------------------------------------------------------
    async def subscribe_channel(self, channel: str) -> None:
        if channel not in self.channels:
            self.channels.add(channel)
            await self.runtime.bus.subscribe(channel, self.inbox)

    async def unsubscribe_channel(self, channel: str) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            await self.runtime.bus.unsubscribe(channel, self.inbox)

    async def follow(self, conversation_id: str, last_seq: int) -> None:
        """Replay events after last_seq, then live: subscribe first so nothing falls between."""
        from warmline.bus import channels

        # Already followed: keep its position, since one connection never sees a seq twice.
        self.feeds.setdefault(conversation_id, Resequencer(last_seq))
        await self.subscribe_channel(channels.conversation(conversation_id))
        self.send({"type": "_fill", "conversation_id": conversation_id})

    async def unfollow(self, conversation_id: str) -> None:
        from warmline.bus import channels

        self.feeds.pop(conversation_id, None)
        await self.unsubscribe_channel(channels.conversation(conversation_id))

    # Reading -------------------------------------------------------------------------------
    async def _reader(self) -> None:
        timeout = self.config.heartbeat_s * 2
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=timeout)
            except TimeoutError:
                log.info("connection %s missed two heartbeats; closing", self.id)
                self.send(
                    {"type": "_close", "code": CLOSE_GOING_AWAY, "reason": "heartbeat timeout"}
                )
                return
            if message["type"] == "websocket.disconnect":
                return
            self.last_received = time.monotonic()
            self.runtime.metrics_frame_in(self.role)
            await self.runtime.limits.pace(self.id)  # a flood waits in its own TCP buffers
            text, data = message.get("text"), message.get("bytes")
            raw: str | bytes | None = text if text is not None else data
            if raw is None:
                continue
            ref: str | None = None
            kind: object = None
            try:
                if protocol.frame_size(raw) > self.config.max_frame_bytes:
                    raise TooLarge(f"frame larger than {self.config.max_frame_bytes} bytes")
                if isinstance(raw, bytes) != self.binary:
                    raise BadRequest(
                        "binary frames need the warmline.v1.msgpack subprotocol"
                        if isinstance(raw, bytes)
                        else "this connection speaks MessagePack (binary frames)"
                    )
                frame = protocol.decode(raw, self.binary, self.config.max_frame_bytes)
                require_utf8(frame, raw)
                ref = protocol.ref_of(frame)
                kind = frame.get("type")
                protocol.validate(frame, self.schema, self.config.max_text_chars)
                if not self.authenticated and frame["type"] not in ("hello", "ping"):
                    raise Unauthorized("say hello first")
                await self.touch()
                await self.handle(frame, ref)
            except TooLarge as exc:
                self.reply_error(exc, None)
                self.send({"type": "_close", "code": CLOSE_TOO_LARGE, "reason": "frame too large"})
                return
            except (Unauthorized, Forbidden) as exc:
                self.reply_error(exc, ref)
                if kind == "hello" and not self.authenticated:
                    # Refused credentials end the connection (policy violation), after the
                    # error frame that says why.
                    self.send({"type": "_close", "code": CLOSE_POLICY, "reason": exc.code})
                    return
            except WarmlineError as exc:
                self.reply_error(exc, ref)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling a %s frame failed", self.role)
                self.reply_error(WarmlineError("internal error"), ref)

    def pong(self, ref: str | None) -> None:
        frame: Message = {"type": "pong"}
        if ref is not None:
            frame["ref"] = ref
        self.send(frame)

    def ack(self, ref: str | None, **fields: Any) -> None:
        frame: Message = {"type": "ack", **fields}
        if ref is not None:
            frame["ref"] = ref
        self.send(frame)

    # Hooks for the roles -------------------------------------------------------------------
    async def handle(self, frame: Message, ref: str | None) -> None:
        raise NotImplementedError

    async def touch(self) -> None:
        """Called on every valid frame (agents refresh their presence)."""
        return None

    async def on_close(self) -> None:
        return None

    async def on_resync(self) -> None:
        """The bus came back after an outage (agents re-announce their presence)."""
        return None
