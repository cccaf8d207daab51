"""The store for several hosts: PostgreSQL through an asyncpg pool.

Nodes on different hosts share one database server, so the guarantees SQLite gets from a
single writer come from the database itself:

- gap-free `seq` per conversation: an append bumps `conversations.last_seq` with
  `UPDATE … RETURNING` in the same transaction that inserts the event, which row-locks the
  conversation until commit; writers on other nodes wait on that lock, and a rolled-back
  append gives its number back. Append and transition are each ONE statement (data-modifying
  CTEs, see append_sql/transition_sql): one round trip, and the row lock is held inside the
  server for that statement and its commit, never across the network.
- idempotent messages: the append's UPDATE matches nothing when the client key is already
  stored, and then nothing is written. A resend that another node committed while this one
  waited on the row lock is invisible to this statement's snapshot, but the unique index on
  (tenant, conversation_id, client_key) refuses the duplicate, the statement (seq bump
  included) rolls back, and the stored event is the answer.
- compare-and-set transitions: `UPDATE conversations … WHERE id = $1 AND version = $2 AND
  state = $3`; a loser's update matches no row (PostgreSQL re-checks the condition on the row
  the winner committed), so exactly one of any number of racing claims wins.
- the dispatcher: `claim_next_queued` takes the head of a tenant's queue with
  `FOR UPDATE SKIP LOCKED`, so dispatchers on several nodes each get a different conversation
  instead of queueing behind one row lock and then losing the compare-and-set. `queued()` is a
  plain MVCC read: it locks nothing (it feeds queue positions and the planning dispatcher, and
  locking rows just to list them would make every reader write to them).

Writes within this process are also ordered per conversation (a FIFO lock per conversation
id), so concurrent calls land in the order they were made, as with SQLite's single writer,
and one busy conversation holds at most one pool connection instead of a pile of connections
waiting on its row lock. Group commit is SQLite's concern; here every write is one short
transaction and the pool gives concurrency (the server batches concurrent commits' WAL
flushes by itself).

Errors map as in the SQLite store: NotFound, Conflict, BadRequest; anything the server or the
network refuses (connection lost, server down or restarting, timeouts, too many connections,
a constraint no caller anticipated) is Unavailable.

The URL may carry pool settings (`pool_min_size`, `pool_max_size`, `connect_timeout`,
`command_timeout`, `statement_cache_size`, see parse_url) and any server setting, which
asyncpg sends at connect (`?synchronous_commit=off` trades the last few commits on a server
crash for fewer fsyncs).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from warmline.errors import BadRequest, Conflict, NotFound, Unavailable, WarmlineError
from warmline.models import Agent, Chunk, Conversation, Document, Event, Tenant
from warmline.store.base import (
    AppendedMessage,
    MessageRequest,
    Store,
    TenantStats,
    TransitionRequest,
)
from warmline.store.ids import client_key, hash_token, new_agent_token, new_id
from warmline.store.pg_migrations import MIGRATIONS, migrate
from warmline.store.rules import (
    AGENT_COLUMNS,
    CONVERSATION_COLUMNS,
    TENANT_COLUMNS,
    agent_from_row,
    conversation_from_row,
    handle_time,
    message_event_data,
    message_id_for,
    refusal,
    state_event_data,
    transition_changes,
)

log = logging.getLogger("warmline.store.postgres")

T = TypeVar("T")

# Deadlocks and serialization failures roll the whole transaction back, so running it again is
# safe; they are rare here (each write locks one conversation or one tenant row).
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
MAX_ATTEMPTS = 3
PREVIEW_CHARS = 140


# Pure helpers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolOptions:
    dsn: str
    min_size: int = 1
    max_size: int = 10
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 30.0
    # 0 turns asyncpg's prepared-statement cache off, as PgBouncer in transaction mode needs.
    statement_cache_size: int = 100


_POOL_PARAMS = {
    "pool_min_size": "min_size",
    "pool_max_size": "max_size",
    "connect_timeout": "connect_timeout_s",
    "command_timeout": "command_timeout_s",
    "statement_cache_size": "statement_cache_size",
}


def parse_url(url: str) -> PoolOptions:
    """Split Warmline's connection settings out of the URL's query; the rest goes to asyncpg
    (libpq parameters such as `sslmode`, and server settings such as `synchronous_commit`).

    `postgresql://u@db/warmline?pool_max_size=20&command_timeout=10&sslmode=require` gives
    a pool of at most 20 connections and 10 s statements, and libpq's `sslmode` to asyncpg.
    """
    parts = urlsplit(url)
    keep: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        field = _POOL_PARAMS.get(key)
        if field is None:
            keep.append((key, value))
            continue
        try:
            number = float(value) if field.endswith("_s") else int(value)
        except ValueError as exc:
            raise BadRequest(f"{key} must be a number, not {value!r}") from exc
        if number < 0 or (number == 0 and field != "statement_cache_size"):
            raise BadRequest(f"{key} must be positive")
        options[field] = number
    min_size = int(options.get("min_size", 1))
    max_size = int(options.get("max_size", max(10, min_size)))
    if min_size > max_size:
        raise BadRequest("pool_min_size must not exceed pool_max_size")
    dsn = urlunsplit(parts._replace(query=urlencode(keep)))
    return PoolOptions(
        dsn,
        min_size,
        max_size,
        float(options.get("connect_timeout_s", 10.0)),
        float(options.get("command_timeout_s", 30.0)),
        int(options.get("statement_cache_size", 100)),
    )


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def preview_of(text: str) -> str:
    # PostgreSQL text cannot hold NUL; the preview is only for display, so drop them there
    # (the message itself is kept verbatim in the event's json).
    return text[:PREVIEW_CHARS].replace("\x00", "")


@functools.cache
def append_sql(role: str) -> str:
    """One statement appends a message: its own transaction, one round trip.

    The UPDATE takes the next seq and row-locks the conversation; it matches nothing when the
    conversation refuses the message (state, owner) or already holds this client key, and then
    nothing is written. The lock is held inside the server for one statement and its commit,
    never across a network round trip, so nodes far from the database still take turns on a
    busy conversation quickly.
    """
    extra = ""
    if role == "customer":
        # The reply clock starts with the first unanswered customer message.
        extra = (
            ", awaiting_agent_since = CASE WHEN state = 'human' "
            "THEN COALESCE(awaiting_agent_since, $2) ELSE awaiting_agent_since END"
            ", preview = $7"
        )
    elif role == "agent":
        extra = ", awaiting_agent_since = NULL"
    return (
        "WITH bumped AS ("
        f"UPDATE conversations SET last_seq = last_seq + 1, updated_at = $2{extra} "
        "WHERE id = $1 "
        "AND ($4::text[] IS NULL OR state = ANY ($4::text[])) "
        "AND ($5::text IS NULL OR (state = 'human' AND agent_id = $5::text)) "
        "AND ($3::text IS NULL OR NOT EXISTS (SELECT 1 FROM events e "
        "WHERE e.tenant = conversations.tenant AND e.conversation_id = $1 "
        "AND e.client_key = $3::text)) "
        "RETURNING tenant, last_seq, state), "
        "inserted AS (INSERT INTO events (tenant, conversation_id, seq, ts, kind, client_key, "
        "data) SELECT tenant, $1, last_seq, $2, 'message', $3, $6::json FROM bumped "
        "RETURNING seq) "
        "SELECT inserted.seq, bumped.state FROM inserted, bumped"
    )


@functools.cache
def transition_sql(columns: tuple[str, ...]) -> str:
    """One statement applies a transition: compare-and-set, state event, handle time.

    $1 id, $2 expected version, $3 expected state, $4 now, $5 event json, $6 the agent who
    held it, $7 handle time (NULL unless a human resolution), $8… the columns' new values.
    A racing writer that committed first leaves the WHERE matching nothing (PostgreSQL
    re-checks it against the committed row), so nothing at all is written.
    """
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=8))
    return (
        f"WITH updated AS (UPDATE conversations SET {assignments}, last_seq = last_seq + 1 "
        f"WHERE id = $1 AND version = $2 AND state = $3 RETURNING {CONVERSATION_COLUMNS}), "
        "event AS (INSERT INTO events (tenant, conversation_id, seq, ts, kind, client_key, "
        "data) SELECT tenant, id, last_seq, $4, 'state', NULL, $5::json FROM updated), "
        "handled AS (INSERT INTO handle_times (tenant, conversation_id, seq, agent_id, seconds, "
        "resolved_at) SELECT tenant, id, last_seq, $6::text, $7::double precision, $4 "
        "FROM updated WHERE $7::double precision IS NOT NULL) "
        "SELECT * FROM updated"
    )


class KeyedLocks:
    """FIFO asyncio locks per key, dropped once nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            # An uncontended asyncio.Lock is taken without yielding, so calls made in order
            # (say, by asyncio.gather) hold it in that order.
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


