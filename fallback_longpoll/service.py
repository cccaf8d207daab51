"""The async shell of long polling: one customer frame in, one poll out.

Nothing about a session is kept between requests: the token names the conversation and the
client's `after` says where it stands, so consecutive requests may land on different nodes.
The only node-local state is the bookkeeping of the polls this node holds right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fallback_longpoll.batch import STOP, PollBatch, release_message
from fallback_longpoll.frames import (
    Frame,
    PollParams,
    check_frame,
    parse_body,
    session_token,
    token_key,
)
from fallback_longpoll.limits import PollLimiter
from realtime import protocol
from warmline import logs, metrics
from warmline.bus import channels
from warmline.bus.base import Subscriber, SubscriberOverflow
from warmline.errors import BadRequest, Forbidden, Unauthorized, WarmlineError
from warmline.limits import client_ip
from warmline.store.ids import new_id

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from warmline.runtime import Runtime

log = logging.getLogger("warmline.longpoll")

ROLE = "customer"
TRANSPORT = "longpoll"
REPLAY_PAGE = 500  # events per response; a client behind by more polls again at once
MAX_FRAMES = 500  # frames per response, ephemeral ones included
# After an ephemeral frame (a bot_delta), keep collecting briefly: fewer round trips while
# an answer streams, so fewer deltas fall between two polls. Persistent events never wait.
LINGER_S = 0.05
# Runtime.drain has no hook to wake waiters; a poll looks at `runtime.draining` this often.
DRAIN_CHECK_S = 1.0

Disconnected = Callable[[], Awaitable[None]]


def error_reply(runtime: Runtime, error: WarmlineError, ref: str | None) -> tuple[int, Frame]:
    extra: dict[str, Any] = {}
    retry_after = error.details.get("retry_after_s")
    if retry_after is not None:
        extra["retry_after_s"] = retry_after
    runtime.metrics_error(error.code)
    return error.http_status, protocol.error_frame(error.code, error.message, ref, **extra)


async def _check_origin(runtime: Runtime, request: HTTPConnection | None, tenant: str) -> None:
    if request is not None and not await runtime.check_origin(request, tenant):
        raise Forbidden("origin not allowed")


def _with_ref(frame: Frame, ref: str | None) -> Frame:
    if ref is not None:
        frame["ref"] = ref
    return frame


class LongPoll:
    """Per node (one per app): poll bookkeeping and rate buckets; the runtime comes per call."""

    def __init__(self, limiter: PollLimiter | None = None) -> None:
        self.limiter = limiter or PollLimiter()
        self._inboxes: dict[str, Subscriber] = {}  # live poll id -> its inbox

    # Sending ---------------------------------------------------------------------------------
    async def send(
        self,
        runtime: Runtime,
        body: bytes,
        authorization: str | None,
        request: HTTPConnection | None = None,
    ) -> tuple[int, list[Frame]]:
        """Handle one request body exactly like the WebSocket customer handles a frame.

        `body` may be cut off one byte past the limit: that is enough to refuse it.
        """
        runtime.metrics_frame_in(ROLE)
        ref: str | None = None
        status = 200
        try:
            frame = parse_body(body, runtime.config.max_frame_bytes)
            ref = protocol.ref_of(frame)
            check_frame(frame, runtime.config.max_text_chars)
            replies = await self._handle(runtime, frame, ref, authorization, request)
        except WarmlineError as exc:
            status, error = error_reply(runtime, exc, ref)
            replies = [error]
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling a long-polling frame failed")
            status, error = error_reply(runtime, WarmlineError("internal error"), ref)
            replies = [error]
        for _ in replies:
            runtime.metrics_frame_out(ROLE)
        return status, replies

    async def _handle(
        self,
        runtime: Runtime,
        frame: Frame,
        ref: str | None,
        authorization: str | None,
        request: HTTPConnection | None = None,
    ) -> list[Frame]:
        kind = frame["type"]
        service = runtime.conversations
        if kind == "ping":
            return [_with_ref({"type": "pong"}, ref)]
        if kind == "hello":
            await _check_origin(runtime, request, frame["tenant"])
            if request is not None:  # a new session, as a WebSocket handshake would be
                await runtime.check_rate(client_ip(request), "connect")
            return await self._hello(runtime, frame, ref)
        token = session_token(frame, authorization)
        if token is None:
            raise Unauthorized("say hello first, then send its token with every frame")
        conversation = await service.conversation_for_token(token)
        logs.bind(conversation_id=conversation.id)
        await _check_origin(runtime, request, conversation.tenant)
        if kind == "message":
            await runtime.check_rate(conversation.id, "message", conversation.tenant)
            event = await service.customer_message(conversation.id, frame["id"], frame["text"])
            return [_with_ref({"type": "ack", "id": frame["id"], "seq": event.seq}, ref)]
        if kind == "typing":
            if await runtime.allow_typing(conversation.id):  # else dropped, as on the socket
                origin = f"lp_{token_key(token)[:12]}"
                await service.typing(conversation.id, "customer", frame["on"], origin)
            return []
        if kind == "request_human":
            await service.request_human(conversation.id)
            return [_with_ref({"type": "ack", "of": "request_human"}, ref)]
        if kind == "rate":
            await service.rate(conversation.id, frame["score"], frame.get("comment") or "")
            return [_with_ref({"type": "ack", "of": "rate"}, ref)]
        raise BadRequest(f"unknown frame type {kind[:40]!r}")  # the schema admits no other

    async def _hello(self, runtime: Runtime, frame: Frame, ref: str | None) -> list[Frame]:
        service = runtime.conversations
        tenant = frame["tenant"]
        token = frame.get("token")
        if token:
            conversation, token = await service.resume(tenant, token)
        else:
            await runtime.check_rate(f"tenant:{tenant}", "conversation", tenant)
            conversation, token = await service.start(tenant)
        welcome = _with_ref(
            {
                "type": "welcome",
                "conversation_id": conversation.id,
                "token": token,
                "state": conversation.state,
                "last_seq": conversation.last_seq,
                "heartbeat_s": runtime.config.heartbeat_s,
            },
            ref,
        )
        replies = [welcome]
        # As on the socket, a customer who (re)joins while queued learns their place at once
        # instead of waiting for the next change in the queue.
        if conversation.state == "queued":
            position = await runtime.dispatcher.position_of(conversation)
            if position is not None:
                replies.append(position)
        return replies

    # Polling ---------------------------------------------------------------------------------
    async def poll(
        self,
        runtime: Runtime,
        params: PollParams,
        ip: str,
        disconnected: Disconnected | None = None,
        request: HTTPConnection | None = None,
    ) -> tuple[int, dict[str, Any]]:
        try:
            frames = await self._poll(runtime, params, ip, disconnected, request)
        except WarmlineError as exc:
            status, error = error_reply(runtime, exc, None)
            return status, {"frames": [error]}
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a long poll failed")
            status, error = error_reply(runtime, WarmlineError("internal error"), None)
            return status, {"frames": [error]}
        for frame in frames:
            runtime.metrics_frame_out(ROLE)
            if frame.get("type") == "event":
                runtime.metrics_delivered(frame)
        return 200, {"frames": frames}

    async def _poll(
        self,
        runtime: Runtime,
        params: PollParams,
        ip: str,
        disconnected: Disconnected | None,
        request: HTTPConnection | None = None,
    ) -> list[Frame]:
        await runtime.check_rate(ip, "poll")
        conversation = await runtime.conversations.conversation_for_token(params.token)
        logs.bind(conversation_id=conversation.id)
        await _check_origin(runtime, request, conversation.tenant)
        if runtime.draining:
            return [self._reconnect(runtime)]
        # Keyed by conversation, not token: a resume hands out a fresh token, and the poll
        # still open under the old one must be released by the new one all the same.
        key = token_key(conversation.id)
        poll_id = new_id("lp")
        for older in self.limiter.admit(poll_id, key, ip):
            inbox = self._inboxes.get(older)
            if inbox is not None:
                inbox.push(release_message(poll_id, key))
        inbox = Subscriber(runtime.config.send_queue_frames)
        self._inboxes[poll_id] = inbox
        gauge = metrics.CONNECTIONS.labels(ROLE, TRANSPORT)
        waiting = False
        channel = channels.conversation(conversation.id)
        watcher: asyncio.Task[None] | None = None
        if disconnected is not None:
            watcher = asyncio.create_task(self._watch(disconnected, inbox), name=f"lp:{poll_id}")
        subscribed = False
        try:
            # Subscribed before the store is read, so an event stored meanwhile arrives live.
            await runtime.bus.subscribe(channel, inbox)
            subscribed = True
            # Older polls of this token on every node (this one included) end on this.
            await runtime.conversations.publish(channel, release_message(poll_id, key))
            batch = PollBatch(min(params.after, conversation.last_seq), key, poll_id)
            await self._fill(runtime, conversation.id, batch)
            # Counted from here: a live poll is one that would see the next event arrive.
            gauge.inc()
            waiting = True
            await self._collect(runtime, conversation.id, batch, inbox, params.timeout_s)
            frames = batch.frames
            if batch.released:
                return frames  # the client has moved on to its newer poll
            if runtime.draining:
                frames.append(self._reconnect(runtime))
            elif (
                not batch.has_queue_frame()
                and batch.state_after(conversation.state, conversation.last_seq) == "queued"
            ):
                position = await runtime.dispatcher.position_of(conversation)
                if position is not None:
                    frames.append(position)
            return frames
        finally:
            if watcher is not None:
                watcher.cancel()
                # wait() rather than await: a cancellation of this poll itself still propagates.
                await asyncio.wait([watcher])
            inbox.close()
            if subscribed:
                with contextlib.suppress(Exception):
                    await runtime.bus.unsubscribe(channel, inbox)
            self._inboxes.pop(poll_id, None)
            self.limiter.release(poll_id)
            if waiting:
                gauge.dec()

    @staticmethod
    async def _watch(disconnected: Disconnected, inbox: Subscriber) -> None:
        try:
            await disconnected()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("watching a poll's client failed", exc_info=True)
            return
        inbox.push({"type": STOP})

    @staticmethod
    def _reconnect(runtime: Runtime) -> Frame:
        return {"type": "reconnect", "after_ms": runtime.config.drain_reconnect_ms}

    async def _fill(self, runtime: Runtime, conversation_id: str, batch: PollBatch) -> None:
        events = await runtime.store.events_after(
            conversation_id, batch.last_seq, limit=REPLAY_PAGE
        )
        batch.add_stored(e.to_frame() for e in events)

    async def _collect(
        self,
        runtime: Runtime,
        conversation_id: str,
        batch: PollBatch,
        inbox: Subscriber,
        timeout_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        linger_until: float | None = None
        while not batch.finished and len(batch.frames) < MAX_FRAMES:
            if batch.needs_fill:
                await self._fill(runtime, conversation_id, batch)
                continue
            if runtime.draining:
                return
            now = loop.time()
            end = deadline
            if batch.frames:
                linger_until = linger_until or now + LINGER_S
                end = min(end, linger_until)
            if end <= now:
                return
            try:
                async with asyncio.timeout(min(end - now, DRAIN_CHECK_S)):
                    message = await inbox.get()
            except TimeoutError:
                continue
            except SubscriberOverflow:
                # Ephemeral frames beyond the inbox are lost; events come from the store.
                await self._fill(runtime, conversation_id, batch)
                return
            except EOFError:
                return  # the bus is closing
            batch.offer(message)
