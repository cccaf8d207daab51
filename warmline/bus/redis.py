"""The bus across nodes: Redis pub/sub, one channel per conversation/agent/tenant, msgpack.

How it stays correct when Redis misbehaves:

- A node SUBSCRIBEs to a channel only while one of its local subscribers wants it (reference
  counted), so no node reads traffic it does not need and there is no global channel.
- One connection per node carries every subscription and one reader task owns it. We drive it
  ourselves instead of using redis-py's PubSub, whose automatic reconnect resubscribes silently:
  messages published during the gap would be lost without anyone knowing. Here every lost
  connection ends a *session*; the next session resubscribes everything and then pushes RESYNC
  into every local subscriber, which fills the gap from the store by seq.
- A liveness probe publishes to the node-private channel `probe:<node_id>` every second and
  expects it back within two: a subscription that died without closing its socket (a hung or
  partitioned Redis) is noticed in seconds instead of never, while health stays honest.
- Every operation has a short timeout, and `publish` raises Unavailable at once while Redis
  is known to be unreachable (callers stored the event first and hand it to the Republisher;
  subscribers resync later).

How it stays fast: a publish never waits for Redis. Local subscribers of the channel get the
message synchronously, in publish order, inside `publish`; the Redis copy carries this node's
id (`_node`) so our own reader skips it when it comes back, and one writer task sends whatever
is queued as one pipelined batch per round trip, in publish order, for the other nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections import deque
from typing import Any

import msgpack
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from warmline.backoff import Backoff
from warmline.bus.base import RESYNC, Bus, Message, Subscriber
from warmline.errors import Unavailable

log = logging.getLogger("warmline.bus.redis")

PROBE_PREFIX = "probe:"

# The publishing node's id in every Redis copy. A map field, so any msgpack reader decodes the
# message; ours strip it before delivery.
NODE_FIELD = "_node"

# Everything a broken or hung connection can raise through redis-py or asyncio.
_LINK_ERRORS = (RedisError, OSError, TimeoutError, EOFError)


def pack(message: Message) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def publish_command(channel: bytes, payload: bytes) -> bytes:
    """One PUBLISH in RESP, ready to be sent with others in one write."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel),
        channel,
        len(payload),
        payload,
    )


def map_body_offset(payload: bytes) -> int:
    """Where the first key of a msgpack map starts (-1 if the payload is not a map)."""
    first = payload[0] if payload else 0
    if 0x80 <= first <= 0x8F:  # fixmap
        return 1
    if first == 0xDE:  # map 16
        return 3
    if first == 0xDF:  # map 32
        return 5
    return -1


def unpack(payload: bytes) -> Message:
    message = msgpack.unpackb(payload, raw=False)
    if not isinstance(message, dict):
        raise ValueError("bus payload is not a map")
    return message


class _ProbeLost(Exception):
    """The subscription stopped delivering our own probes: treat the connection as dead."""


