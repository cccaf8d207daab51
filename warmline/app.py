"""The ASGI application: routes, lifespan, and nothing else."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from realtime.agent import AgentConnection, SupervisorConnection
from realtime.customer import CustomerConnection
from retrieval.jobs import sources_from_json
from warmline.config import Config
from warmline.demo import DemoInfo, seed_demo
from warmline.errors import BadRequest, Forbidden, NotFound, TooLarge, Unauthorized, WarmlineError
from warmline.runtime import Runtime

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"


def _runtime(request: Request | WebSocket) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


def error_response(error: WarmlineError) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "code": error.code, "message": error.message},
        status_code=error.http_status,
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    ok, checks = await _runtime(request).readiness()
    return JSONResponse({"status": "ready" if ok else "unavailable", **checks}, 200 if ok else 503)


async def metrics_endpoint(request: Request) -> Response:
    await _runtime(request).metrics_collect()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def bearer_agent(request: Request, role: str) -> Any:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Unauthorized("missing bearer token")
    agent = await _runtime(request).store.agent_by_token(header[7:].strip())
    if agent is None:
        raise Unauthorized("unknown or revoked token")
    if agent.role != role:
        raise Forbidden(f"a {role} token is required")
    return agent


async def api_stats(request: Request) -> Response:
    try:
        supervisor = await bearer_agent(request, "supervisor")
        tenant = request.query_params.get("tenant") or supervisor.tenant
        if tenant != supervisor.tenant:
            raise Forbidden("another tenant's stats")
        return JSONResponse(await _runtime(request).stats.snapshot(tenant))
    except WarmlineError as exc:
        return error_response(exc)


MAX_KB_BODY_BYTES = 16 * 1024 * 1024


async def _supervisor_tenant(request: Request) -> tuple[Any, str]:
    supervisor = await bearer_agent(request, "supervisor")
    tenant = request.query_params.get("tenant") or supervisor.tenant
    if tenant != supervisor.tenant:
        raise Forbidden("another tenant's knowledge base")
    return supervisor, tenant


async def api_kb_ingest(request: Request) -> Response:
    """Queue documents for ingestion; 202 with the job, whose progress GET /jobs/{id} shows."""
    try:
        _, tenant = await _supervisor_tenant(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_KB_BODY_BYTES:
            raise TooLarge(f"body larger than {MAX_KB_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_KB_BODY_BYTES:
            raise TooLarge(f"body larger than {MAX_KB_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise BadRequest("the body must be JSON") from exc
        jobs = _runtime(request).ingest_jobs
        job_id = jobs.start(tenant, sources_from_json(payload))
        return JSONResponse(jobs.status(job_id), status_code=202)
    except WarmlineError as exc:
        return error_response(exc)


async def api_kb_job(request: Request) -> Response:
    try:
        _, tenant = await _supervisor_tenant(request)
        return JSONResponse(
            _runtime(request).ingest_jobs.status(request.path_params["job_id"], tenant=tenant)
        )
    except WarmlineError as exc:
        return error_response(exc)


async def api_kb_documents(request: Request) -> Response:
    try:
        _, tenant = await _supervisor_tenant(request)
        documents = await _runtime(request).store.list_documents(tenant)
        return JSONResponse(
            {
                "documents": [
                    {"doc_id": d.doc_id, "title": d.title, "url": d.url, "updated_at": d.updated_at}
                    for d in documents
                ]
            }
        )
    except WarmlineError as exc:
        return error_response(exc)


async def api_kb_delete(request: Request) -> Response:
    try:
        _, tenant = await _supervisor_tenant(request)
        runtime = _runtime(request)
        doc_id = request.path_params["doc_id"]
        if not await runtime.store.delete_document(tenant, doc_id):
            raise NotFound(f"no document {doc_id!r}")
        # Gone from answers at once on this node; other nodes see the kb_version change.
        await runtime.retriever.forget_document(tenant, doc_id)
        return JSONResponse({"deleted": doc_id})
    except WarmlineError as exc:
        return error_response(exc)


async def api_demo(request: Request) -> Response:
    demo: DemoInfo | None = request.state.demo
    if demo is None:
        return JSONResponse(
            {"type": "error", "code": "not_found", "message": "not in demo mode"}, 404
        )
    return JSONResponse(
        {
            "tenant": demo.tenant,
            "agent_token": demo.agent_token,
            "supervisor_token": demo.supervisor_token,
        }
    )


# The widget is embedded on tenants' own sites: its scripts are loaded cross-origin (as ES
# modules, which browsers fetch in CORS mode). They carry no secrets, so any origin may load them.
PUBLIC_ASSET_HEADERS = {"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"}


class PublicStaticFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PUBLIC_ASSET_HEADERS)
        return response


def _page(name: str) -> Any:
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / name, headers=PUBLIC_ASSET_HEADERS)

    return page


ConnectionKind = type[CustomerConnection] | type[AgentConnection]

# The WebSocket endpoints, also served by WarmlineApp without the router (see there).
WEBSOCKETS: dict[str, ConnectionKind] = {
    "/v1/ws/customer": CustomerConnection,
    "/v1/ws/agent": AgentConnection,
    "/v1/ws/supervisor": SupervisorConnection,
}


def ws_endpoint(kind: ConnectionKind) -> Any:
    async def endpoint(websocket: WebSocket) -> None:
        await kind(websocket, _runtime(websocket)).run()

    return endpoint


def _route_path(scope: Scope) -> str:
    """The path below the app's root_path, as Starlette's router matches it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


