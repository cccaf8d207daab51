"""Frames to and from the socket without an `await` per frame.

ASGI hands a WebSocket application one message per `await receive()` and takes one per
`await send()`, and uvicorn pauses the socket's reading after every received frame until the
application asks for the next. For a chat node that is most of the cost of a message: every
frame sent is an ASGI message, a coroutine and a `transport.write` of its own, and every frame
received is a pause and a resume of the socket.

`FramedWebSocketProtocol` is uvicorn's own sans-I/O WebSocket protocol with two changes:
- it offers `FrameSink` through the `warmline.frames` ASGI extension: a synchronous write of
  any number of frames as one `transport.write`, and the transport's flow-control state;
- it reads ahead up to READ_AHEAD_FRAMES frames before it pauses the socket.

The handshake, closing, keepalive and everything else are uvicorn's, unchanged. Under
another server (`uvicorn --ws websockets-sansio`, say) the extension is absent and the
connection falls back to `AsgiFrameSink`, which sends through ASGI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

EXTENSION = "warmline.frames"

# Frames received but not yet read by the application before the socket stops reading: a
# client cannot make the node buffer more than this many of its frames (each at most
# `ws_max_size`).
READ_AHEAD_FRAMES = 16


class FrameSink(Protocol):
    def write_frames(self, payloads: Sequence[str | bytes]) -> bool:
        """Write the frames now, in order; False when the connection can take no more."""
        ...

    def paused(self) -> bool:
        """True while the transport's buffer is above its high-water mark."""
        ...

    async def wait_writable(self) -> None: ...

    async def drain(self) -> None:
        """Return once every frame written so far is out (before a close frame goes)."""
        ...

    async def discard(self) -> None:
        """Drop whatever is not out yet (a slow consumer being cut off)."""
        ...


class FramedWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][EXTENSION] = {"sink": self}

    # FrameSink -----------------------------------------------------------------------------
    def write_frames(self, payloads: Sequence[str | bytes]) -> bool:
        if self.disconnected or self.close_sent or not self.handshake_complete:
            return False
        if self.initial_response is not None or self.transport.is_closing():
            return False
        conn = self.conn
        try:
            for payload in payloads:
                if isinstance(payload, str):
                    conn.send_text(payload.encode())
                else:
                    conn.send_binary(payload)
        except InvalidState:
            return False
        self.transport.write(b"".join(conn.data_to_send()))
        return True

    def paused(self) -> bool:
        return not self.writable.is_set()

    async def wait_writable(self) -> None:
        await self.writable.wait()

    async def drain(self) -> None:
        return None  # written to the transport at once; a close frame queues behind them

    async def discard(self) -> None:
        return None

    # Reading -------------------------------------------------------------------------------
    def send_receive_event_to_app(self) -> None:
        # uvicorn pauses reading whenever `read_paused` is False; hold it True across the
        # call so that only a full read-ahead pauses the socket.
        was_paused = self.read_paused
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = was_paused
        if (
            not was_paused
            and self.queue.qsize() >= READ_AHEAD_FRAMES
            and not self.transport.is_closing()
        ):
            self.read_paused = True
            self.transport.pause_reading()


class AsgiFrameSink:
    """The same contract over plain ASGI `send`: frames go out in order from one task."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._outbox: deque[str | bytes] = deque()
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def write_frames(self, payloads: Sequence[str | bytes]) -> bool:
        if self._failed:
            return False
        self._outbox.extend(payloads)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return True

    def paused(self) -> bool:
        return bool(self._outbox)

    async def wait_writable(self) -> None:
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait((task,))

    async def drain(self) -> None:
        await self.wait_writable()

    async def _drain(self) -> None:
        try:
            while self._outbox:
                payload = self._outbox.popleft()
                if isinstance(payload, bytes):
                    await self._send({"type": "websocket.send", "bytes": payload})
                else:
                    await self._send({"type": "websocket.send", "text": payload})
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed = True
            self._outbox.clear()

    async def discard(self) -> None:
        self._outbox.clear()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
