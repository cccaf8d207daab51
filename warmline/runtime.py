"""Everything one node runs, built in order on start and torn down in reverse on close.

The app's lifespan owns one Runtime and hands it to endpoints through `request.state`
(starlette lifespan state), never through module globals.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from llm.base import Answerer
from llm.factory import build_answerer
from presence.backend import MemoryPresence, PresenceBackend
from presence.dispatcher import Dispatcher
from presence.table import STATUSES
from retrieval.base import Retriever
from retrieval.factory import build_retriever
from retrieval.jobs import IngestJobs
from warmline import metrics
from warmline.bot import BotRunner
from warmline.bus.base import Bus
from warmline.bus.memory import MemoryBus
from warmline.bus.republish import Republisher
from warmline.config import Config
from warmline.conversations import ConversationService
from warmline.errors import NotFound
from warmline.limits import build_limits
from warmline.models import Conversation, Event
from warmline.origins import origin_allowed, same_origin
from warmline.stats import StatsService
from warmline.store import open_store
from warmline.store.base import Store
from warmline.store.ids import new_id
from warmline.tasks import TaskOwner
from warmline.tokens import SessionSigner

if TYPE_CHECKING:
    from realtime.connection import Connection

log = logging.getLogger("warmline.runtime")

# The defaults of Config.rate_message_* / rate_typing_* (per second, burst); Config rules.


class ConnectionRegistry:
    def __init__(self) -> None:
        self._connections: set[Connection] = set()

    def add(self, connection: Connection) -> None:
        self._connections.add(connection)
        metrics.CONNECTIONS.labels(connection.role, "websocket").inc()

    def discard(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            metrics.CONNECTIONS.labels(connection.role, "websocket").dec()

    def __len__(self) -> int:
        return len(self._connections)

    async def drain(self, after_ms: int, timeout_s: float) -> None:
        connections = list(self._connections)
        for connection in connections:
            connection.begin_drain(after_ms)
        if connections:
            await asyncio.wait(
                [asyncio.ensure_future(c.closed.wait()) for c in connections], timeout=timeout_s
            )


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = config.node_id or new_id("node")
        self.draining = False
        self.connections = ConnectionRegistry()
        self.tasks = TaskOwner("background")
        self.started_at = time.time()

    async def start(self) -> None:
        config = self.config
        self.store: Store = open_store(config.db)
        await self.store.open()
        self.bus: Bus = self._build_bus()
        await self.bus.start()
        self.presence: PresenceBackend = self._build_presence()
        self.limits = build_limits(config)  # operations and safety: rate limits, origin cache
        keys = [k.strip().encode() for k in config.secret_key.split(",") if k.strip()]
        keys.append(await self.store.secret("session-signing"))
        self.signer = SessionSigner(keys, config.token_ttl_s)
        self.conversations = ConversationService(self.store, self.bus, self.signer)
        self.republisher = Republisher(self.bus)
        self.republisher.start()
        self.conversations.republisher = self.republisher
        self.conversations.state_hooks.append(self._count_transition)
        self.answerer: Answerer = build_answerer(config)
        if config.retriever == "hybrid":
            # Import the embedding stack here, before the model loads on a worker thread:
            # it shares modules (httpx) with the LLM client, and two threads importing one
            # module at once can see it half-initialised. Nothing is served yet.
            await asyncio.to_thread(importlib.import_module, "fastembed")
        self.retriever: Retriever = build_retriever(config, self.store)
        self.retriever.start()  # the embedding model loads in the background; BM25 serves meanwhile
        self.ingest_jobs = IngestJobs(self.store, retriever=self.retriever)
        self.bot = BotRunner(config, self.conversations, self.retriever, self.answerer, self.tasks)
        self.conversations.customer_message_hooks.append(self.bot.on_customer_message)
        self.dispatcher = Dispatcher(config, self.conversations, self.presence, self.tasks)
        self.dispatcher.start()
        self.stats = StatsService(self.store, self.dispatcher, config.reply_sla_s)

    def _build_bus(self) -> Bus:
        if not self.config.redis_url:
            return MemoryBus()
        from warmline.bus.redis import RedisBus

        return RedisBus(self.config.redis_url, node_id=self.node_id)

    def _build_presence(self) -> PresenceBackend:
        if not self.config.redis_url:
            return MemoryPresence()
        from presence.redis_backend import RedisPresence

        return RedisPresence(self.config.redis_url)

    async def drain(self) -> None:
        """SIGTERM: readiness goes 503, clients are told to reconnect elsewhere, writes finish."""
        self.draining = True
        await self.connections.drain(self.config.drain_reconnect_ms, self.config.drain_timeout_s)

    async def close(self) -> None:
        self.draining = True
        await self.dispatcher.close()
        await self.tasks.close(timeout_s=5.0)
        await self.ingest_jobs.close()
        await self.retriever.close()
        await self.answerer.close()
        await self.presence.close()
        await self.limits.close()
        await self.republisher.close()
        await self.bus.close()
        await self.store.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        ok = True
        if self.draining:
            return False, {"reason": "draining"}
        try:
            await asyncio.wait_for(self.store.ping(), timeout=2.0)
            checks["store"] = "ok"
        except Exception as exc:
            ok, checks["store"] = False, f"unavailable: {exc}"
        try:
            await asyncio.wait_for(self.bus.ping(), timeout=2.0)
            checks["bus"] = "ok" if self.bus.healthy else "unhealthy"
            ok = ok and self.bus.healthy
        except Exception as exc:
            ok, checks["bus"] = False, f"unavailable: {exc}"
        if not ok:
            checks["reason"] = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
        return ok, checks

    # Policies used by the transports (owned by the operations-and-safety work) -------------
    async def check_origin(self, request: HTTPConnection, tenant: str | None = None) -> bool:
        """May this browser page act for `tenant`? (None: the tenant named in the URL, if any;
        customers name theirs only in `hello`, so the transports ask again then.)

        Browsers always send Origin; without one it is not a browser, and without an
        allow-list every origin is accepted. Pages this server serves itself always are.
        """
        origin = request.headers.get("origin")
        tenant = tenant or request.query_params.get("tenant")
        if origin is None or not tenant or same_origin(origin, request.headers.get("host")):
            return True

        async def load(tenant_id: str) -> tuple[str, ...]:
            return (await self.store.get_tenant(tenant_id)).allowed_origins

        try:
            allowed = await self.limits.origins.get(tenant, load)
        except NotFound:
            return True  # the hello that follows fails with not_found on its own
        if origin_allowed(allowed, origin):
            return True
        log.info("refused origin %r for tenant %s", origin[:100], tenant)
        return False

    def _bucket(self, subject: Connection | str) -> tuple[str, str | None, bool]:
        """(bucket key, tenant, local?): a connection's own buckets stay on its node."""
        if isinstance(subject, str):
            return subject, None, False
        return subject.id, subject.tenant, True

    def forget_limits(self, owner: str) -> None:
        self.limits.forget_local(owner)

    async def check_rate(
        self, subject: Connection | str, kind: str, tenant: str | None = None
    ) -> None:
        """RateLimited with `retry_after_s` when over a limit.

        `subject` is a connection (its own buckets, and its tenant's) or a key shared across
        nodes: a long-polling conversation id, or a client address for `connect`/`poll`.
        """
        key, own_tenant, local = self._bucket(subject)
        await self.limits.check(kind, key, tenant=tenant or own_tenant, local=local)

    async def allow_typing(self, subject: Connection | str) -> bool:
        # Typing over the limit is dropped silently: it is ephemeral and the next one wins.
        key, _, local = self._bucket(subject)
        return (await self.limits.take("typing", key, local=local)).allowed

    # Metrics hooks ---------------------------------------------------------------------------
    def metrics_slow_consumer(self) -> None:
        metrics.SLOW_CONSUMERS.inc()

    def metrics_error(self, code: str) -> None:
        metrics.errors(code).inc()

    def metrics_frame_in(self, role: str) -> None:
        metrics.frames_in(role).inc()

    def metrics_frame_out(self, role: str, count: int = 1) -> None:
        metrics.frames_out(role).inc(count)

    def metrics_delivered(self, frame: dict[str, Any]) -> None:
        ts = frame.get("ts")
        if isinstance(ts, float):
            metrics.DELIVERY_LATENCY.observe(max(time.time() - ts, 0.0))

    async def metrics_collect(self) -> None:
        """Gauges read from state rather than counted as it happens; call before a scrape."""
        metrics.BUS_RECONNECTS.set(getattr(self.bus, "reconnects", 0))
        now = time.time()
        for tenant in await self.store.list_tenants():
            metrics.QUEUE_DEPTH.labels(tenant.id).set(len(await self.store.queued(tenant.id)))
            present = await self.presence.snapshot(tenant.id, now)
            for status in STATUSES:
                count = sum(p.status == status for p in present)
                metrics.AGENTS.labels(tenant.id, status).set(count)

    async def _count_transition(self, conversation: Conversation, event: Event) -> None:
        source, target = event.data.get("from", ""), event.data.get("to", "")
        metrics.TRANSITIONS.labels(source, target).inc()
        if target == "human" and conversation.queued_at and conversation.assigned_at:
            metrics.QUEUE_WAIT.observe(max(conversation.assigned_at - conversation.queued_at, 0.0))