# The store -------------------------------------------------------------------------------------
class PostgresStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self.options = parse_url(url)
        self._pool: asyncpg.Pool | None = None
        self._conversation_locks = KeyedLocks()

    # Lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        options = self.options
        try:
            pool = await asyncpg.create_pool(
                options.dsn,
                min_size=options.min_size,
                max_size=options.max_size,
                timeout=options.connect_timeout_s,
                command_timeout=options.command_timeout_s,
                statement_cache_size=options.statement_cache_size,
                server_settings={"application_name": "warmline"},
                reset=_keep_session,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _unavailable(f"cannot connect to PostgreSQL at {redact(self.url)}", exc) from exc
        try:
            async with pool.acquire() as conn:
                version, applied = await migrate(conn, MIGRATIONS)
        except BaseException as exc:
            pool.terminate()
            if isinstance(
                exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError
            ):
                raise _unavailable("migrating the PostgreSQL schema failed", exc) from exc
            raise
        if applied:
            log.info("applied migrations %s; schema at version %d", applied, version)
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            # Graceful: waits for connections in use to come back, then closes them.
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def schema_version(self) -> int:
        async with self._connection() as conn:
            version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(version)

    # Plumbing ------------------------------------------------------------------------------
    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise Unavailable("store is closed")
        try:
            async with pool.acquire(timeout=self.options.connect_timeout_s) as conn:
                yield conn
        except (WarmlineError, asyncio.CancelledError):
            raise
        except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError) as exc:
            raise BadRequest("text the database cannot store (NUL character)") from exc
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            OSError,
            TimeoutError,
            UnicodeError,
        ) as exc:
            raise _unavailable("store operation failed", exc) from exc

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run fn in one transaction; again (up to MAX_ATTEMPTS) after a deadlock."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._connection() as conn, conn.transaction():
                    return await fn(conn)
            except Unavailable as exc:
                if attempt < MAX_ATTEMPTS and isinstance(exc.__cause__, RETRYABLE):
                    continue
                raise
        raise AssertionError("unreachable")

    # Secrets -------------------------------------------------------------------------------
    async def secret(self, name: str, generate_bytes: int = 32) -> bytes:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                name,
                secrets.token_bytes(generate_bytes),
            )
            # A separate statement: READ COMMITTED gives it a fresh snapshot, which sees the
            # value a racing node committed while our insert waited and then did nothing.
            value = await conn.fetchval("SELECT value FROM secrets WHERE name = $1", name)
        return bytes(value)

    # Tenants -------------------------------------------------------------------------------
    async def add_tenant(
        self, tenant_id: str, name: str = "", allowed_origins: Sequence[str] = ()
    ) -> Tenant:
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(
                    "INSERT INTO tenants (id, name, created_at, allowed_origins) "
                    f"VALUES ($1, $2, $3, $4) RETURNING {TENANT_COLUMNS}",
                    tenant_id,
                    name or tenant_id,
                    time.time(),
                    list(allowed_origins),
                )
        except Unavailable as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise Conflict(f"tenant {tenant_id!r} already exists") from exc
            raise
        return _tenant(row)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1", tenant_id
            )
        if row is None:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id")
        return [_tenant(r) for r in rows]

    async def set_allowed_origins(self, tenant_id: str, origins: Sequence[str]) -> Tenant:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE tenants SET allowed_origins = $2 WHERE id = $1 RETURNING {TENANT_COLUMNS}",
                tenant_id,
                list(origins),
            )
        if row is None:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return _tenant(row)

    # Agents --------------------------------------------------------------------------------
    async def add_agent(
        self, tenant_id: str, name: str, role: str = "agent", token: str | None = None
    ) -> tuple[Agent, str]:
        if role not in ("agent", "supervisor"):
            raise BadRequest(f"unknown role {role!r}")
        token = token or new_agent_token()
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(
                    "INSERT INTO agents (tenant, id, name, role, token_hash, created_at) "
                    "SELECT id, $2, $3, $4, $5, $6 FROM tenants WHERE id = $1 "
                    f"RETURNING {AGENT_COLUMNS}",
                    tenant_id,
                    new_id("a"),
                    name,
                    role,
                    hash_token(token),
                    time.time(),
                )
        except Unavailable as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise Conflict("this token is already in use") from exc
            raise
        if row is None:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return _agent(row), token

    async def agent_by_token(self, token: str) -> Agent | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {AGENT_COLUMNS} FROM agents WHERE token_hash = $1 AND NOT revoked",
                hash_token(token),
            )
        return _agent(row) if row is not None else None

    async def get_agent(self, agent_id: str) -> Agent:
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1", agent_id)
        if row is None:
            raise NotFound(f"unknown agent {agent_id!r}")
        return _agent(row)

    async def list_agents(self, tenant_id: str | None = None) -> list[Agent]:
        async with self._connection() as conn:
            if tenant_id is None:
                rows = await conn.fetch(f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY tenant, name")
            else:
                rows = await conn.fetch(
                    f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 ORDER BY name", tenant_id
                )
        return [_agent(r) for r in rows]

    async def revoke_agent(self, agent_id: str) -> Agent:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE agents SET revoked = true WHERE id = $1 RETURNING {AGENT_COLUMNS}",
                agent_id,
            )
        if row is None:
            raise NotFound(f"unknown agent {agent_id!r}")
        return _agent(row)

    # Conversations -------------------------------------------------------------------------
    async def create_conversation(self, tenant_id: str) -> Conversation:
        now = time.time()
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO conversations (tenant, id, state, version, last_seq, created_at, "
                "updated_at) SELECT id, $2, 'bot', 0, 0, $3, $3 FROM tenants WHERE id = $1 "
                f"RETURNING {CONVERSATION_COLUMNS}",
                tenant_id,
                new_id("c"),
                now,
            )
        if row is None:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return _conversation(row)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        async with self._connection() as conn:
            return await _conversation_row(conn, conversation_id)

    async def append_message(self, request: MessageRequest) -> AppendedMessage:
        cid = request.conversation_id
        key = client_key(dict(request.author), request.client_id) if request.client_id else None
        message_id = message_id_for(request)
        role = request.author.get("role")
        data = message_event_data(request, message_id)
        payload = json.dumps(data)
        allowed = sorted(request.allowed_states) if request.allowed_states is not None else None
        sql = append_sql(str(role))

        async with self._conversation_locks.hold(cid):
            for _ in range(MAX_ATTEMPTS):
                now = time.time()
                args: list[Any] = [cid, now, key, allowed, request.owner_agent_id, payload]
                if role == "customer":
                    args.append(preview_of(request.text))
                try:
                    async with self._connection() as conn:
                        appended = await conn.fetchrow(sql, *args)
                        if appended is not None:
                            event = Event(cid, int(appended[0]), now, "message", data)
                            return AppendedMessage(event, True, appended[1])
                        # Nothing written (and nothing locked any more): find out why.
                        current = await _conversation_row(conn, cid)
                        if key is not None:
                            stored = await _event_by_key(conn, cid, key)
                            if stored is not None:
                                return AppendedMessage(stored, False, current.state)
                except Unavailable as exc:
                    # A resend committed by another node while this one waited on the row
                    # lock: the statement's snapshot could not see it, the unique index did,
                    # and the whole statement (seq bump included) was rolled back.
                    if key is None or not isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                        raise
                    async with self._connection() as conn:
                        stored = await _event_by_key(conn, cid, key)
                        current = await _conversation_row(conn, cid)
                    if stored is None:
                        raise
                    return AppendedMessage(stored, False, current.state)
                refused = refusal(request, current.state, current.agent_id)
                if refused is not None:
                    raise refused
                # Refused a moment ago, acceptable now: the state changed meanwhile; again.
            raise Conflict("the conversation kept changing", state=current.state)

    async def apply_transition(self, request: TransitionRequest) -> tuple[Conversation, Event]:
        async with (
            self._conversation_locks.hold(request.conversation_id),
            self._connection() as conn,
        ):
            # Read without a lock: the update only applies if nothing changed since.
            current = await _conversation_row(conn, request.conversation_id)
            _check_expected(current, request)
            agent = await _agent_brief(conn, request.agent_id)
            return await _transition(conn, current, request, agent, time.time())

    async def claim_next_queued(
        self,
        tenant_id: str,
        agent_id: str,
        trigger: str = "assign",
        reason: str = "dispatched",
    ) -> tuple[Conversation, Event] | None:
        """Assign the head of the tenant's queue to the agent; None when nothing is left.

        `FOR UPDATE SKIP LOCKED` passes over conversations another node is assigning right
        now, so dispatchers on several nodes drain one queue in parallel, each taking a
        different conversation, rather than all waiting on the first row and all but one
        losing the compare-and-set. Conversations that passed this agent over are skipped.
        """
        async with self._connection() as conn:
            agent = await _agent_brief(conn, agent_id)

        async def op(conn: asyncpg.Connection) -> tuple[Conversation, Event] | None:
            row = await conn.fetchrow(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations "
                "WHERE tenant = $1 AND state = 'queued' "
                "AND NOT ($2 = ANY (passed_over)) ORDER BY priority DESC, queued_at, id "
                "LIMIT 1 FOR UPDATE SKIP LOCKED",
                tenant_id,
                agent_id,
            )
            if row is None:
                return None
            current = _conversation(row)
            request = TransitionRequest(
                current.id, current.version, "queued", "human", trigger, reason, agent_id=agent_id
            )
            return await _transition(conn, current, request, agent, time.time())

        return await self._transaction(op)

    async def events_after(
        self, conversation_id: str, after_seq: int, limit: int = 1000
    ) -> list[Event]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT conversation_id, seq, ts, kind, data FROM events "
                "WHERE tenant = (SELECT tenant FROM conversations WHERE id = $1) "
                "AND conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                conversation_id,
                after_seq,
                limit,
            )
        return [_event(r) for r in rows]

    async def queued(self, tenant_id: str) -> list[Conversation]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations "
                "WHERE tenant = $1 AND state = 'queued' "
                "ORDER BY priority DESC, queued_at, id",
                tenant_id,
            )
        return [_conversation(r) for r in rows]

    async def owned_by(self, agent_id: str) -> list[Conversation]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations "
                "WHERE tenant = (SELECT tenant FROM agents WHERE id = $1) "
                "AND agent_id = $1 AND state = 'human' ORDER BY assigned_at, id",
                agent_id,
            )
        return [_conversation(r) for r in rows]

    async def loads(self, tenant_id: str) -> dict[str, int]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT agent_id, COUNT(*) AS n FROM conversations "
                "WHERE tenant = $1 AND state = 'human' AND agent_id IS NOT NULL GROUP BY agent_id",
                tenant_id,
            )
        return {r["agent_id"]: int(r["n"]) for r in rows}

    async def awaiting_reply_since(self, before: float) -> list[Conversation]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE state = 'human' "
                "AND awaiting_agent_since IS NOT NULL AND awaiting_agent_since < $1",
                before,
            )
        return [_conversation(r) for r in rows]

    async def set_rating(self, conversation_id: str, score: int, comment: str) -> None:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE conversations SET rating = $2, rating_comment = $3 WHERE id = $1",
                conversation_id,
                score,
                comment,
            )
        if status.endswith(" 0"):
            raise NotFound("unknown conversation")

    async def tenant_stats(self, tenant_id: str) -> TenantStats:
        async with self._connection() as conn:
            states = await conn.fetch(
                "SELECT state, COUNT(*) AS n FROM conversations WHERE tenant = $1 GROUP BY state",
                tenant_id,
            )
            row = await conn.fetchrow(
                "SELECT COUNT(*) AS total, "
                "COUNT(*) FILTER (WHERE handed_off) AS handed, "
                "COUNT(*) FILTER (WHERE resolved_by = 'bot') AS by_bot, "
                "COUNT(*) FILTER (WHERE resolved_by IS NOT NULL) AS resolved, "
                "AVG(rating)::double precision AS rating "
                "FROM conversations WHERE tenant = $1",
                tenant_id,
            )
        return TenantStats(
            states={r["state"]: int(r["n"]) for r in states},
            conversations=int(row["total"]),
            handed_off=int(row["handed"]),
            resolved_by_bot=int(row["by_bot"]),
            resolved_total=int(row["resolved"]),
            ratings_avg=float(row["rating"]) if row["rating"] is not None else None,
        )

    async def recent_handle_times(self, tenant_id: str, limit: int = 50) -> list[float]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT seconds FROM handle_times WHERE tenant = $1 "
                "ORDER BY resolved_at DESC LIMIT $2",
                tenant_id,
                limit,
            )
        return [float(r["seconds"]) for r in rows]

    # Knowledge -----------------------------------------------------------------------------
    async def replace_document(self, document: Document, chunks: Sequence[Chunk]) -> int:
        tenant = document.tenant

        async def op(conn: asyncpg.Connection) -> int:
            # Bumping the version first locks the tenant row: replacements of one tenant's
            # documents take turns instead of deadlocking on each other's chunks.
            version = await conn.fetchval(
                "UPDATE tenants SET kb_version = kb_version + 1 WHERE id = $1 RETURNING kb_version",
                tenant,
            )
            if version is None:
                raise NotFound(f"unknown tenant {tenant!r}")
            await conn.execute(
                "DELETE FROM kb_chunks WHERE tenant = $1 AND doc_id = $2", tenant, document.doc_id
            )
            await conn.execute(
                "INSERT INTO kb_documents (tenant, doc_id, title, url, body, updated_at, "
                "content_hash, lang, doc_type) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (tenant, doc_id) DO UPDATE SET title = EXCLUDED.title, "
                "url = EXCLUDED.url, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at, "
                "content_hash = EXCLUDED.content_hash, lang = EXCLUDED.lang, "
                "doc_type = EXCLUDED.doc_type",
                tenant,
                document.doc_id,
                document.title,
                document.url,
                document.body,
                document.updated_at,
                document.content_hash,
                document.lang,
                document.doc_type,
            )
            if chunks:
                await conn.executemany(
                    "INSERT INTO kb_chunks (tenant, doc_id, chunk_id, ord, title, url, text, "
                    "heading_path, updated_at, lang, doc_type, label) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    [
                        (
                            c.tenant,
                            c.doc_id,
                            c.chunk_id,
                            i,
                            c.title,
                            c.url,
                            c.text,
                            list(c.heading_path),
                            c.updated_at,
                            c.lang,
                            c.doc_type,
                            c.label,
                        )
                        for i, c in enumerate(chunks)
                    ],
                )
            return int(version)

        return await self._transaction(op)

    async def delete_document(self, tenant_id: str, doc_id: str) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            await conn.execute(
                "DELETE FROM kb_chunks WHERE tenant = $1 AND doc_id = $2", tenant_id, doc_id
            )
            status = await conn.execute(
                "DELETE FROM kb_documents WHERE tenant = $1 AND doc_id = $2", tenant_id, doc_id
            )
            if status.endswith(" 0"):
                return False
            await conn.execute(
                "UPDATE tenants SET kb_version = kb_version + 1 WHERE id = $1", tenant_id
            )
            return True

        return await self._transaction(op)

    async def list_documents(self, tenant_id: str) -> list[Document]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT tenant, doc_id, title, url, body, updated_at, content_hash, lang, "
                "doc_type FROM kb_documents WHERE tenant = $1 ORDER BY doc_id",
                tenant_id,
            )
        return [Document(*r) for r in rows]

    async def list_chunks(self, tenant_id: str) -> list[Chunk]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT tenant, doc_id, chunk_id, title, url, text, heading_path, updated_at, "
                "lang, doc_type, label FROM kb_chunks WHERE tenant = $1 ORDER BY doc_id, ord",
                tenant_id,
            )
        return [
            Chunk(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6]), r[7], r[8], r[9], r[10])
            for r in rows
        ]

    async def kb_version(self, tenant_id: str) -> int:
        async with self._connection() as conn:
            version = await conn.fetchval("SELECT kb_version FROM tenants WHERE id = $1", tenant_id)
        if version is None:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return int(version)

    async def save_vectors(
        self, tenant_id: str, model_id: str, vectors: Mapping[str, bytes]
    ) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            if vectors:
                # Sorted: two saves of one tenant lock rows in the same order (no deadlock).
                await conn.executemany(
                    "INSERT INTO kb_vectors (tenant, model_id, chunk_id, vector) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, model_id, chunk_id) "
                    "DO UPDATE SET vector = EXCLUDED.vector",
                    [(tenant_id, model_id, k, bytes(vectors[k])) for k in sorted(vectors)],
                )
            # Vectors of chunks that no longer exist are dead weight.
            await conn.execute(
                "DELETE FROM kb_vectors v WHERE v.tenant = $1 AND v.model_id = $2 "
                "AND NOT EXISTS (SELECT 1 FROM kb_chunks c "
                "WHERE c.tenant = v.tenant AND c.chunk_id = v.chunk_id)",
                tenant_id,
                model_id,
            )

        await self._transaction(op)

    async def load_vectors(self, tenant_id: str, model_id: str) -> dict[str, bytes]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT chunk_id, vector FROM kb_vectors WHERE tenant = $1 AND model_id = $2",
                tenant_id,
                model_id,
            )
        return {r["chunk_id"]: bytes(r["vector"]) for r in rows}