class _Session:
    """One pub/sub connection's life: what was sent on it and what Redis confirmed."""

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.reader: asyncio.Task[None] | None = None
        self.channels: set[str] = set()  # subscribed (SUBSCRIBE sent, no UNSUBSCRIBE since)
        # (UN)SUBSCRIBE commands sent and replies seen, per channel. Redis answers each in
        # order, so "replies >= n" means the n-th command took effect.
        self.sent: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        self._waiters: list[tuple[str, int, asyncio.Future[bool]]] = []
        self.dead = False
        self.started_at = time.monotonic()
        self.probe_nonce = 0
        self.probes_out: dict[int, float] = {}  # nonce -> monotonic time it was published

    def record_sent(self, channel: str) -> int:
        n = self.sent.get(channel, 0) + 1
        self.sent[channel] = n
        return n

    def record_ack(self, channel: str) -> None:
        n = self.acked.get(channel, 0) + 1
        self.acked[channel] = n
        keep = []
        for waiter in self._waiters:
            ch, target, fut = waiter
            if ch == channel and target <= n:
                if not fut.done():
                    fut.set_result(True)
            else:
                keep.append(waiter)
        self._waiters = keep

    def confirmation(self, channel: str, target: int) -> asyncio.Future[bool]:
        """Resolves True once the target-th command on the channel is confirmed, False if the
        session ends first."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.dead:
            fut.set_result(False)
        elif self.acked.get(channel, 0) >= target:
            fut.set_result(True)
        else:
            self._waiters.append((channel, target, fut))
        return fut

    def end(self) -> None:
        self.dead = True
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.set_result(False)
        self._waiters.clear()

    def probe_acked(self, nonce: int) -> None:
        for n in [n for n in self.probes_out if n <= nonce]:
            del self.probes_out[n]


class RedisBus(Bus):
    def __init__(
        self,
        url: str,
        node_id: str = "",
        *,
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 2.0,
        op_timeout_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        start_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        max_queued: int = 10_000,
        max_batch: int = 512,
    ) -> None:
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.probe_channel = PROBE_PREFIX + self.node_id
        self.reconnects = 0
        self._probe_interval = probe_interval_s
        self._probe_timeout = probe_timeout_s
        self._op_timeout = op_timeout_s
        self._connect_timeout = connect_timeout_s
        self._start_timeout = start_timeout_s
        self._backoff = backoff or Backoff(base=0.05, cap=2.0)
        # A session that survived this long resets the backoff; a flapping Redis (accepts,
        # then drops) keeps backing off instead of being hammered at the base delay.
        self._stable_after = max(5.0, 2 * probe_timeout_s)
        # Commands (probe PUBLISH, PING): a pool with short timeouts and one immediate retry, so
        # a connection left stale by a Redis restart is replaced once instead of failing.
        self._cmd = Redis.from_url(
            url,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            retry=Retry(NoBackoff(), 1),
            client_name=f"warmline-cmd-{self.node_id}",
        )
        # Factories for the pub/sub connection and the writer's. No read timeout on either
        # (channels may be idle for hours and the probe watches the subscription; the writer
        # bounds each whole round trip itself), no retries (every failure must reach our own
        # loops, which decide what to resend), and RESP2 so pushes are plain replies.
        self._sub_pool = _raw_pool(url, f"warmline-bus-{self.node_id}", connect_timeout_s)
        self._pub_pool = _raw_pool(url, f"warmline-pub-{self.node_id}", connect_timeout_s)
        # Accepted publishes (packed PUBLISH commands) in publish order. One stays here until
        # Redis has answered it, so a batch lost with its connection is sent again.
        self._outbox: deque[bytes] = deque()
        self._max_queued = max_queued
        self._max_batch = max_batch
        self._writer_wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._writer_failing = False  # the last round trip failed and none succeeded since
        self._own_mark = msgpack.packb(NODE_FIELD) + msgpack.packb(self.node_id)
        self._local: dict[str, set[Subscriber]] = {}
        self._lock = asyncio.Lock()  # orders (UN)SUBSCRIBE decisions with their sends
        self._session: _Session | None = None
        self._healthy = False
        self._healthy_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._sessions_opened = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; wait (bounded) for the first session, never fail.

        A node started while Redis is down still starts: it reports unhealthy (readiness 503)
        and connects as soon as Redis answers.
        """
        if self._task is not None or self._closed:
            return
        self._writer = asyncio.create_task(self._write(), name=f"redis-bus-writer-{self.node_id}")
        self._task = asyncio.create_task(self._run(), name=f"redis-bus-{self.node_id}")
        if not await self.wait_healthy(self._start_timeout):
            log.warning("bus: redis not reachable yet at start; retrying in the background")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # publish refuses from now on
        writer, self._writer = self._writer, None
        if writer is not None:
            # The writer flushes what was accepted and then returns; against a Redis that does
            # not answer it gives up after its own timeouts. This bound is only a backstop.
            self._writer_wake.set()
            try:
                await asyncio.wait({writer}, timeout=2 * (self._op_timeout + self._connect_timeout))
            finally:
                await self._stop(writer)
        await self._stop(self._task)
        self._task = None
        self._set_healthy(False)
        await self._cmd.aclose()
        await self._sub_pool.disconnect()
        await self._pub_pool.disconnect()
        for subscriber in self._all_subscribers():
            subscriber.close()
        self._local.clear()

    @staticmethod
    async def _stop(task: asyncio.Task[None] | None) -> None:
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def wait_healthy(self, within_s: float) -> bool:
        """True once the bus is (or becomes) healthy within the given time."""
        try:
            async with asyncio.timeout(within_s):
                await self._healthy_event.wait()
        except TimeoutError:
            return False
        return True

    # -- Bus -----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def ping(self) -> None:
        if not self._healthy:
            raise Unavailable("bus: redis subscription is down")
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._cmd.ping()
        except _LINK_ERRORS as exc:
            raise Unavailable(f"bus: redis does not answer: {exc}") from exc

    async def publish(self, channel: str, message: Message) -> None:
        """Deliver to this node's subscribers now and queue the Redis copy for the writer.

        Either all of it happens or, with Unavailable, none of it: the caller hands a refused
        publish to the Republisher, whose retry then reaches local subscribers exactly once.
        Refused at once while Redis is known to be unreachable: the subscription is down
        (reader saw the socket close, or the liveness probe failed) or the writer's last round
        trip failed. Accepted publishes are the writer's to deliver (see `_write`).
        """
        if self._closed:
            raise Unavailable("bus is closed")
        if not self._healthy:
            raise Unavailable("bus: redis subscription is down")
        if self._writer_failing:
            raise Unavailable("bus: publishing to redis fails")
        if len(self._outbox) >= self._max_queued:
            raise Unavailable("bus: too many publishes waiting for redis")
        command = publish_command(channel.encode(), pack({NODE_FIELD: self.node_id, **message}))
        subscribers = self._local.get(channel)
        if subscribers:
            for subscriber in tuple(subscribers):
                subscriber.push(message)
        self._outbox.append(command)
        self._writer_wake.set()

    async def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Returns once Redis confirms the subscription, so a caller may then read the store
        and go live without a gap. While Redis is down it returns at once; the subscriber
        then gets RESYNC when the bus is back."""
        if channel.startswith(PROBE_PREFIX):
            raise ValueError(f"channel names starting with {PROBE_PREFIX!r} are reserved")
        self._local.setdefault(channel, set()).add(subscriber)
        await self._reconcile(channel)

    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._local.get(channel)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._local[channel]
        await self._reconcile(channel)

    def channel_count(self) -> int:
        return len(self._local)

    @property
    def queued_publishes(self) -> int:
        """Publishes accepted and not yet answered by Redis."""
        return len(self._outbox)

    @property
    def publish_failing(self) -> bool:
        """The writer's last round trip to Redis failed and none has succeeded since."""
        return self._writer_failing

    # -- subscriptions -------------------------------------------------------------------

    async def _reconcile(self, channel: str) -> None:
        """Bring Redis in line with the local wish for one channel and await the confirmation.

        Decision and send happen under one lock, so racing subscribe/unsubscribe calls reach
        Redis in the order their decisions were made.
        """
        async with self._lock:
            session = self._session
            if session is None or session.dead:
                return  # the next session subscribes to whatever is wanted then
            wanted = channel in self._local
            if wanted == (channel in session.channels):
                target = session.sent.get(channel, 0)  # maybe still in flight: wait for it
            else:
                command = "SUBSCRIBE" if wanted else "UNSUBSCRIBE"
                try:
                    target = await self._send(session, command, [channel])
                except _LINK_ERRORS:
                    self._kill(session)
                    return
        if target:
            await self._confirmed(session, channel, target)

    async def _send(self, session: _Session, command: str, channels: list[str]) -> int:
        """Send one (UN)SUBSCRIBE for the channels; return this channel's command count."""
        if session.dead or not session.conn.is_connected:
            # redis-py would quietly open a new connection on send: never let it.
            raise ConnectionError("pub/sub connection is gone")
        async with asyncio.timeout(self._op_timeout):
            await session.conn.send_command(command, *channels)
        target = 0
        for channel in channels:
            if command == "SUBSCRIBE":
                session.channels.add(channel)
            else:
                session.channels.discard(channel)
            target = session.record_sent(channel)
        return target

    async def _confirmed(self, session: _Session, channel: str, target: int) -> bool:
        fut = session.confirmation(channel, target)
        try:
            async with asyncio.timeout(self._connect_timeout + self._probe_timeout):
                return await fut
        except TimeoutError:
            # Redis is too slow to confirm; the probe ends this session soon, and the
            # subscriber gets RESYNC after the next one.
            return False

    def _kill(self, session: _Session) -> None:
        """End a session from outside its reader (the supervisor then reconnects)."""
        session.end()
        if session.reader is not None:
            session.reader.cancel()

    def _all_subscribers(self) -> set[Subscriber]:
        every: set[Subscriber] = set()
        for subscribers in self._local.values():
            every.update(subscribers)
        return every

    def _set_healthy(self, healthy: bool) -> None:
        self._healthy = healthy
        if healthy:
            self._healthy_event.set()
        else:
            self._healthy_event.clear()

    # -- the writer ----------------------------------------------------------------------

    async def _write(self) -> None:
        """The node's one publisher: one round trip sends everything queued (up to a batch).

        `publish` returned when it queued a message, so a batch that fails is never dropped:
        it stays at the head of the queue and is sent again, once at once on a new connection
        (the old one may just be stale after a Redis restart), then with backoff, woken early
        when the subscription comes back. Meanwhile `publish` refuses, so new messages go to
        the Republisher instead and the queue stops growing. Resending keeps remote order
        (one queue, one connection) where a RESYNC could not: it reaches only this node's
        subscribers, which already have the message. A resend may repeat a PUBLISH that Redis
        ran just before the connection broke; consumers drop a seq they already delivered, as
        for the Republisher's retries. Only at close, with Redis not answering, is the rest
        dropped (and logged): it is stored, and remote subscribers read it from the store on
        their next gap or resync.
        """
        conn: AbstractConnection | None = None
        failures = 0
        try:
            while True:
                if not self._outbox:
                    if self._closed:
                        return
                    self._writer_wake.clear()
                    await self._writer_wake.wait()
                    continue
                batch = list(itertools.islice(self._outbox, self._max_batch))
                try:
                    if conn is None:
                        conn = self._pub_pool.make_connection()
                        async with asyncio.timeout(self._connect_timeout):
                            await conn.connect()
                    async with asyncio.timeout(self._op_timeout):
                        rejected = await self._round_trip(conn, batch)
                except _LINK_ERRORS as exc:
                    if conn is not None:
                        await conn.disconnect(nowait=True)
                        conn = None
                    failures += 1
                    if failures == 1:
                        continue
                    if not self._writer_failing:
                        log.warning("bus %s: publishing to redis failed: %r", self.node_id, exc)
                    self._writer_failing = True
                    if self._closed:
                        log.warning(
                            "bus %s: closed with %d publishes redis did not take",
                            self.node_id,
                            len(self._outbox),
                        )
                        self._outbox.clear()
                        return
                    await self._pause(self._backoff.delay(failures - 2, random.random()))
                    continue
                for _ in range(len(batch)):
                    self._outbox.popleft()
                failures = 0
                self._writer_failing = False
                if rejected:
                    # Redis refused them (an ACL, say): sending again would not help.
                    log.error("bus %s: redis rejected %d publishes", self.node_id, rejected)
        finally:
            if conn is not None:
                await conn.disconnect(nowait=True)

    async def _round_trip(self, conn: AbstractConnection, batch: list[bytes]) -> int:
        """Send the batch in one write, read one reply per PUBLISH; count error replies."""
        if not conn.is_connected:
            # redis-py would quietly open a new connection on send: the writer does that.
            raise ConnectionError("publish connection is gone")
        await conn.send_packed_command(b"".join(batch), check_health=False)
        rejected = 0
        for _ in batch:
            try:
                await conn.read_response()
            except ResponseError:
                rejected += 1
        return rejected

    async def _pause(self, delay: float) -> None:
        """Sleep, but wake for a new subscription session or close."""
        if self._closed:
            return
        self._writer_wake.clear()
        try:
            async with asyncio.timeout(delay):
                await self._writer_wake.wait()
        except TimeoutError:
            pass

    # -- the session loop ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            session: _Session | None = None
            try:
                session = await self._open_session()
                await self._supervise(session)
            except asyncio.CancelledError:
                raise
            except (*_LINK_ERRORS, _ProbeLost) as exc:
                if self._healthy or attempt == 0:
                    log.warning("bus %s: redis connection lost: %r", self.node_id, exc)
            except Exception:
                # A bug must not silently end delivery for the node: log it and reconnect.
                log.exception("bus %s: unexpected error in the redis session", self.node_id)
            finally:
                self._set_healthy(False)
                if session is not None:
                    await self._close_session(session)
            if session is not None and time.monotonic() - session.started_at >= self._stable_after:
                attempt = 0
            await asyncio.sleep(self._backoff.delay(attempt, random.random()))
            attempt += 1

    async def _open_session(self) -> _Session:
        conn = self._sub_pool.make_connection()
        session = _Session(conn)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await conn.connect()
                session.reader = asyncio.create_task(
                    self._read(session), name=f"redis-bus-reader-{self.node_id}"
                )
                async with self._lock:
                    self._session = session
                    channels = [self.probe_channel, *self._local]
                    await self._send(session, "SUBSCRIBE", channels)
                    targets = [(ch, session.sent[ch]) for ch in channels]
                for channel, target in targets:
                    if not await session.confirmation(channel, target):
                        raise ConnectionError("pub/sub connection lost while subscribing")
        except BaseException:
            await self._close_session(session)
            raise
        session.started_at = time.monotonic()
        if self._sessions_opened:
            self.reconnects += 1
            log.info(
                "bus %s: redis subscription restored (%d channels)", self.node_id, len(self._local)
            )
        self._sessions_opened += 1
        self._set_healthy(True)
        self._writer_wake.set()  # a writer backing off retries now rather than at its next try
        # Subscribed again before this: anything published from now on arrives live, and
        # whatever was published while we were away is read back from the store.
        for subscriber in self._all_subscribers():
            subscriber.push(RESYNC)
        return session

    async def _close_session(self, session: _Session) -> None:
        session.end()
        if self._session is session:
            self._session = None
        reader = session.reader
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await session.conn.disconnect(nowait=True)

    async def _supervise(self, session: _Session) -> None:
        """Return (by raising) when the reader dies or the probe says the session is dead."""
        reader = session.reader
        assert reader is not None
        while True:
            await asyncio.wait({reader}, timeout=self._probe_interval)
            if reader.done():
                error = None if reader.cancelled() else reader.exception()
                raise error or ConnectionError("pub/sub reader ended")
            if session.dead:
                raise ConnectionError("pub/sub session ended")
            await self._probe(session)

    async def _probe(self, session: _Session) -> None:
        now = time.monotonic()
        if session.probes_out and now - min(session.probes_out.values()) > self._probe_timeout:
            raise _ProbeLost(f"no probe came back within {self._probe_timeout}s")
        session.probe_nonce += 1
        session.probes_out[session.probe_nonce] = now
        async with asyncio.timeout(self._op_timeout):
            probe = pack({"n": session.probe_nonce})
            receivers = await self._cmd.publish(self.probe_channel, probe)
        if receivers == 0:
            # Redis itself says nobody listens on our private channel: our subscription is
            # gone even though the socket looks fine.
            raise _ProbeLost("redis reports no subscriber on the probe channel")

    async def _read(self, session: _Session) -> None:
        """The node's one reader: confirmations, probes and messages, in Redis's order."""
        conn = session.conn
        try:
            while True:
                reply: Any = await conn.read_response(disconnect_on_error=False)
                if not isinstance(reply, list) or len(reply) < 3:
                    continue
                kind, raw_channel = reply[0], reply[1]
                channel = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
                if kind == b"message":
                    self._deliver(session, channel, reply[2])
                elif kind in (b"subscribe", b"unsubscribe"):
                    session.record_ack(channel)
        finally:
            session.end()

    def _deliver(self, session: _Session, channel: str, payload: bytes) -> None:
        if channel == self.probe_channel:
            try:
                session.probe_acked(int(unpack(payload)["n"]))
            except (ValueError, KeyError, TypeError, msgpack.UnpackException):
                pass
            return
        subscribers = self._local.get(channel)
        if not subscribers:
            return  # an UNSUBSCRIBE is in flight; nobody here wants it any more
        offset = map_body_offset(payload)
        if offset > 0 and payload.startswith(self._own_mark, offset):
            return  # published here: `publish` delivered it to local subscribers already
        try:
            message = unpack(payload)
        except (ValueError, TypeError, msgpack.UnpackException):
            log.warning("bus: dropping an undecodable message on %s", channel)
            return
        message.pop(NODE_FIELD, None)
        for subscriber in tuple(subscribers):
            subscriber.push(message)


def _raw_pool(url: str, client_name: str, connect_timeout_s: float) -> ConnectionPool:
    options: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": connect_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,
        "client_name": client_name,
    }
    pool = ConnectionPool.from_url(url, **options)
    # Options in the URL's query string win in from_url; these must not be overridden.
    pool.connection_kwargs.update(options)
    return pool
