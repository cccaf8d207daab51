"""The thin asyncio shell around one WebSocket: a reader, a writer, a bounded inbox.

Everything sent to the client goes through the inbox and the one writer task, so frames are
never interleaved and a slow reader is noticed: when the inbox overflows, the connection is
closed with 1013 (it can resume by seq) instead of buffering without bound.

An idle connection costs memory and nothing else: its only task is the reader (the ASGI
task uvicorn runs anyway); the writer task exists only while the inbox holds something, and
heartbeat deadlines are checked by one sweep per node, not by a timeout per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import weakref
from collections.abc import Callable, MutableMapping
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

# A frame published to many connections is the same dict in each of their inboxes: encode it
# once for all of them.
ENCODED = protocol.EncodeCache()


class _Inbox(Subscriber):
    """The bounded inbox of one connection; every push wakes the connection's writer."""

    __slots__ = ("_on_push",)

    def __init__(
        self, maxsize: int, on_overflow: Callable[[], None], on_push: Callable[[], None]
    ) -> None:
        super().__init__(maxsize, on_overflow=on_overflow)
        self._on_push = on_push

    def push(self, message: Message) -> None:
        super().push(message)
        self._on_push()


class _SilenceSweep:
    """One timer for all of a node's heartbeat deadlines: a connection whose reader has waited
    two heartbeats for a frame is ended, at most a quarter of that limit late. (A timer per
    connection costs about 0.5 KiB each; a timeout per read, a task per frame.)"""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._members: set[Connection] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: Connection) -> None:
        self._members.add(connection)
        if self._timer is None:
            self._schedule()

    def discard(self, connection: Connection) -> None:
        self._members.discard(connection)
        if not self._members and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.limit_s / 4, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        silent = [c for c in self._members if c._waited(now) >= self.limit_s]
        for connection in silent:
            self._members.discard(connection)
            connection._expire()
        self._timer = None
        if self._members:
            self._schedule()

    def __len__(self) -> int:
        return len(self._members)


_SWEEPS: weakref.WeakKeyDictionary[Runtime, _SilenceSweep] = weakref.WeakKeyDictionary()


def _sweep_of(runtime: Runtime) -> _SilenceSweep:
    sweep = _SWEEPS.get(runtime)
    if sweep is None:
        sweep = _SWEEPS[runtime] = _SilenceSweep(runtime.config.heartbeat_s * 2)
    return sweep