# Transactions' inner steps ---------------------------------------------------------------------
def _check_expected(current: Conversation, request: TransitionRequest) -> None:
    if current.version != request.expected_version or current.state != request.from_state:
        raise Conflict(
            "the conversation changed meanwhile", state=current.state, version=current.version
        )


async def _transition(
    conn: asyncpg.Connection,
    current: Conversation,
    request: TransitionRequest,
    agent: Mapping[str, str] | None,
    now: float,
) -> tuple[Conversation, Event]:
    fields = transition_changes(current, request, now)
    data = state_event_data(request, agent)
    seconds = handle_time(current, request, now)
    row = await conn.fetchrow(
        transition_sql(tuple(fields)),
        current.id,
        request.expected_version,
        request.from_state,
        now,
        json.dumps(data),
        current.agent_id,
        seconds,
        *fields.values(),
    )
    if row is None:
        latest = await conn.fetchrow(
            "SELECT state, version FROM conversations WHERE id = $1", current.id
        )
        if latest is None:
            raise NotFound("unknown conversation")
        raise Conflict(
            "the conversation changed meanwhile", state=latest["state"], version=latest["version"]
        )
    updated = _conversation(row)
    return updated, Event(updated.id, updated.last_seq, now, "state", data)


async def _event_by_key(conn: asyncpg.Connection, conversation_id: str, key: str) -> Event | None:
    row = await conn.fetchrow(
        "SELECT conversation_id, seq, ts, kind, data FROM events "
        "WHERE tenant = (SELECT tenant FROM conversations WHERE id = $1) "
        "AND conversation_id = $1 AND client_key = $2",
        conversation_id,
        key,
    )
    return _event(row) if row is not None else None