class WarmlineApp(Starlette):
    """Starlette, except that `/v1/ws/*` handshakes go straight to their connection class.

    The router and middleware stack wrap every request in closures (exception handlers,
    route matching) that a WebSocket would keep for its whole life: some 4 KiB per idle
    connection. A WebSocket endpoint needs none of it: it handles its own errors, and origin,
    rate and logging context are the connection's own work (`Connection.run`). Everything
    else, lifespan included, goes through Starlette as usual.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            kind = WEBSOCKETS.get(_route_path(scope))
            if kind is not None:
                await kind(WebSocket(scope, receive, send), scope["state"]["runtime"]).run()
                return
        await super().__call__(scope, receive, send)


def create_app(config: Config | None = None) -> WarmlineApp:
    config = config or Config.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = Runtime(config)
        await runtime.start()
        demo = await seed_demo(runtime.store) if config.demo else None
        # The server's graceful shutdown drains through this before uvicorn closes sockets.
        app.state.runtime = runtime
        try:
            yield {"runtime": runtime, "demo": demo}
        finally:
            await runtime.close()

    routes: list[Any] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/api/stats", api_stats),
        Route("/v1/api/demo", api_demo),
        Route("/v1/api/kb/documents", api_kb_documents, methods=["GET"]),
        Route("/v1/api/kb/documents", api_kb_ingest, methods=["POST"]),
        Route("/v1/api/kb/documents/{doc_id:path}", api_kb_delete, methods=["DELETE"]),
        Route("/v1/api/kb/jobs/{job_id}", api_kb_job, methods=["GET"]),
        # Listed for the record (and served this way if mounted elsewhere); WarmlineApp
        # answers these paths before the router.
        *(WebSocketRoute(path, ws_endpoint(kind)) for path, kind in WEBSOCKETS.items()),
        Route("/", _page("index.html")),
        Route("/agent", _page("agent.html")),
        Route("/supervisor", _page("supervisor.html")),
        Route("/widget.js", _page("widget.js")),
        Mount("/static", PublicStaticFiles(directory=STATIC), name="static"),
    ]
    try:
        from fallback_longpoll.routes import routes as longpoll_routes

        routes[5:5] = longpoll_routes()
    except ImportError:
        pass
    return WarmlineApp(routes=routes, lifespan=lifespan)


def app_factory() -> WarmlineApp:
    """For `uvicorn warmline.app:app_factory --factory`: configuration from the environment."""
    return create_app(Config.from_env())
