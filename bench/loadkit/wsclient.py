"""A lean protocol client for load: one reader task per socket, replies matched by `ref`.

Lighter than tests/helpers/client.py (no per-frame history), because at load the client's
own CPU competes with the server's on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection

Frame = dict[str, Any]
FrameHook = Callable[["Peer", Frame], None]
Predicate = Callable[[Frame], bool]

log = logging.getLogger("loadgen.client")
_refs = itertools.count(1)


class PeerClosed(ConnectionError):
    pass


async def open_socket(
    url: str, timeout_s: float = 30.0, compression: bool = False
) -> ClientConnection:
    # No compression by default (nor on the ceiling relay): both sides of a comparison pay
    # the same. `compression=True` offers permessage-deflate, as every browser does.
    # No client keepalive pings: the server pings, and the application heartbeat is ours.
    return await websockets.connect(
        url,
        compression="deflate" if compression else None,
        max_size=None,
        max_queue=None,
        ping_interval=None,
        open_timeout=timeout_s,
        close_timeout=2,
    )


def encode(frame: Frame) -> str:
    return json.dumps(frame, separators=(",", ":"))


def is_state(to: str) -> Predicate:
    return lambda f: f.get("type") == "event" and f.get("kind") == "state" and f.get("to") == to


class Peer:
    def __init__(self, ws: ClientConnection, on_frame: FrameHook | None = None) -> None:
        self.ws = ws
        self.on_frame = on_frame
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.data: dict[str, Any] = {}  # scenario bookkeeping
        self._pending: dict[str, asyncio.Future[Frame]] = {}
        self._waiters: list[tuple[Predicate, asyncio.Future[Frame]]] = []
        self._reader = asyncio.create_task(self._read(), name="peer-reader")

    @classmethod
    async def open(
        cls, url: str, on_frame: FrameHook | None = None, timeout_s: float = 30.0
    ) -> Peer:
        return cls(await open_socket(url, timeout_s), on_frame)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self._dispatch(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reader failed")
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            error = PeerClosed(f"connection closed ({self.close_code})")
            for future in [*self._pending.values(), *(f for _, f in self._waiters)]:
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()
            self._waiters.clear()

    def _dispatch(self, frame: Frame) -> None:
        ref = frame.get("ref")
        if ref is not None:
            future = self._pending.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(frame)
        if self._waiters:
            keep = []
            for predicate, waiter in self._waiters:
                if waiter.done():
                    continue
                if predicate(frame):
                    waiter.set_result(frame)
                else:
                    keep.append((predicate, waiter))
            self._waiters = keep
        if self.on_frame is not None:
            self.on_frame(self, frame)

    async def send(self, frame: Frame) -> None:
        await self.ws.send(encode(frame))

    async def request(self, frame: Frame, timeout_s: float = 30.0) -> Frame:
        """Send with a fresh ref; the welcome/ack/error/pong that echoes it."""
        ref = f"r{next(_refs)}"
        frame["ref"] = ref
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.send(frame)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(ref, None)

    def expect(self, predicate: Predicate) -> asyncio.Future[Frame]:
        """A future for the next frame matching `predicate` (register before causing it)."""
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        if self.closed.is_set():
            future.set_exception(PeerClosed("connection closed"))
        else:
            self._waiters.append((predicate, future))
        return future

    async def heartbeat(self) -> None:
        if not self.closed.is_set():
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.send({"type": "ping"})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


class Pingable(Protocol):
    async def heartbeat(self) -> None: ...


class Heartbeats:
    """The application heartbeat for many clients from one task: each is pinged once per
    interval, spread evenly over it (the server closes a socket silent for two intervals)."""

    TICK_S = 0.2

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.clients: list[Pingable] = []
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, client: Pingable) -> None:
        self.clients.append(client)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="heartbeats")

    async def _run(self) -> None:
        cursor = 0
        while True:
            await asyncio.sleep(self.TICK_S)
            count = len(self.clients)
            if count == 0:
                continue
            for _ in range(min(count, math.ceil(count * self.TICK_S / self.interval_s))):
                await self.clients[cursor % count].heartbeat()
                cursor += 1
                self.sent += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def close_all(peers: list[Peer], concurrency: int = 200) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(peer: Peer) -> None:
        async with gate:
            await peer.close()

    await asyncio.gather(*(one(p) for p in peers))
