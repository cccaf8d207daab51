"""The embedded store: SQLite in WAL mode through aiosqlite, with group commit.

Writes are plain synchronous functions over a `sqlite3.Connection`, queued and run in
batches: one `BEGIN IMMEDIATE … COMMIT` (one fsync) covers every write that arrived while the
previous batch was committing, and each write has its own SAVEPOINT so one refused write
(a compare-and-set conflict, say) does not undo its neighbours. Reads go through a second
connection, which WAL lets run beside the writer. Several processes may share the file:
`BEGIN IMMEDIATE` with a busy timeout serialises their writers, so per-conversation `seq`
stays gap-free across nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import aiosqlite

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
from warmline.store.migrations import MIGRATIONS
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

log = logging.getLogger("warmline.store.sqlite")
T = TypeVar("T")
SyncOp = Callable[[sqlite3.Connection], Any]
QueuedWrite = tuple[SyncOp, "asyncio.Future[Any]", bool]  # (op, its caller, may run inline)

MAX_BATCH = 256
# Pages of a new database file (an existing one keeps its own). A commit writes every page it
# touched to the WAL, and a chat message touches about three far apart (its conversation's
# row, its events' index, its idempotency key): half-size pages halve those bytes.
PAGE_SIZE = 2048
# A batch run on the event loop holds it for its duration: keep it to a few milliseconds.
MAX_INLINE_BATCH = 64
# The page cache of the loop's connection, in KiB.
INLINE_CACHE_KIB = 32 * 1024
# Inline commits leave the WAL to grow; a PASSIVE checkpoint (off the loop) after this many
# inline writes. Finishing one holds writes back for 3-5 ms (its fsyncs), so this also sets
# how often that happens. Measured at 2,500 msgs/s when that hold was still 11-15 ms (p99 of
# 10 s steps): every 2,000 writes 10-25 ms; every 10,000 writes 27-49 ms, as each checkpoint
# then flushes ~200 MB; never, 5 ms at first and 100-200 ms once the kernel starts writing the
# WAL back.
CHECKPOINT_EVERY_WRITES = 2_000
# When the WAL starts over, its file is cut back to this size.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# A checkpoint copies in passes beside the commits until a pass had this little to copy.
SMALL_CHECKPOINT_FRAMES = 512
MAX_CHECKPOINT_PASSES = 6
# The last pass holds every writer back (other nodes' too) while it waits for readers and
# copies; past this it gives up, and the next checkpoint tries again.
RESTART_WAIT_MS = 200
# When another process holds the write lock: retry on the loop after these pauses (the first
# ones are just the next turns of the loop), then leave the batch to the writer thread.
INLINE_BUSY_WAIT_S = 0.5
_INLINE_RETRY_DELAYS = (0.0, 0.0, 0.0, *([0.001] * 5), *([0.002] * 10), *([0.005] * 90))


def _run_in_connection_thread(conn: aiosqlite.Connection, fn: Callable[[], T]) -> Any:
    # aiosqlite runs one thread per connection; handing it a whole function costs one thread
    # hop per batch instead of one per statement, which is what makes group commit pay off.
    return conn._execute(fn)


class SQLiteStore(Store):
    def __init__(self, path: str, busy_timeout_ms: int = 15000, inline_writes: bool = True) -> None:
        self.path = path
        self.inline_writes = inline_writes
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[QueuedWrite] = asyncio.Queue()
        # The loop's own connection for small writes: see `_write_loop`.
        self._inline: sqlite3.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._inline_writes_since_checkpoint = 0
        self._catch_up_due = False
        # Descriptors SQLite holds on the database file and its WAL: see `fsync_held_file`.
        self._held_descriptors: dict[str, int | None] = {}
        self.inline_batches = 0
        self.inline_busy = 0
        # Inline batches run a second time because a write in them raised (see `_run_batch`),
        # and whether the next one should take a savepoint per write from the start.
        self.rerun_batches = 0
        self._expect_undos = False
        self.checkpoints = 0
        # Checkpoints that copied the whole WAL, so the next commit starts it over.
        self.complete_checkpoints = 0
        self._writer_task: asyncio.Task[None] | None = None
        self._read_queue: asyncio.Queue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]
        ] = asyncio.Queue()
        self._reader_task: asyncio.Task[None] | None = None
        self.batches = 0
        self.batched_writes = 0
        self.read_batches = 0

    # Lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        # Looked up once: asyncio.get_running_loop() is a getpid() system call on 3.11.
        self._loop = asyncio.get_running_loop()
        if self.path != ":memory:":
            await asyncio.to_thread(_ensure_parent_directory, self.path)
        self._writer = await self._connect()
        await _run_in_connection_thread(
            self._writer, lambda: self._migrate(self._raw(self._writer))
        )
        self._reader = await self._connect()
        if self.inline_writes and self.path != ":memory:":
            self._inline = await asyncio.to_thread(self._connect_inline)
        self._writer_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")
        self._reader_task = asyncio.create_task(self._read_loop(), name="sqlite-reader")

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        await conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        await conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose
        # the latest transactions, never corrupt the file.
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        return conn

    def _connect_inline(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Never wait for the lock on the loop: another process writing means SQLITE_BUSY at
        # once, and that batch goes to the writer thread, which may wait.
        db.execute("PRAGMA busy_timeout = 0")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        # A checkpoint writes and fsyncs the database file: never inside a commit on the loop.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        # Every chat message touches its conversation's pages; with SQLite's default 2 MiB
        # cache a few hundred busy conversations miss it and every write reads pages back
        # with pread(). Pages are only allocated as they are used.
        db.execute(f"PRAGMA cache_size = -{INLINE_CACHE_KIB}")
        return db

    @staticmethod
    def _raw(conn: aiosqlite.Connection | None) -> sqlite3.Connection:
        assert conn is not None
        return conn._conn

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for version, statements in MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except asyncio.CancelledError:
                pass
            self._reader_task = None
            while not self._read_queue.empty():
                _, future = self._read_queue.get_nowait()
                if not future.done():
                    future.set_exception(Unavailable("store is closed"))
        if self._writer_task is not None:
            # Let queued writes finish: they were acknowledged to nobody yet, but callers wait.
            await self._queue.join()
            self._writer_task.cancel()
            try:
                await self._writer_task
            except asyncio.CancelledError:
                pass
            self._writer_task = None
        if self._checkpoint_task is not None:
            await asyncio.gather(self._checkpoint_task, return_exceptions=True)
            self._checkpoint_task = None
        if self._inline is not None:
            inline, self._inline = self._inline, None
            await asyncio.to_thread(inline.close)
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def ping(self) -> None:
        await self._read(lambda db: db.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        row = await self._read(
            lambda db: db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        )
        return int(row[0] or 0)

    # Plumbing ------------------------------------------------------------------------------
    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_task is None:
            raise Unavailable("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._read_queue.put_nowait((fn, future))
        return await future

    async def _read_loop(self) -> None:
        # Reads queue up like writes: every read that arrived meanwhile runs in one hop to
        # the reader thread, so a busy node pays one wake-up per batch rather than per read.
        conn = self._reader
        assert conn is not None
        raw = self._raw(conn)
        while True:
            batch = _take_batch(self._read_queue, await self._read_queue.get(), MAX_BATCH)
            try:
                outcomes = await _run_in_connection_thread(
                    conn,
                    lambda b=batch: [_attempt(fn, raw) for fn, _ in b],  # type: ignore[misc]
                )
            except asyncio.CancelledError:
                _fail_all(batch, Unavailable("store is closed"))
                raise
            except Exception as exc:
                _fail_all(batch, Unavailable(f"store read failed: {exc}"))
                continue
            self.read_batches += 1
            _settle([future for _, future in batch], outcomes)

    async def _write(self, op: Callable[[sqlite3.Connection], T], inline: bool = False) -> T:
        """Queue a write for the next group commit.

        `inline=True` marks a small write (a few indexed statements) that may run on the event
        loop itself; anything heavier (documents, vectors, administration) always goes to the
        writer thread.
        """
        if self._writer_task is None:
            raise Unavailable("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put_nowait((op, future, inline))
        return await future

    async def _write_loop(self) -> None:
        # Small writes commit on the loop: WAL with synchronous=NORMAL does not fsync on
        # commit, so a batch of chat messages costs tens of microseconds, less than the two
        # thread hand-offs (and GIL hand-overs) it would take to run it on the writer thread.
        # The loop never waits for the lock (busy_timeout 0 there), and never checkpoints.
        while True:
            first = await self._queue.get()
            inline = self._inline is not None and first[2]
            batch = _take_batch(self._queue, first, MAX_INLINE_BATCH if inline else MAX_BATCH)
            inline = inline and all(entry[2] for entry in batch)
            outcomes: list[tuple[bool, Any]] | None = None
            if inline:
                outcomes = await self._run_inline(batch)
            if outcomes is None:
                writer = self._writer_for_loop()
                raw = self._raw(writer)
                try:
                    outcomes = await _run_in_connection_thread(
                        writer,
                        lambda b=batch, db=raw: self._run_batch(db, b, wait=True),  # type: ignore[misc]
                    )
                except Exception as exc:  # the transaction itself failed: nothing was stored
                    error = Unavailable(f"store write failed: {exc}")
                    outcomes = [(False, error)] * len(batch)
            self.batches += 1
            self.batched_writes += len(batch)
            _settle([future for _, future, _ in batch], outcomes)
            for _ in batch:
                self._queue.task_done()
            if self._catch_up_due:
                self._catch_up_due = False
                await self._finish_checkpoint()
            elif inline:
                # Let the writers just answered (and everyone else) run before the next batch.
                await asyncio.sleep(0)

    async def _run_inline(self, batch: list[QueuedWrite]) -> list[tuple[bool, Any]] | None:
        """Commit the batch on the loop's connection; None to hand it to the writer thread.

        Another process (a second node on the same file) holding the lock means a retry
        soon, not SQLite's busy handler: that one sleeps 1, 2, 5 … 100 ms between attempts,
        and against a node that retries at once it would lose the lock for tens of
        milliseconds at a time. Only a lock held longer than INLINE_BUSY_WAIT_S (a large
        import, say) sends the batch to the thread, which waits as long as it takes.
        """
        waited = 0.0
        for delay in _INLINE_RETRY_DELAYS:
            assert self._inline is not None
            try:
                outcomes = self._run_batch(self._inline, batch)
            except _LockBusy:
                self.inline_busy += 1
                if waited >= INLINE_BUSY_WAIT_S:
                    return None
                await asyncio.sleep(delay)
                waited += delay
                continue
            except Exception as exc:
                return [(False, Unavailable(f"store write failed: {exc}"))] * len(batch)
            self.inline_batches += 1
            self._after_inline_commit(len(batch))
            return outcomes
        return None

    def _after_inline_commit(self, writes: int) -> None:
        self._inline_writes_since_checkpoint += writes
        if self._inline_writes_since_checkpoint < CHECKPOINT_EVERY_WRITES:
            return
        if self._checkpoint_task is not None and not self._checkpoint_task.done():
            return
        self._inline_writes_since_checkpoint = 0
        self._checkpoint_task = asyncio.create_task(self._checkpoint(), name="sqlite-checkpoint")

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database beside the loop's commits, which go on meanwhile."""
        # Each pass copies what was committed during the one before, so the passes shrink
        # to the few frames of a pass's two fsyncs; stop there.
        wal_frames_before = -1
        for _ in range(MAX_CHECKPOINT_PASSES):
            result = await self._run_checkpoint("PASSIVE")
            if result is None:
                break
            _, wal_frames, _ = result
            if 0 <= wal_frames - wal_frames_before <= SMALL_CHECKPOINT_FRAMES:
                break
            wal_frames_before = wal_frames
        # The last pass runs with writes held back and fsyncs both files: the WAL before it
        # copies, the database file after. SQLite fsyncs the database file only when a pass
        # copied the whole WAL, so the pages these passes copied (megabytes) were still
        # unflushed and made that fsync take 10-15 ms at 2,500 msgs/s. Flushed here, beside
        # the commits, both leave the last pass a few pages to flush.
        await self._sync_files()
        # The loop kept committing while this copied, so the WAL is not all copied, and SQLite
        # only starts a WAL over when it is: under steady load the file grew without bound
        # (1.8 GB in a minute at 4,000 msgs/s). The write loop finishes the job between two
        # batches.
        self._catch_up_due = True

    async def _sync_files(self) -> None:
        writer = self._writer_for_loop()
        try:
            await _run_in_connection_thread(writer, self._fsync_files)
        except OSError as exc:
            # The last pass syncs them anyway, only with writes held back longer.
            log.warning("sqlite: could not flush %s before the checkpoint: %s", self.path, exc)

    def _fsync_files(self) -> None:
        for path in (self.path, self.path + "-wal"):
            self._held_descriptors[path] = fsync_held_file(path, self._held_descriptors.get(path))

    async def _finish_checkpoint(self) -> None:
        """Copy what was committed during the last pass, with writes held back, and have the
        next commit start the WAL over (cutting its file back to WAL_SIZE_LIMIT_BYTES).

        RESTART holds the write lock while it copies, so other nodes on the same file wait
        too: holding back only this node's writes left them writing, and the WAL of two
        nodes still grew to ~1 GB in three minutes. Only a few milliseconds of commits are
        left to copy, and the files were just flushed: writes wait 3-5 ms, mostly the
        checkpoint's two fsyncs, and go out in the next group commit.
        """
        result = await self._run_checkpoint("RESTART", wait_ms=RESTART_WAIT_MS)
        if result is not None:
            busy, wal_frames, copied = result
            self.complete_checkpoints += not busy and wal_frames == copied

    async def _run_checkpoint(
        self, mode: str, wait_ms: int | None = None
    ) -> tuple[int, int, int] | None:
        """(busy, frames in the WAL, frames copied), or None when SQLite refused.

        `wait_ms` caps how long it may wait for other connections (instead of the
        connection's busy timeout): RESTART holds every writer back while it waits.
        """
        writer = self._writer_for_loop()
        raw = self._raw(writer)

        def checkpoint() -> Any:
            if wait_ms is None:
                return raw.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            raw.execute(f"PRAGMA busy_timeout = {wait_ms}")
            try:
                return raw.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            finally:
                raw.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")

        try:
            result = await _run_in_connection_thread(writer, checkpoint)
        except sqlite3.Error:
            return None  # it gives way to readers and writers; the next one catches up
        self.checkpoints += 1
        busy, wal_frames, copied = result
        return int(busy), int(wal_frames), int(copied)

    def _writer_for_loop(self) -> aiosqlite.Connection:
        assert self._writer is not None
        return self._writer

    def _run_batch(
        self, db: sqlite3.Connection, batch: list[QueuedWrite], wait: bool = False
    ) -> list[tuple[bool, Any]]:
        _begin(db, wait)
        if len(batch) == 1:
            return [self._run_alone(db, batch[0][0])]
        if wait:
            return _run_each_in_savepoint(db, batch)[0]
        if not self._expect_undos:
            outcomes = _run_together(db, batch)
            if outcomes is not None:
                return outcomes
            # One of them failed or was refused: all of theirs was undone with it. Again,
            # each in a savepoint of its own, so that the others still commit.
            self.rerun_batches += 1
            _begin(db, wait)
        outcomes, undone = _run_each_in_savepoint(db, batch)
        # While writes keep being refused (claims racing in a handoff storm, say), running
        # a batch twice would cost more than the savepoints do.
        self._expect_undos = undone > 0
        return outcomes

    @staticmethod
    def _run_alone(db: sqlite3.Connection, op: SyncOp) -> tuple[bool, Any]:
        # With no neighbours to protect, the transaction itself is the savepoint.
        with _rolled_back_on_error(db):
            outcome, undone = _run_one(db, op, "ROLLBACK")
            if not undone:
                db.execute("COMMIT")
        return outcome

    # Secrets -------------------------------------------------------------------------------
    async def secret(self, name: str, generate_bytes: int = 32) -> bytes:
        def op(db: sqlite3.Connection) -> bytes:
            db.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                (name, secrets.token_bytes(generate_bytes)),
            )
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._write(op)

    # Tenants -------------------------------------------------------------------------------
    async def add_tenant(
        self, tenant_id: str, name: str = "", allowed_origins: Sequence[str] = ()
    ) -> Tenant:
        now = time.time()

        def op(db: sqlite3.Connection) -> Tenant:
            try:
                db.execute(
                    "INSERT INTO tenants (id, name, created_at, allowed_origins) VALUES (?,?,?,?)",
                    (tenant_id, name or tenant_id, now, json.dumps(list(allowed_origins))),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"tenant {tenant_id!r} already exists") from exc
            return _tenant_row(db, tenant_id)

        return await self._write(op)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        return await self._read(lambda db: _tenant_row(db, tenant_id))

    async def list_tenants(self) -> list[Tenant]:
        def fn(db: sqlite3.Connection) -> list[Tenant]:
            rows = db.execute(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id").fetchall()
            return [_tenant(r) for r in rows]

        return await self._read(fn)

    async def set_allowed_origins(self, tenant_id: str, origins: Sequence[str]) -> Tenant:
        def op(db: sqlite3.Connection) -> Tenant:
            cur = db.execute(
                "UPDATE tenants SET allowed_origins = ? WHERE id = ?",
                (json.dumps(list(origins)), tenant_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"unknown tenant {tenant_id!r}")
            return _tenant_row(db, tenant_id)

        return await self._write(op)

    # Agents --------------------------------------------------------------------------------
    async def add_agent(
        self, tenant_id: str, name: str, role: str = "agent", token: str | None = None
    ) -> tuple[Agent, str]:
        if role not in ("agent", "supervisor"):
            raise BadRequest(f"unknown role {role!r}")
        token = token or new_agent_token()
        agent_id = new_id("a")
        now = time.time()

        def op(db: sqlite3.Connection) -> Agent:
            _tenant_row(db, tenant_id)
            try:
                db.execute(
                    "INSERT INTO agents (tenant, id, name, role, token_hash, created_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (tenant_id, agent_id, name, role, hash_token(token), now),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict("this token is already in use") from exc
            return _agent_row(db, agent_id)

        return await self._write(op), token

    async def agent_by_token(self, token: str) -> Agent | None:
        digest = hash_token(token)

        def fn(db: sqlite3.Connection) -> Agent | None:
            row = db.execute(
                f"SELECT {AGENT_COLUMNS} FROM agents WHERE token_hash = ? AND revoked = 0",
                (digest,),
            ).fetchone()
            return _agent(row) if row else None

        return await self._read(fn)

    async def get_agent(self, agent_id: str) -> Agent:
        return await self._read(lambda db: _agent_row(db, agent_id))

    async def list_agents(self, tenant_id: str | None = None) -> list[Agent]:
        def fn(db: sqlite3.Connection) -> list[Agent]:
            if tenant_id is None:
                rows = db.execute(f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY tenant, name")
            else:
                rows = db.execute(
                    f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ? ORDER BY name",
                    (tenant_id,),
                )
            return [_agent(r) for r in rows.fetchall()]

        return await self._read(fn)

    async def revoke_agent(self, agent_id: str) -> Agent:
        def op(db: sqlite3.Connection) -> Agent:
            cur = db.execute("UPDATE agents SET revoked = 1 WHERE id = ?", (agent_id,))
            if cur.rowcount == 0:
                raise NotFound(f"unknown agent {agent_id!r}")
            return _agent_row(db, agent_id)

        return await self._write(op)

    # Conversations -------------------------------------------------------------------------
    async def create_conversation(self, tenant_id: str) -> Conversation:
        conversation_id = new_id("c")
        now = time.time()

        def op(db: sqlite3.Connection) -> Conversation:
            _tenant_row(db, tenant_id)
            db.execute(
                "INSERT INTO conversations (tenant, id, state, version, last_seq, created_at, "
                "updated_at) VALUES (?, ?, 'bot', 0, 0, ?, ?)",
                (tenant_id, conversation_id, now, now),
            )
            return _conversation_row(db, conversation_id)

        return await self._write(op, inline=True)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        return await self._read(lambda db: _conversation_row(db, conversation_id))

    async def append_message(self, request: MessageRequest) -> AppendedMessage:
        key = client_key(dict(request.author), request.client_id) if request.client_id else None
        message_id = message_id_for(request)
        data = message_event_data(request, message_id)
        now = time.time()
        role = request.author.get("role")
        extra_sql = ""
        if role == "customer":
            # The reply clock starts with the first unanswered customer message.
            extra_sql = (
                ", awaiting_agent_since = CASE WHEN state = 'human' "
                "THEN COALESCE(awaiting_agent_since, :now) ELSE awaiting_agent_since END"
                ", preview = :preview"
            )
        elif role == "agent":
            extra_sql = ", awaiting_agent_since = NULL"
        bump_sql = (
            f"UPDATE conversations SET last_seq = last_seq + 1, updated_at = :now{extra_sql} "
            "WHERE id = :id RETURNING state, agent_id, last_seq"
        )
        params = {"now": now, "id": request.conversation_id, "preview": request.text[:140]}
        insert_sql = _INSERT_MESSAGE if key is None else _INSERT_MESSAGE_ONCE

        def op(db: sqlite3.Connection) -> AppendedMessage:
            # Bump the seq and insert first, look for a resend only when the insert finds
            # one: the common case is two statements. Whatever is refused or found stored
            # already raises, and the bump is undone with it.
            bumped = db.execute(bump_sql, params).fetchone()
            if bumped is None:
                raise NotFound("unknown conversation")
            state, agent_id, seq = bumped
            refused = refusal(request, state, agent_id)
            if refused is None:
                inserted = db.execute(
                    insert_sql, (request.conversation_id, seq, now, key, json.dumps(data))
                ).rowcount
                if inserted:
                    event = Event(request.conversation_id, int(seq), now, "message", data)
                    return AppendedMessage(event, True, state)
            # A resend is answered with the message stored first, even where the
            # conversation would refuse it now (its first send was acked, or will be).
            row = None
            if key is not None:
                row = db.execute(
                    "SELECT conversation_id, seq, ts, kind, data FROM events "
                    "WHERE conversation_id = ? AND client_key = ?",
                    (request.conversation_id, key),
                ).fetchone()
            if row is not None:
                raise _UndoWrites(AppendedMessage(_event(row), False, state))
            raise refused or Unavailable("the message was neither stored nor found stored")

        return await self._write(op, inline=True)

    async def apply_transition(self, request: TransitionRequest) -> tuple[Conversation, Event]:
        now = time.time()

        def op(db: sqlite3.Connection) -> tuple[Conversation, Event]:
            current = _conversation_row(db, request.conversation_id)
            if current.version != request.expected_version or current.state != request.from_state:
                raise Conflict(
                    "the conversation changed meanwhile",
                    state=current.state,
                    version=current.version,
                )
            # SQLite keeps lists as JSON text and booleans as integers.
            fields = {
                name: _sqlite_value(value)
                for name, value in transition_changes(current, request, now).items()
            }
            seconds = handle_time(current, request, now)
            if seconds is not None:
                db.execute(
                    "INSERT INTO handle_times (tenant, agent_id, conversation_id, seconds, "
                    "resolved_at) VALUES (?,?,?,?,?)",
                    (current.tenant, current.agent_id, current.id, seconds, now),
                )
            assignments = ", ".join(f"{name} = :{name}" for name in fields)
            cur = db.execute(
                f"UPDATE conversations SET {assignments} WHERE id = :id AND version = :expected",
                {**fields, "id": current.id, "expected": request.expected_version},
            )
            if cur.rowcount != 1:
                raise Conflict("the conversation changed meanwhile")
            seq = _next_seq(db, current.id, now)
            agent = _agent_brief(db, request.agent_id) if request.to_state == "human" else None
            data = state_event_data(request, agent)
            db.execute(
                "INSERT INTO events (conversation_id, seq, ts, kind, client_key, data) "
                "VALUES (?, ?, ?, 'state', NULL, ?)",
                (current.id, seq, now, json.dumps(data)),
            )
            return _conversation_row(db, current.id), Event(current.id, seq, now, "state", data)

        return await self._write(op, inline=True)

    async def events_after(
        self, conversation_id: str, after_seq: int, limit: int = 1000
    ) -> list[Event]:
        def fn(db: sqlite3.Connection) -> list[Event]:
            rows = db.execute(
                "SELECT conversation_id, seq, ts, kind, data FROM events "
                "WHERE conversation_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (conversation_id, after_seq, limit),
            ).fetchall()
            return [_event(r) for r in rows]

        return await self._read(fn)

    async def queued(self, tenant_id: str) -> list[Conversation]:
        def fn(db: sqlite3.Connection) -> list[Conversation]:
            rows = db.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations "
                "WHERE tenant = ? AND state = 'queued' "
                "ORDER BY priority DESC, queued_at ASC",
                (tenant_id,),
            ).fetchall()
            return [_conversation(r) for r in rows]

        return await self._read(fn)

    async def owned_by(self, agent_id: str) -> list[Conversation]:
        def fn(db: sqlite3.Connection) -> list[Conversation]:
            rows = db.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations "
                "WHERE agent_id = ? AND state = 'human' "
                "ORDER BY assigned_at",
                (agent_id,),
            ).fetchall()
            return [_conversation(r) for r in rows]

        return await self._read(fn)

    async def loads(self, tenant_id: str) -> dict[str, int]:
        def fn(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute(
                "SELECT agent_id, COUNT(*) FROM conversations "
                "WHERE tenant = ? AND state = 'human' GROUP BY agent_id",
                (tenant_id,),
            ).fetchall()
            return {r[0]: int(r[1]) for r in rows if r[0]}

        return await self._read(fn)

    async def awaiting_reply_since(self, before: float) -> list[Conversation]:
        def fn(db: sqlite3.Connection) -> list[Conversation]:
            rows = db.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE state = 'human' "
                "AND awaiting_agent_since IS NOT NULL AND awaiting_agent_since < ?",
                (before,),
            ).fetchall()
            return [_conversation(r) for r in rows]

        return await self._read(fn)

    async def set_rating(self, conversation_id: str, score: int, comment: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE conversations SET rating = ?, rating_comment = ? WHERE id = ?",
                (score, comment, conversation_id),
            )
            if cur.rowcount == 0:
                raise NotFound("unknown conversation")

        await self._write(op, inline=True)

    async def tenant_stats(self, tenant_id: str) -> TenantStats:
        def fn(db: sqlite3.Connection) -> TenantStats:
            states = {
                r[0]: int(r[1])
                for r in db.execute(
                    "SELECT state, COUNT(*) FROM conversations WHERE tenant = ? GROUP BY state",
                    (tenant_id,),
                )
            }
            total, handed, by_bot, resolved, rating = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(handed_off), 0), "
                "COALESCE(SUM(resolved_by = 'bot'), 0), COALESCE(SUM(resolved_by IS NOT NULL), 0), "
                "AVG(rating) FROM conversations WHERE tenant = ?",
                (tenant_id,),
            ).fetchone()
            return TenantStats(
                states=states,
                conversations=int(total),
                handed_off=int(handed),
                resolved_by_bot=int(by_bot),
                resolved_total=int(resolved),
                ratings_avg=float(rating) if rating is not None else None,
            )

        return await self._read(fn)

    async def recent_handle_times(self, tenant_id: str, limit: int = 50) -> list[float]:
        def fn(db: sqlite3.Connection) -> list[float]:
            rows = db.execute(
                "SELECT seconds FROM handle_times WHERE tenant = ? ORDER BY resolved_at DESC "
                "LIMIT ?",
                (tenant_id, limit),
            ).fetchall()
            return [float(r[0]) for r in rows]

        return await self._read(fn)

    # Knowledge -----------------------------------------------------------------------------
    async def replace_document(self, document: Document, chunks: Sequence[Chunk]) -> int:
        def op(db: sqlite3.Connection) -> int:
            _tenant_row(db, document.tenant)
            db.execute(
                "DELETE FROM kb_chunks WHERE tenant = ? AND doc_id = ?",
                (document.tenant, document.doc_id),
            )
            db.execute(
                "INSERT OR REPLACE INTO kb_documents (tenant, doc_id, title, url, body, "
                "updated_at, content_hash, lang, doc_type) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    document.tenant,
                    document.doc_id,
                    document.title,
                    document.url,
                    document.body,
                    document.updated_at,
                    document.content_hash,
                    document.lang,
                    document.doc_type,
                ),
            )
            db.executemany(
                "INSERT INTO kb_chunks (tenant, doc_id, chunk_id, ord, title, url, text, "
                "heading_path, updated_at, lang, doc_type, label) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        c.tenant,
                        c.doc_id,
                        c.chunk_id,
                        i,
                        c.title,
                        c.url,
                        c.text,
                        json.dumps(list(c.heading_path)),
                        c.updated_at,
                        c.lang,
                        c.doc_type,
                        c.label,
                    )
                    for i, c in enumerate(chunks)
                ],
            )
            return _bump_kb_version(db, document.tenant)

        return await self._write(op)

    async def delete_document(self, tenant_id: str, doc_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM kb_chunks WHERE tenant = ? AND doc_id = ?", (tenant_id, doc_id))
            cur = db.execute(
                "DELETE FROM kb_documents WHERE tenant = ? AND doc_id = ?", (tenant_id, doc_id)
            )
            if cur.rowcount == 0:
                return False
            _bump_kb_version(db, tenant_id)
            return True

        return await self._write(op)

    async def list_documents(self, tenant_id: str) -> list[Document]:
        def fn(db: sqlite3.Connection) -> list[Document]:
            rows = db.execute(
                "SELECT tenant, doc_id, title, url, body, updated_at, content_hash, lang, doc_type "
                "FROM kb_documents WHERE tenant = ? ORDER BY doc_id",
                (tenant_id,),
            ).fetchall()
            return [Document(*r) for r in rows]

        return await self._read(fn)

    async def list_chunks(self, tenant_id: str) -> list[Chunk]:
        def fn(db: sqlite3.Connection) -> list[Chunk]:
            rows = db.execute(
                "SELECT tenant, doc_id, chunk_id, title, url, text, heading_path, updated_at, "
                "lang, doc_type, label FROM kb_chunks WHERE tenant = ? ORDER BY doc_id, ord",
                (tenant_id,),
            ).fetchall()
            return [
                Chunk(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    tuple(json.loads(r[6])),
                    r[7],
                    r[8],
                    r[9],
                    r[10],
                )
                for r in rows
            ]

        return await self._read(fn)

    async def kb_version(self, tenant_id: str) -> int:
        def fn(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT kb_version FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
            if row is None:
                raise NotFound(f"unknown tenant {tenant_id!r}")
            return int(row[0])

        return await self._read(fn)

    async def save_vectors(
        self, tenant_id: str, model_id: str, vectors: Mapping[str, bytes]
    ) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO kb_vectors (tenant, model_id, chunk_id, vector) "
                "VALUES (?,?,?,?)",
                [(tenant_id, model_id, chunk_id, blob) for chunk_id, blob in vectors.items()],
            )
            # Vectors of chunks that no longer exist are dead weight.
            db.execute(
                "DELETE FROM kb_vectors WHERE tenant = ? AND model_id = ? AND chunk_id NOT IN "
                "(SELECT chunk_id FROM kb_chunks WHERE tenant = ?)",
                (tenant_id, model_id, tenant_id),
            )

        await self._write(op)

    async def load_vectors(self, tenant_id: str, model_id: str) -> dict[str, bytes]:
        def fn(db: sqlite3.Connection) -> dict[str, bytes]:
            rows = db.execute(
                "SELECT chunk_id, vector FROM kb_vectors WHERE tenant = ? AND model_id = ?",
                (tenant_id, model_id),
            ).fetchall()
            return {r[0]: bytes(r[1]) for r in rows}

        return await self._read(fn)


# Row mapping ---------------------------------------------------------------------------------


def _tenant(row: Sequence[Any]) -> Tenant:
    return Tenant(row[0], row[1], row[2], tuple(json.loads(row[3] or "[]")), int(row[4]))


def _tenant_row(db: sqlite3.Connection, tenant_id: str) -> Tenant:
    row = db.execute(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown tenant {tenant_id!r}")
    return _tenant(row)


def _agent(row: Sequence[Any]) -> Agent:
    return agent_from_row(row)


def _agent_row(db: sqlite3.Connection, agent_id: str) -> Agent:
    row = db.execute(f"SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?", (agent_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown agent {agent_id!r}")
    return _agent(row)


def _agent_brief(db: sqlite3.Connection, agent_id: str | None) -> dict[str, str] | None:
    if agent_id is None:
        return None
    row = db.execute("SELECT id, name FROM agents WHERE id = ?", (agent_id,)).fetchone()
    return {"id": row[0], "name": row[1]} if row else {"id": agent_id, "name": agent_id}


def _conversation(row: Sequence[Any]) -> Conversation:
    return conversation_from_row(row, json.loads(row[13] or "[]"))


def _conversation_row(db: sqlite3.Connection, conversation_id: str) -> Conversation:
    row = db.execute(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    if row is None:
        raise NotFound("unknown conversation")
    return _conversation(row)


def fsync_held_file(path: str, hint: int | None) -> int | None:
    """fsync `path` through a descriptor this process already holds on it (SQLite's own);
    returns that descriptor, a hint for next time, or None when there is none to use.

    Never through a descriptor of our own: POSIX locks belong to the process, and closing any
    descriptor of the database file drops all of them, SQLite's included. Another process
    closing its last connection then took itself for the file's last user, checkpointed,
    and deleted the WAL under this one ("database disk image is malformed").
    """
    try:
        wanted = os.stat(path)
    except FileNotFoundError:
        return None
    fd = hint if hint is not None and _is_file(hint, wanted) else _find_descriptor(wanted)
    if fd is not None:
        os.fsync(fd)
    return fd


def _is_file(fd: int, wanted: os.stat_result) -> bool:
    try:
        found = os.fstat(fd)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino)


def _find_descriptor(wanted: os.stat_result) -> int | None:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        return next((int(n) for n in names if n.isdigit() and _is_file(int(n), wanted)), None)
    return None


_INSERT_MESSAGE = (
    "INSERT INTO events (conversation_id, seq, ts, kind, client_key, data) "
    "VALUES (?, ?, ?, 'message', ?, ?)"
)
# A resend (its client key stored already) inserts nothing: rowcount 0.
_INSERT_MESSAGE_ONCE = (
    _INSERT_MESSAGE
    + " ON CONFLICT (conversation_id, client_key) WHERE client_key IS NOT NULL DO NOTHING"
)


class _LockBusy(Exception):
    """BEGIN IMMEDIATE found the write lock taken, and this connection does not wait."""


class _UndoWrites(Exception):
    """Raised by a write to have its own statements undone and `result` returned: a resend
    found stored already answers with what was stored, and leaves nothing changed."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


def _as_store_error(exc: Exception) -> WarmlineError:
    return exc if isinstance(exc, WarmlineError) else Unavailable(f"store write failed: {exc}")


@contextmanager
def _rolled_back_on_error(db: sqlite3.Connection) -> Iterator[None]:
    """Whatever escapes (an error of SQLite itself, a cancellation) leaves no transaction
    open behind it."""
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _run_one(db: sqlite3.Connection, op: SyncOp, undo_sql: str) -> tuple[tuple[bool, Any], bool]:
    """Run one write: its outcome, and whether `undo_sql` undid its statements (it raised:
    refused, failed, or answered with what was stored before)."""
    try:
        return (True, op(db)), False
    except _UndoWrites as answered:
        outcome: tuple[bool, Any] = (True, answered.result)
    except Exception as exc:
        outcome = (False, _as_store_error(exc))
    db.execute(undo_sql)
    return outcome, True


def _run_together(
    db: sqlite3.Connection, batch: list[QueuedWrite]
) -> list[tuple[bool, Any]] | None:
    """The batch in the open transaction, committed; None, with everything undone, when one
    of the writes raised. Chat messages are rarely refused, and a savepoint per write costs
    two more statements (SAVEPOINT, RELEASE) beside its usual two or three."""
    with _rolled_back_on_error(db):
        try:
            results = [op(db) for op, _, _ in batch]
        except Exception:
            db.execute("ROLLBACK")
            return None
        db.execute("COMMIT")
    return [(True, result) for result in results]


def _run_each_in_savepoint(
    db: sqlite3.Connection, batch: list[QueuedWrite]
) -> tuple[list[tuple[bool, Any]], int]:
    """The batch in the open transaction, each write undone alone when it raises; and how
    many were undone."""
    outcomes: list[tuple[bool, Any]] = []
    undone = 0
    with _rolled_back_on_error(db):
        for op, _, _ in batch:
            db.execute("SAVEPOINT op")
            outcome, was_undone = _run_one(db, op, "ROLLBACK TO op")
            db.execute("RELEASE op")
            outcomes.append(outcome)
            undone += was_undone
        db.execute("COMMIT")
    return outcomes, undone


def _begin(db: sqlite3.Connection, wait: bool) -> None:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if not wait and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            raise _LockBusy() from exc
        raise


E = TypeVar("E")


def _take_batch(queue: asyncio.Queue[E], first: E, limit: int) -> list[E]:
    """`first` and whatever else is queued already, up to `limit` in all."""
    batch = [first]
    while len(batch) < limit and not queue.empty():
        batch.append(queue.get_nowait())
    return batch


def _settle(futures: Sequence[asyncio.Future[Any]], outcomes: Sequence[tuple[bool, Any]]) -> None:
    """Answer each waiting caller with its own outcome: (True, result) or (False, error)."""
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _fail_all(batch: Sequence[tuple[Any, asyncio.Future[Any]]], error: Exception) -> None:
    _settle([future for _, future in batch], [(False, error)] * len(batch))


def _attempt(fn: Callable[[sqlite3.Connection], Any], db: sqlite3.Connection) -> tuple[bool, Any]:
    """Run one read of a batch; its failure is its caller's alone, not its neighbours'."""
    try:
        return True, fn(db)
    except WarmlineError as exc:
        return False, exc
    except sqlite3.Error as exc:
        error = Unavailable(f"store read failed: {exc}")
        error.__cause__ = exc
        return False, error
    except Exception as exc:
        return False, exc


def _ensure_parent_directory(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _event(row: Sequence[Any]) -> Event:
    return Event(row[0], int(row[1]), float(row[2]), row[3], json.loads(row[4]))


def _next_seq(db: sqlite3.Connection, conversation_id: str, now: float) -> int:
    row = db.execute(
        "UPDATE conversations SET last_seq = last_seq + 1, updated_at = ? WHERE id = ? "
        "RETURNING last_seq",
        (now, conversation_id),
    ).fetchone()
    if row is None:
        raise NotFound("unknown conversation")
    return int(row[0])


def _bump_kb_version(db: sqlite3.Connection, tenant_id: str) -> int:
    row = db.execute(
        "UPDATE tenants SET kb_version = kb_version + 1 WHERE id = ? RETURNING kb_version",
        (tenant_id,),
    ).fetchone()
    return int(row[0])