async def _agent_brief(conn: asyncpg.Connection, agent_id: str | None) -> dict[str, str] | None:
    if agent_id is None:
        return None
    row = await conn.fetchrow("SELECT id, name FROM agents WHERE id = $1", agent_id)
    return {"id": row["id"], "name": row["name"]} if row else {"id": agent_id, "name": agent_id}


async def _conversation_row(conn: asyncpg.Connection, conversation_id: str) -> Conversation:
    row = await conn.fetchrow(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1", conversation_id
    )
    if row is None:
        raise NotFound("unknown conversation")
    return _conversation(row)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset on release: nothing to undo.

    The store never changes session state (no SET, LISTEN, cursors or session-level advisory
    locks; asyncpg rolls back any open transaction itself), so asyncpg's default reset query
    would be one wasted round trip on every release.
    """


def _unavailable(message: str, exc: BaseException) -> Unavailable:
    return Unavailable(f"{message}: {type(exc).__name__}: {exc}")


# Row mapping -----------------------------------------------------------------------------------


def _tenant(row: Sequence[Any]) -> Tenant:
    return Tenant(row[0], row[1], row[2], tuple(row[3]), int(row[4]))


def _agent(row: Sequence[Any]) -> Agent:
    return agent_from_row(row)


def _conversation(row: Sequence[Any]) -> Conversation:
    return conversation_from_row(row, row[13])


def _event(row: Sequence[Any]) -> Event:
    return Event(row[0], int(row[1]), float(row[2]), row[3], json.loads(row[4]))
