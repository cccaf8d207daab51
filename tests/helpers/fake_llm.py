"""An OpenAI-compatible chat server for tests, scriptable per test, on a free port.

    with FakeLLM() as llm:
        llm.script(reply="Returns are free [1].", first_token_delay_s=0.2, fail_times=2)
        client = openai.AsyncOpenAI(base_url=llm.url, api_key="test", max_retries=0)
        ...
        llm.requests   # the JSON bodies received, in order

`POST /v1/chat/completions` answers in the real OpenAI format, as SSE `chat.completion.chunk`s
ending with `data: [DONE]` when `stream` is true, as one `chat.completion` otherwise. The server
(starlette on uvicorn) runs in a background thread with its own event loop; readiness is an
event set by uvicorn's startup, and `stop()` releases hung requests, so nothing waits on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass(frozen=True)
class Script:
    reply: str = "Hello! [1]"
    first_token_delay_s: float = 0.0  # after the headers and the role chunk, before any content
    token_delay_s: float = 0.0
    fail_times: int = 0  # the next N requests get `fail_status`
    fail_status: int = 500
    hang: bool = False  # never answer (not even headers) until the server stops
    hang_after_tokens: int | None = None  # stream N content chunks, then hang
    tokens: tuple[str, ...] | None = None  # explicit content chunks; default: split `reply`


def split_tokens(text: str) -> list[str]:
    """Word-ish pieces with their leading space, like a tokenizer's output."""
    return re.findall(r"\s*\S+", text) or [text]


class ThreadedServer(uvicorn.Server):
    """uvicorn in a thread of the test process; `started` is set once it listens."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._started_event.set()


class FakeLLM:
    def __init__(self, script: Script = Script(), host: str = "127.0.0.1") -> None:
        self._script = script
        self._lock = threading.Condition()
        self._failures_left = script.fail_times
        self.requests: list[dict[str, Any]] = []
        self.host = host
        self.port = 0
        self._sock: socket.socket | None = None
        self._server: ThreadedServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        """The base URL for `openai.AsyncOpenAI(base_url=...)`."""
        return f"http://{self.host}:{self.port}/v1"

    def script(self, **changes: Any) -> Script:
        """Change what the next requests get; `fail_times` restarts its count."""
        with self._lock:
            self._script = replace(self._script, **changes)
            self._failures_left = self._script.fail_times
            return self._script

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until `count` requests have arrived (async tests: via asyncio.to_thread)."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= count, timeout)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> FakeLLM:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
        )
        self._server = ThreadedServer(config, self._started)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-llm", daemon=True
        )
        self._thread.start()
        if not self._started.wait(timeout):
            self.stop()
            raise RuntimeError("fake LLM server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the app -----------------------------------------------------------------------------

    def _next(self, body: dict[str, Any]) -> tuple[Script, bool]:
        with self._lock:
            self.requests.append(body)
            self._lock.notify_all()
            script = self._script
            fail = self._failures_left > 0
            if fail:
                self._failures_left -= 1
            return script, fail

    async def _hold(self) -> None:
        """Wait until the server stops (a hung upstream), without a timer."""
        assert self._release is not None
        await self._release.wait()

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        if self._release is None:  # created on the server's own loop
            self._loop = asyncio.get_running_loop()
            self._release = asyncio.Event()
        body = await request.json()
        script, fail = self._next(body)
        if fail:
            return JSONResponse(
                {"error": {"message": "scripted failure", "type": "server_error", "code": None}},
                status_code=script.fail_status,
            )
        if script.hang:
            await self._hold()
            return JSONResponse({"error": {"message": "shutting down"}}, status_code=503)
        model = str(body.get("model", "fake"))
        tokens = list(script.tokens) if script.tokens is not None else split_tokens(script.reply)
        if not body.get("stream"):
            await asyncio.sleep(script.first_token_delay_s)
            return JSONResponse(_completion(model, "".join(tokens)))
        return StreamingResponse(self._sse(model, tokens, script), media_type="text/event-stream")

    async def _sse(self, model: str, tokens: list[str], script: Script) -> AsyncIterator[str]:
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        yield _event(_chunk(cid, created, model, {"role": "assistant", "content": ""}))
        if script.first_token_delay_s:
            await asyncio.sleep(script.first_token_delay_s)
        for i, token in enumerate(tokens):
            if script.hang_after_tokens is not None and i >= script.hang_after_tokens:
                await self._hold()
                return
            if i and script.token_delay_s:
                await asyncio.sleep(script.token_delay_s)
            yield _event(_chunk(cid, created, model, {"content": token}))
        yield _event(_chunk(cid, created, model, {}, finish_reason="stop"))
        yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"


def _chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
