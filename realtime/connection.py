"""The thin asyncio shell around one WebSocket: a reader, a bounded inbox, and its writes.

Everything sent to the client goes through the inbox, so frames are never interleaved and a
slow reader is noticed: when the inbox overflows, the connection is closed with 1013 (it can
resume by seq) instead of buffering without bound. The inbox is written out on the next turn
of the loop after a push, by a plain callback, every frame queued by then in one socket
write (`realtime/wire.py`); a writer task takes over only for what has to wait: a replay from
the store, a close, a socket whose buffer is full.

An idle connection costs memory and nothing else: its only task is the reader (the ASGI
task uvicorn runs anyway), and heartbeat deadlines are checked by one sweep per node, not by
a timeout per frame.
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

from realtime import protocol, wire
from realtime.delivery import DELIVER, DROP, Resequencer
from warmline import logs
from warmline.bus.base import Message, Subscriber, SubscriberOverflow
from warmline.errors import BadRequest, Forbidden, TooLarge, Unauthorized, WarmlineError
from warmline.limits import admit_websocket, require_utf8
from warmline.store.ids import new_id

if TYPE_CHECKING:
    from realtime.wire import FrameSink
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
    # Queued messages the writer task handles (they wait on the store or the socket); every
    # other frame is written straight from the inbox.
    async_kinds: frozenset[str] = frozenset({"_close", "_fill", "_resync"})

    def __init__(self, websocket: WebSocket, runtime: Runtime) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.config = runtime.config
        # Looked up once: asyncio.get_running_loop() is a getpid() system call on 3.11.
        self._loop = asyncio.get_running_loop()
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
        self._flush_handle: asyncio.Handle | None = None
        self._sink: FrameSink | None = None  # known once the handshake is accepted
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
        framed = (self.ws.scope.get("extensions") or {}).get(wire.EXTENSION)
        self._sink = framed["sink"] if framed else wire.AsgiFrameSink(self.ws.send)
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
        if self._flush_handle is not None:
            # What is queued (a close frame, say) goes out now rather than never.
            self._flush_handle.cancel()
            self._flush()
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
                if self._sink is not None:
                    await self._sink.drain()
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
        self._writer_task = self._loop.create_task(
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
            if self._sink is not None:
                await self._sink.discard()
            await self.ws.close(code=code, reason=reason)

    def begin_drain(self, after_ms: int) -> None:
        """Ask the client to reconnect elsewhere, then close 1012 once that is written."""
        self.inbox.push({"type": "reconnect", "after_ms": after_ms})
        self.inbox.push({"type": "_close", "code": CLOSE_RESTART, "reason": "server restart"})

    # Sending -------------------------------------------------------------------------------
    def send(self, frame: Message) -> None:
        self.inbox.push(frame)

    def _wake_writer(self) -> None:
        """After every push: write what is queued on the next turn of the loop, so frames
        queued together (an ack and its echo) leave in one socket write. While a writer task
        owns the inbox (a replay, a close, a full socket buffer), it picks them up itself."""
        if self._flush_handle is not None or self._closing or not len(self.inbox):
            return
        writer = self._writer_task
        if writer is not None and not writer.done():
            return
        context = self._writer_context
        if context is None:
            return  # not accepted yet: run() wakes it then
        self._flush_handle = self._loop.call_soon(self._flush, context=context)

    def _flush(self) -> None:
        self._flush_handle = None
        sink = self._sink
        writer = self._writer_task
        if sink is None or self._closing or (writer is not None and not writer.done()):
            return
        if sink.paused():
            self._start_writer(None)  # it waits for the socket to drain
            return
        payloads: list[str | bytes] = []
        try:
            pending = self._take_ready(payloads)
        except SubscriberOverflow:
            return  # _overflowed is closing the connection
        self._write(payloads)
        if pending is not None:
            self._start_writer(pending)

    def _start_writer(self, pending: Message | None) -> None:
        self._writer_task = self._loop.create_task(
            self._writer(pending), name=f"writer:{self.id}", context=self._writer_context
        )

    def _take_ready(self, payloads: list[str | bytes]) -> Message | None:
        """Encode every queued frame that needs no waiting into `payloads`, in order; return
        the first message that needs the writer task (see `_handle_async`), or None once the
        inbox is empty."""
        inbox = self.inbox
        binary = self.binary
        async_kinds = self.async_kinds
        while True:
            message = inbox.take_nowait()
            if message is None:
                return None
            kind = message.get("type")
            if kind == "event":
                conversation_id = message.get("conversation_id")
                feed = self.feeds.get(conversation_id) if isinstance(conversation_id, str) else None
                if feed is None:
                    continue
                seq = int(message["seq"])
                action = feed.offer(seq)
                if action == DROP:
                    continue
                if action != DELIVER:  # the store has everything up to this seq
                    return {"type": "_fill", "conversation_id": conversation_id}
                payloads.append(ENCODED.encode(message, binary))
                feed.delivered(seq)
                self.runtime.metrics_delivered(message)
            elif kind in async_kinds:
                return message
            else:
                outgoing = self.outgoing(message)
                if outgoing is not None:
                    payloads.append(self._payload(outgoing, message))

    def _payload(self, frame: Message, message: Message) -> str | bytes:
        """`frame` encoded: once for every connection when it is the bus `message` itself,
        which never changes after publishing; for this connection alone otherwise."""
        if frame is message:
            return ENCODED.encode(message, self.binary)
        return protocol.encode(frame, self.binary)

    def _write(self, payloads: list[str | bytes]) -> None:
        """Write now, in one socket write; a connection already gone drops them (its reader
        sees the disconnect and tears down)."""
        if payloads and self._sink is not None and self._sink.write_frames(payloads):
            self.runtime.metrics_frame_out(self.role, len(payloads))

    def reply_error(self, error: WarmlineError, ref: str | None) -> None:
        extra: dict[str, Any] = {}
        retry_after = error.details.get("retry_after_s")
        if retry_after is not None:
            extra["retry_after_s"] = retry_after
        self.send(protocol.error_frame(error.code, error.message, ref, **extra))
        self.runtime.metrics_error(error.code)

    async def _writer(self, pending: Message | None) -> None:
        """The inbox's owner while something needs waiting for: replays from the store, a
        close, a full socket buffer. Ends once the inbox is empty again."""
        sink = self._sink
        assert sink is not None
        try:
            while True:
                if pending is not None and not await self._handle_async(pending):
                    return
                if sink.paused():
                    await sink.wait_writable()
                payloads: list[str | bytes] = []
                pending = self._take_ready(payloads)
                self._write(payloads)
                if pending is None:
                    return
        except SubscriberOverflow:
            await self._force_close(CLOSE_TRY_LATER, "slow consumer")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us
            log.debug("writer of %s stopped: %r", self.id, exc)
        finally:
            # A finished task still holds its coroutine and name: let them go while idle.
            # (Not after a slow-consumer cut-off: the closing task has taken the place.)
            if self._writer_task is asyncio.current_task():
                self._writer_task = None

    async def _handle_async(self, message: Message) -> bool:
        """A message that needs waiting for; False once the connection is closing."""
        kind = message.get("type")
        if kind == "_close":
            self._closing = True
            assert self._sink is not None
            await self._sink.drain()
            await self.ws.close(code=message["code"], reason=message.get("reason", ""))
            return False
        if kind == "_fill":
            await self._fill(message["conversation_id"])
        elif kind == "_resync":
            await self.on_resync()
            for conversation_id in list(self.feeds):
                await self._fill(conversation_id)
        else:
            await self.on_async(message)
        return True

    async def _fill(self, conversation_id: str) -> None:
        feed = self.feeds.get(conversation_id)
        if feed is None:
            return
        sink = self._sink
        assert sink is not None
        while True:
            events = await self.runtime.store.events_after(
                conversation_id, feed.last_seq, limit=REPLAY_PAGE
            )
            payloads: list[str | bytes] = []
            for event in events:
                if event.seq <= feed.last_seq:
                    continue
                payloads.append(protocol.encode(event.to_frame(), self.binary))
                feed.delivered(event.seq)
            self._write(payloads)
            if len(events) < REPLAY_PAGE:
                return
            if sink.paused():
                await sink.wait_writable()

    def outgoing(self, message: Message) -> Message | None:
        """The frame to send for a non-event bus message, or None to drop it."""
        kind = message.get("type")
        if message.get("_origin") == self.id or (isinstance(kind, str) and kind.startswith("_")):
            return None  # our own echo, or node-internal traffic (e.g. long-poll releases)
        for key in message:
            if key.startswith("_"):
                return {k: v for k, v in message.items() if not k.startswith("_")}
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
            self._deadline.reschedule(self._loop.time())

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

    async def on_async(self, message: Message) -> None:
        """A message of one of the role's own `async_kinds`."""
        return None

    async def on_resync(self) -> None:
        """The bus came back after an outage (agents re-announce their presence)."""
        return None