class Connection:
    role = "base"
    schema: dict[str, dict[str, protocol.Field]] = {}
    tenant: str | None = None  # known once authenticated (customers: at hello)

    def __init__(self, websocket: WebSocket, runtime: Runtime) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.config = runtime.config
        self.id = new_id("ws")
        self.inbox: Subscriber = _Inbox(
            self.config.send_queue_frames, self._overflowed, self._wake_writer
        )
        self.binary = False
        self.feeds: dict[str, Resequencer] = {}
        self.channels: set[str] = set()
        self.authenticated = False
        self._closed: asyncio.Event | None = None  # made on first wait: most never need one
        self._finished = False
        self._writer_task: asyncio.Task[None] | None = None
        # The writer runs in this connection's logging context, whoever's push starts it.
        # None until the handshake is accepted: nothing may be written before.
        self._writer_context: contextvars.Context | None = None
        self._closing = False
        self._receiving_since: float | None = None  # monotonic; None while not reading
        self._deadline: asyncio.Timeout | None = None

    @property
    def closed(self) -> asyncio.Event:
        """Set once the connection is torn down (the drain waits on it)."""
        if self._closed is None:
            self._closed = asyncio.Event()
            if self._finished:
                self._closed.set()
        return self._closed

    # Lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        offered = list(self.ws.scope.get("subprotocols") or [])
        subprotocol = protocol.choose_subprotocol(offered)
        self.binary = subprotocol == protocol.MSGPACK_SUBPROTOCOL
        if not await admit_websocket(self.runtime, self.ws):  # origin, per-address limit
            return
        logs.bind(connection_id=self.id)
        await self.ws.accept(subprotocol=subprotocol)
        self._writer_context = contextvars.copy_context()
        self._wake_writer()  # anything queued before the handshake
        self.runtime.connections.add(self)
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
        writer = self._writer_task
        if writer is not None:
            # What is queued (a close frame, say) gets a second to be written.
            await asyncio.wait((writer,), timeout=1.0)
            if not writer.done():
                writer.cancel()
                await asyncio.wait((writer,))
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
        self._finished = True
        if self._closed is not None:
            self._closed.set()

    def _overflowed(self) -> None:
        # Called from a publisher: cut the slow consumer off without waiting on it.
        if self._closing:
            return
        log.info("connection %s fell behind; closing with 1013", self.id)
        self.runtime.metrics_slow_consumer()
        self._closing = True
        stuck = self._writer_task
        if stuck is not None:
            stuck.cancel()
        # It takes the writer's place, so the teardown awaits it like the writer.
        self._writer_task = asyncio.get_running_loop().create_task(
            self._force_close(CLOSE_TRY_LATER, "slow consumer", stuck),
            name=f"close:{self.id}",
            context=self._writer_context,
        )

    async def _force_close(
        self, code: int, reason: str, writer: asyncio.Task[None] | None = None
    ) -> None:
        self._closing = True
        if writer is not None:
            await asyncio.wait((writer,))  # cancelled just now: let it finish first
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason)

    def begin_drain(self, after_ms: int) -> None:
        """Ask the client to reconnect elsewhere, then close 1012 once that is written."""
        self.inbox.push({"type": "reconnect", "after_ms": after_ms})
        self.inbox.push({"type": "_close", "code": CLOSE_RESTART, "reason": "server restart"})

    # Sending -------------------------------------------------------------------------------
    def send(self, frame: Message) -> None:
        self.inbox.push(frame)

    def _wake_writer(self) -> None:
        """After every push: start the writer unless it is running (it drains the inbox, then
        ends, so an idle connection holds no writer task)."""
        writer = self._writer_task
        if (writer is None or writer.done()) and len(self.inbox) and not self._closing:
            context = self._writer_context
            if context is None:
                return  # not accepted yet: run() wakes it then
            self._writer_task = asyncio.get_running_loop().create_task(
                self._writer(), name=f"writer:{self.id}", context=context
            )

    def reply_error(self, error: WarmlineError, ref: str | None) -> None:
        extra: dict[str, Any] = {}
        retry_after = error.details.get("retry_after_s")
        if retry_after is not None:
            extra["retry_after_s"] = retry_after
        self.send(protocol.error_frame(error.code, error.message, ref, **extra))
        self.runtime.metrics_error(error.code)

    async def _send_now(self, frame: Message, shared: bool = True) -> None:
        """Write one frame. `shared`: it may go to other connections too (a bus message),
        so its encoding is cached for them; a frame made for this connection alone is not."""
        if shared:
            payload = ENCODED.encode(frame, self.binary)
        else:
            payload = protocol.encode(frame, self.binary)
        if isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        else:
            await self.ws.send_text(payload)
        self.runtime.metrics_frame_out(self.role)

    async def _writer(self) -> None:
        try:
            while len(self.inbox):
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
                        await self._send_now(outgoing, shared=outgoing is message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us
            log.debug("writer of %s stopped: %r", self.id, exc)
        finally:
            # A finished task still holds its coroutine and name: let them go while idle.
            # (Not after a slow-consumer cut-off: the closing task has taken the place.)
            if self._writer_task is asyncio.current_task():
                self._writer_task = None

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
                await self._send_now(event.to_frame(), shared=False)
                feed.delivered(event.seq)
            if len(events) < REPLAY_PAGE:
                return

    async def outgoing(self, message: Message) -> Message | None:
        """The frame to send for a non-event bus message, or None to drop it."""
        kind = message.get("type")
        if message.get("_origin") == self.id or (isinstance(kind, str) and kind.startswith("_")):
            return None  # our own echo, or node-internal traffic (e.g. long-poll releases)
        for key in message:
            if key.startswith("_"):
                return {k: v for k, v in message.items() if not k.startswith("_")}
        # Never changed after publishing: the very dict every subscriber got, encoded once.
        return message

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
        sweep = _sweep_of(self.runtime)
        try:
            # Moved only by the node's sweep, when this read has waited too long; never per
            # frame.
            async with asyncio.timeout(None) as self._deadline:
                sweep.add(self)
                await self._read_frames()
        except TimeoutError:
            if self._deadline is None or not self._deadline.expired():
                raise
            log.info("connection %s missed two heartbeats; closing", self.id)
            self.send({"type": "_close", "code": CLOSE_GOING_AWAY, "reason": "heartbeat timeout"})
        finally:
            sweep.discard(self)
            self._receiving_since = None

    def _waited(self, now: float) -> float:
        """Seconds the reader has been waiting for the next frame (0.0 while busy)."""
        since = self._receiving_since
        return 0.0 if since is None else now - since

    def _expire(self) -> None:
        """End the read now: the reader gets TimeoutError and closes with 1001."""
        if self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time())

    async def _read_frames(self) -> None:
        while True:
            self._receiving_since = time.monotonic()
            message = await self.ws.receive()
            self._receiving_since = None
            if message["type"] == "websocket.disconnect":
                return
            self.runtime.metrics_frame_in(self.role)
            await self.runtime.limits.pace(self.id)  # a flood waits in its own TCP buffers
            keep_reading = await self._on_message(message)
            del message  # while idle, keep nothing of the last frame
            if not keep_reading:
                return

    async def _on_message(self, message: MutableMapping[str, Any]) -> bool:
        """Handle one received message; False when the connection is to be closed."""
        text, data = message.get("text"), message.get("bytes")
        raw: str | bytes | None = text if text is not None else data
        if raw is None:
            return True
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
            return False
        except (Unauthorized, Forbidden) as exc:
            self.reply_error(exc, ref)
            if kind == "hello" and not self.authenticated:
                # Refused credentials end the connection (policy violation), after the
                # error frame that says why.
                self.send({"type": "_close", "code": CLOSE_POLICY, "reason": exc.code})
                return False
        except WarmlineError as exc:
            self.reply_error(exc, ref)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling a %s frame failed", self.role)
            self.reply_error(WarmlineError("internal error"), ref)
        return True

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
