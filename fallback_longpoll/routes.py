"""`/v1/lp/customer/send` and `/v1/lp/customer/poll`: the HTTP shell around LongPoll."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fallback_longpoll.frames import parse_poll
from fallback_longpoll.service import LongPoll, error_reply
from warmline import logs
from warmline.errors import WarmlineError
from warmline.runtime import Runtime

# The widget runs on the tenant's site, so every request is cross-origin. No cookies are
# involved (the session token travels in the body, query or Authorization header), so
# allowing any origin exposes nothing the caller does not already hold.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}
HEADERS = {"Cache-Control": "no-store", **CORS}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, but never more than limit + 1 bytes of it: enough to know it is too large."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"\0" * (limit + 1)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


def _client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _json(body: Any, status: int) -> JSONResponse:
    headers = dict(HEADERS)
    frames = body if isinstance(body, list) else body.get("frames", [])
    retry = next((f.get("retry_after_s") for f in frames if f.get("type") == "error"), None)
    if status == 429 and isinstance(retry, int | float):
        headers["Retry-After"] = str(max(1, round(retry)))
    return JSONResponse(body, status_code=status, headers=headers)


def routes(service: LongPoll | None = None) -> list[Route]:
    """One LongPoll per app: its poll bookkeeping is about the requests this node holds."""
    longpoll = service or LongPoll()

    async def preflight(request: Request) -> Response:
        return Response(status_code=204, headers=CORS)

    async def send(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await preflight(request)
        runtime = _runtime(request)
        logs.bind(request_id=logs.request_id(request.headers.get("x-request-id")))
        body = await read_limited(request, runtime.config.max_frame_bytes)
        authorization = request.headers.get("authorization")
        status, replies = await longpoll.send(runtime, body, authorization, request)
        return _json(replies, status)

    async def poll(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await preflight(request)
        runtime = _runtime(request)
        logs.bind(request_id=logs.request_id(request.headers.get("x-request-id")))
        try:
            params = parse_poll(request.query_params, request.headers.get("authorization"))
        except WarmlineError as exc:
            status, error = error_reply(runtime, exc, None)
            return _json({"frames": [error]}, status)

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        ip = _client_ip(request)
        status, body = await longpoll.poll(runtime, params, ip, disconnected, request)
        return _json(body, status)

    return [
        Route("/v1/lp/customer/send", send, methods=["POST", "OPTIONS"]),
        Route("/v1/lp/customer/poll", poll, methods=["GET", "OPTIONS"]),
    ]
