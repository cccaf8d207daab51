"""A thin protocol client over the real `websockets` library, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import msgpack
import websockets
from websockets.asyncio.client import ClientConnection

Frame = dict[str, Any]
DEFAULT_TIMEOUT = 10.0


class Client:
    def __init__(self, ws: ClientConnection, binary: bool = False) -> None:
        self.ws = ws
        self.binary = binary
        self.received: list[Frame] = []
        self.events: list[Frame] = []  # every `event` frame, in arrival order
        # Frames read while waiting for another one: later waits look here first, so no
        # frame is lost to a wait that was looking for something else.
        self._backlog: list[Frame] = []

    @classmethod
    async def connect(cls, url: str, binary: bool = False, **kwargs: Any) -> Client:
        subprotocols = ["warmline.v1.msgpack"] if binary else kwargs.pop("subprotocols", None)
        # Unread frames must not stall the closing handshake behind flow control.
        kwargs.setdefault("max_queue", None)
        kwargs.setdefault("close_timeout", 2)
        ws = await websockets.connect(
            url, subprotocols=subprotocols, max_size=None, open_timeout=20, **kwargs
        )
        return cls(ws, binary)

    async def send(self, frame: Frame) -> None:
        if self.binary:
            await self.ws.send(msgpack.packb(frame, use_bin_type=True))
        else:
            await self.ws.send(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        if self._backlog:
            return self._backlog.pop(0)
        return await self._read(timeout)

    async def _read(self, timeout: float) -> Frame:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: Frame = (
            msgpack.unpackb(raw, raw=False) if isinstance(raw, bytes) else json.loads(raw)
        )
        self.received.append(frame)
        if frame.get("type") == "event":
            self.events.append(frame)
        return frame

    async def recv_until(
        self, predicate: Callable[[Frame], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> Frame:
        """Read until a frame matches; frames read meanwhile stay in `received`/`events`."""
        for index, frame in enumerate(self._backlog):
            if predicate(frame):
                return self._backlog.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame; last: {self.received[-5:]}")
            frame = await self._read(remaining)
            if predicate(frame):
                return frame
            self._backlog.append(frame)

    async def recv_type(self, kind: str, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> Frame:
        return await self.recv_until(
            lambda f: f.get("type") == kind and all(f.get(k) == v for k, v in fields.items()),
            timeout,
        )

    async def event(self, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> Frame:
        return await self.recv_type("event", timeout, **fields)

    async def request(self, frame: Frame, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Send a frame with a fresh ref and return the ack/error/pong that echoes it."""
        ref = frame.setdefault("ref", f"r{id(frame)}")
        await self.send(frame)
        return await self.recv_until(lambda f: f.get("ref") == ref, timeout)

    async def close(self) -> None:
        await self.ws.close()

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Drain until the server closes; return the close code."""
        try:
            while True:
                await self._read(timeout)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None

    # Roles -----------------------------------------------------------------------------------
    @classmethod
    async def customer(
        cls, server_url: str, tenant: str = "demo", **kwargs: Any
    ) -> tuple[Client, Frame]:
        client = await cls.connect(server_url, **kwargs)
        welcome = await client.request({"type": "hello", "tenant": tenant})
        assert welcome["type"] == "welcome", welcome
        return client, welcome

    @classmethod
    async def resume(
        cls, server_url: str, token: str, last_seq: int, tenant: str = "demo", **kwargs: Any
    ) -> tuple[Client, Frame]:
        client = await cls.connect(server_url, **kwargs)
        welcome = await client.request(
            {"type": "hello", "tenant": tenant, "token": token, "last_seq": last_seq}
        )
        assert welcome["type"] == "welcome", welcome
        return client, welcome

    @classmethod
    async def agent(cls, server_url: str, token: str, **hello: Any) -> tuple[Client, Frame]:
        client = await cls.connect(server_url)
        welcome = await client.request({"type": "hello", "token": token, **hello})
        assert welcome["type"] == "welcome", welcome
        return client, welcome
