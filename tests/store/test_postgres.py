"""PostgreSQL specifics beyond the store contract: migrations, the CLI, writers on separate
nodes (one of them another OS process), the SKIP LOCKED dispatcher query, error mapping.

Runs against WARMLINE_TEST_POSTGRES_URL like the contract suite (see tests/store/conftest.py
for pointing it at another server); each test gets its own fresh database. The pure helpers of
warmline/store/postgres.py are tested first, without any server.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.helpers.server import run_cli
from tests.store.conftest import POSTGRES_URL, PostgresEnv
from tests.store.test_contract import CUSTOMER, move, new_tenant, say, seqs, uid
from warmline.errors import BadRequest, Conflict, NotFound, Unavailable
from warmline.models import Conversation
from warmline.store import open_store
from warmline.store.base import MessageRequest, TransitionRequest
from warmline.store.pg_migrations import MIGRATIONS, latest_version, migrate, pending
from warmline.store.postgres import (
    KeyedLocks,
    PostgresStore,
    handle_time,
    parse_url,
    preview_of,
    redact,
    refusal,
    transition_changes,
)

# Pure helpers (no server) ----------------------------------------------------------------------


def conversation(**fields: Any) -> Conversation:
    base: dict[str, Any] = {"id": "c1", "tenant": "t", "state": "bot", "version": 3,
                            "last_seq": 7, "created_at": 1.0, "updated_at": 2.0}
    return Conversation(**{**base, **fields})


def test_parse_url_takes_pool_settings_out_of_the_query() -> None:
    options = parse_url(
        "postgresql://u:pw@db:5433/wl?pool_max_size=20&sslmode=require&command_timeout=2.5"
    )
    assert options.dsn == "postgresql://u:pw@db:5433/wl?sslmode=require"
    assert (options.min_size, options.max_size, options.command_timeout_s) == (1, 20, 2.5)
    plain = parse_url("postgresql://db/wl")
    assert (plain.dsn, plain.min_size, plain.max_size) == ("postgresql://db/wl", 1, 10)
    assert parse_url("postgres://db/wl?pool_min_size=12").max_size == 12
    assert parse_url("postgres://db/wl?statement_cache_size=0").statement_cache_size == 0
    for bad in ("pool_max_size=x", "pool_max_size=0", "pool_min_size=5&pool_max_size=2"):
        with pytest.raises(BadRequest):
            parse_url(f"postgresql://db/wl?{bad}")


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:secret@db:5432/wl") == "postgresql://u:***@db:5432/wl"
    assert redact("postgresql://u@db/wl") == "postgresql://u@db/wl"


def test_transition_changes_follow_the_sqlite_rules() -> None:
    now = 100.0
    current = conversation(escalation_reason="low_confidence", passed_over=("a1",))

    def req(from_state: str, to_state: str, reason: str = "r", **kw: Any) -> TransitionRequest:
        return TransitionRequest("c1", 3, from_state, to_state, "t", reason, **kw)

    queued = transition_changes(current, req("bot", "queued", "request_human", priority=2), now)
    assert queued["queued_at"] == now and queued["handed_off"] is True
    assert queued["escalation_reason"] == "request_human" and queued["priority"] == 2
    assert queued["version"] == 4 and queued["agent_id"] is None
    requeued = transition_changes(current, req("human", "queued", "reply_sla", pass_over="a2"),
                                  now)
    assert requeued["escalation_reason"] == "low_confidence"  # why the bot escalated is kept
    assert requeued["passed_over"] == ["a1", "a2"]
    human = transition_changes(current, req("queued", "human", agent_id="a3"), now)
    assert (human["agent_id"], human["assigned_at"], human["awaiting_agent_since"]) == (
        "a3", now, now)
    resolved = transition_changes(current, req("human", "resolved"), now)
    assert (resolved["resolved_by"], resolved["passed_over"], resolved["agent_id"]) == (
        "human", [], None)
    assert transition_changes(current, req("bot", "resolved"), now)["resolved_by"] == "bot"
    reopened = transition_changes(current, req("resolved", "bot"), now)
    assert (reopened["resolved_by"], reopened["rating"]) == (None, None)
    assert "priority" not in transition_changes(current, req("bot", "confused"), now)


def test_handle_time_only_for_human_resolutions() -> None:
    held = conversation(state="human", assigned_at=40.0)
    resolve = TransitionRequest("c1", 3, "human", "resolved", "resolve", "agent_resolved")
    assert handle_time(held, resolve, 100.0) == 60.0
    requeue = TransitionRequest("c1", 3, "human", "queued", "requeue", "agent_requeue")
    assert handle_time(held, requeue, 100.0) is None
    by_bot = TransitionRequest("c1", 3, "bot", "resolved", "resolve", "idle")
    assert handle_time(conversation(), by_bot, 100.0) is None


def test_refusal() -> None:
    bot_only = MessageRequest("c1", "k", {"role": "bot"}, "hi",
                              allowed_states=frozenset({"bot", "confused"}))
    assert refusal(bot_only, "bot", None) is None
    assert isinstance(refusal(bot_only, "human", "a1"), Conflict)
    mine = MessageRequest("c1", "k", {"role": "agent", "id": "a1"}, "hi", owner_agent_id="a1")
    assert refusal(mine, "human", "a1") is None
    assert isinstance(refusal(mine, "human", "a2"), Conflict)
    assert isinstance(refusal(mine, "queued", None), Conflict)


def test_preview_drops_nul_and_is_short() -> None:
    assert preview_of("a\x00b") == "ab"
    assert len(preview_of("x" * 500)) == 140


def test_pending_migrations_in_version_order() -> None:
    later = [(3, "c", ["x"]), (2, "b", ["y"]), (1, "a", ["z"])]
    assert [m[0] for m in pending({1}, later)] == [2, 3]
    assert pending({1, 2, 3}, later) == []
    assert latest_version(MIGRATIONS) == max(m[0] for m in MIGRATIONS)
    versions = [m[0] for m in MIGRATIONS]
    assert versions == sorted(set(versions)), "migrations are append-only, one per version"


async def test_keyed_locks_are_fifo_per_key_and_cleaned_up() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    release = asyncio.Event()
    other_key_ran = asyncio.Event()

    async def work(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(name)
            if name == "a1":
                await release.wait()
            if key == "b":
                other_key_ran.set()

    tasks = [asyncio.create_task(work(k, n))
             for k, n in (("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3"))]
    await asyncio.wait_for(other_key_ran.wait(), 5)  # another key is not held up by "a"
    assert order == ["a1", "b1"]
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a1", "b1", "a2", "a3"]
    assert len(locks) == 0


# With a server ---------------------------------------------------------------------------------


@pytest.fixture
async def pg() -> AsyncIterator[PostgresEnv]:
    env = PostgresEnv(POSTGRES_URL)
    await env.setup()
    try:
        yield env
    finally:
        await env.teardown()


async def node(pg: PostgresEnv) -> PostgresStore:
    store = await pg.node()
    assert isinstance(store, PostgresStore)
    return store


async def raw(pg: PostgresEnv) -> asyncpg.Connection:
    return await asyncpg.connect(pg.url, timeout=5)


# Migrations ------------------------------------------------------------------------------------


async def test_migrations_are_versioned_and_idempotent(pg: PostgresEnv) -> None:
    store = await node(pg)
    assert await store.schema_version() == latest_version()
    conn = await raw(pg)
    try:
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations")
        assert sorted(r["version"] for r in rows) == [m[0] for m in MIGRATIONS]
        assert all(r["applied_at"] > 0 and r["name"] for r in rows)
        tables_before = await conn.fetchval("SELECT count(*) FROM pg_tables "
                                            "WHERE schemaname = 'public'")
        # Again, by hand and by another node: nothing left to apply.
        assert await migrate(conn) == (latest_version(), [])
        other = await node(pg)
        assert await other.schema_version() == latest_version()
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(rows)
        assert await conn.fetchval("SELECT count(*) FROM pg_tables "
                                   "WHERE schemaname = 'public'") == tables_before

        # A later migration applies alone, once.
        extra = [*MIGRATIONS, (999, "extra", ["CREATE TABLE extra_probe (tenant text)"])]
        assert await migrate(conn, extra) == (999, [999])
        assert await migrate(conn, extra) == (999, [])

        # A failing migration changes nothing: DDL is transactional.
        broken = [*extra, (1000, "broken", ["CREATE TABLE half_done (x int)", "NOT SQL"])]
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await migrate(conn, broken)
        assert await conn.fetchval("SELECT MAX(version) FROM schema_migrations") == 999
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await conn.close()


async def test_nodes_starting_together_migrate_once(pg: PostgresEnv) -> None:
    stores = await asyncio.gather(*(node(pg) for _ in range(4)))
    assert {await s.schema_version() for s in stores} == {latest_version()}
    conn = await raw(pg)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)
    finally:
        await conn.close()


async def test_every_table_is_keyed_by_tenant_first(pg: PostgresEnv) -> None:
    await node(pg)
    conn = await raw(pg)
    try:
        rows = await conn.fetch(
            """SELECT c.relname AS table_name,
                      (SELECT a.attname FROM pg_attribute a
                       WHERE a.attrelid = i.indrelid AND a.attnum = i.indkey[0]) AS first_column
               FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE i.indisprimary AND n.nspname = 'public'"""
        )
    finally:
        await conn.close()
    keys = {r["table_name"]: r["first_column"] for r in rows}
    # Global by nature: the schema's own bookkeeping, node-shared secrets, the tenants table.
    global_tables = {"schema_migrations": "version", "secrets": "name", "tenants": "id"}
    for table, first in keys.items():
        assert first == global_tables.get(table, "tenant"), (table, first)
    assert {"conversations", "events", "agents", "kb_chunks"} <= set(keys)
    events_key = await _primary_key(pg, "events")
    assert events_key == ["tenant", "conversation_id", "seq"]


async def _primary_key(pg: PostgresEnv, table: str) -> list[str]:
    conn = await raw(pg)
    try:
        rows = await conn.fetch(
            """SELECT a.attname FROM pg_index i
               JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.n""",
            table,
        )
        return [r["attname"] for r in rows]
    finally:
        await conn.close()


async def test_cli_db_migrate_on_a_postgres_url(pg: PostgresEnv) -> None:
    first = await asyncio.to_thread(run_cli, "db", "migrate", "--db", pg.url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"schema at version {latest_version()}"
    # Again, with the URL from the environment as operators set it.
    again = await asyncio.to_thread(run_cli, "db", "migrate", env={"WARMLINE_DB": pg.url})
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"schema at version {latest_version()}"
    conn = await raw(pg)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)
    finally:
        await conn.close()
    # Other subcommands take the same URL.
    added = await asyncio.to_thread(run_cli, "tenant", "add", "acme", "--db", pg.url)
    assert added.returncode == 0, added.stderr
    listed = await asyncio.to_thread(run_cli, "tenant", "list", "--db", pg.url)
    assert "acme" in listed.stdout


async def test_open_store_picks_postgres_for_urls() -> None:
    assert isinstance(open_store("postgresql://db/wl"), PostgresStore)
    assert isinstance(open_store("postgres://db/wl"), PostgresStore)


# Writers on several nodes ----------------------------------------------------------------------

WRITER_NODE = """
import asyncio, sys
from warmline.store.base import MessageRequest
from warmline.store.postgres import PostgresStore

async def main(url, ids, per_writer):
    store = PostgresStore(url)
    await store.open()
    author = {"role": "customer", "id": "cust-1", "name": "Customer"}

    async def writer(w):
        for i in range(per_writer):
            c = ids[(w + i) % len(ids)]
            await store.append_message(MessageRequest(c, f"p{w}-{i}", author, f"p{w}-{i}"))

    try:
        await asyncio.gather(*(writer(w) for w in range(8)))
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])))
"""


async def test_writers_on_two_nodes_and_another_process_keep_seq_gap_free(
    pg: PostgresEnv,
) -> None:
    a, b = await node(pg), await node(pg)
    tenant_id = await new_tenant(a)
    conversations = [await a.create_conversation(tenant_id) for _ in range(3)]
    ids = [c.id for c in conversations]
    per_writer = 15
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER_NODE, pg.url, ",".join(ids), str(per_writer),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )

    async def writer(store: PostgresStore, name: str) -> None:
        for i in range(per_writer):
            c = ids[i % len(ids)]
            await say(store, c, f"{name}-{i}", client_id=f"{name}-{i}")
            if i % 5 == 0:  # and resend one: acked again, stored once
                _, created, _ = await store.append_message(
                    MessageRequest(c, f"{name}-{i}", CUSTOMER, "resent")
                )
                assert not created

    async def flipper(store: PostgresStore, c: str) -> int:
        """Compare-and-set transitions racing the appends and the other node's flipper."""
        applied = 0
        for _ in range(6):
            current = await store.get_conversation(c)
            dest = "confused" if current.state == "bot" else "bot"
            trigger, reason = ("confuse", "low_confidence") if dest == "confused" else (
                "recover", "confident_answer")
            try:
                await store.apply_transition(TransitionRequest(
                    c, current.version, current.state, dest, trigger, reason))
                applied += 1
            except Conflict:
                pass
        return applied

    results = await asyncio.gather(
        *(writer(store, f"{label}{w}") for w in range(6) for label, store in (("a", a), ("b", b))),
        *(flipper(store, c) for c in ids for store in (a, b)),
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    transitions = sum(r for r in results if isinstance(r, int))

    total_messages = 0
    total_states = 0
    for c in ids:
        events = await b.events_after(c, 0)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert await seqs(a, c) == [e.seq for e in events]
        current = await a.get_conversation(c)
        assert current.last_seq == len(events)
        states = [e for e in events if e.kind == "state"]
        assert current.version == len(states)  # every applied transition is one event
        messages = [e for e in events if e.kind == "message"]
        client_ids = [e.data["client_id"] for e in messages]
        assert len(client_ids) == len(set(client_ids)), "a message was stored twice"
        total_messages += len(messages)
        total_states += len(states)
    assert total_messages == 12 * per_writer + 8 * per_writer
    assert total_states == transitions > 0


# The dispatcher: SKIP LOCKED -------------------------------------------------------------------


async def queue_of(store: PostgresStore, tenant_id: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        c = await store.create_conversation(tenant_id)
        await move(store, c.id, "escalate", "request_human")
        ids.append(c.id)
    return ids


async def test_claim_next_queued_takes_the_head_of_the_queue(pg: PostgresEnv) -> None:
    store = await node(pg)
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    bob, _ = await store.add_agent(tenant_id, "Bob")
    assert await store.claim_next_queued(tenant_id, ann.id) is None
    first, second = await queue_of(store, tenant_id, 2)
    urgent = await store.create_conversation(tenant_id)
    await move(store, urgent.id, "escalate", "request_human", priority=5)
    # Ann was passed over on the urgent one (say she missed its reply SLA before).
    await move(store, urgent.id, "assign", "dispatched", agent_id=ann.id)
    await move(store, urgent.id, "requeue", "reply_sla", pass_over=ann.id, priority=5)

    claimed = await store.claim_next_queued(tenant_id, ann.id)
    assert claimed is not None
    conversation, event = claimed
    assert (conversation.id, conversation.state, conversation.agent_id) == (first, "human", ann.id)
    assert (event.seq, event.data["to"], event.data["agent"]["name"]) == (
        conversation.last_seq, "human", "Ann")
    assert event.data["reason"] == "dispatched"
    bob_claim = await store.claim_next_queued(tenant_id, bob.id, reason="claimed")
    assert bob_claim is not None and bob_claim[0].id == urgent.id
    assert bob_claim[1].data["reason"] == "claimed"
    ann_again = await store.claim_next_queued(tenant_id, ann.id)
    assert ann_again is not None and ann_again[0].id == second
    assert await store.claim_next_queued(tenant_id, ann.id) is None
    assert await store.queued(tenant_id) == []
    assert await store.loads(tenant_id) == {ann.id: 2, bob.id: 1}


async def test_claim_skips_a_conversation_another_node_has_locked(pg: PostgresEnv) -> None:
    store = await node(pg)
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    head, second = await queue_of(store, tenant_id, 2)
    other_node = await raw(pg)
    try:
        transaction = other_node.transaction()
        await transaction.start()
        # Another node is in the middle of assigning the head of the queue.
        await other_node.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", head)
        # A plain read does not wait on the lock and still lists both (positions stay put) ...
        assert [c.id for c in await store.queued(tenant_id)] == [head, second]
        # ... and the claim takes the next one at once instead of waiting for that node.
        claimed = await asyncio.wait_for(store.claim_next_queued(tenant_id, ann.id), 5)
        assert claimed is not None and claimed[0].id == second
        await transaction.rollback()
    finally:
        await other_node.close()
    again = await store.claim_next_queued(tenant_id, ann.id)
    assert again is not None and again[0].id == head


async def test_dispatchers_on_two_nodes_drain_the_queue_exactly_once(pg: PostgresEnv) -> None:
    a, b = await node(pg), await node(pg)
    tenant_id = await new_tenant(a)
    agents = [(await a.add_agent(tenant_id, f"Agent {i}"))[0] for i in range(6)]
    queued = await queue_of(a, tenant_id, 30)

    async def dispatcher(store: PostgresStore, agent_id: str) -> list[str]:
        got = []
        while (claimed := await store.claim_next_queued(tenant_id, agent_id)) is not None:
            got.append(claimed[0].id)
        return got

    results = await asyncio.gather(
        *(dispatcher(store, agent.id) for agent, store in zip(agents, [a, b] * 3, strict=True))
    )
    assigned = [cid for got in results for cid in got]
    assert sorted(assigned) == sorted(queued)  # each exactly once, none left behind
    assert await a.queued(tenant_id) == []
    for agent, got in zip(agents, results, strict=True):
        owned = await b.owned_by(agent.id)
        assert sorted(c.id for c in owned) == sorted(got)
    for cid in queued:
        assert await seqs(a, cid) == [1, 2]  # queued, then one assignment


# Error mapping ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_is_unavailable() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{_free_port()}/x?connect_timeout=2")
    with pytest.raises(Unavailable):
        await store.open()
    with pytest.raises(Unavailable):
        await store.ping()


async def test_missing_database_is_unavailable(pg: PostgresEnv) -> None:
    store = PostgresStore(pg.url + "_missing")
    with pytest.raises(Unavailable):
        await store.open()


async def test_closed_store_is_unavailable(pg: PostgresEnv) -> None:
    store = PostgresStore(pg.url)
    await store.open()
    await store.close()
    await store.close()  # twice is fine
    for call in (store.ping(), store.get_tenant("x"), store.create_conversation("x")):
        with pytest.raises(Unavailable):
            await call


async def waiting_backend(conn: asyncpg.Connection, database: str) -> int:
    """The pid of the store's connection once it waits on a row lock (polls the server)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND "
            "application_name = 'warmline' AND wait_event_type = 'Lock'",
            database,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the store never waited on the lock")


async def test_a_connection_killed_mid_write_is_unavailable_and_leaves_no_gap(
    pg: PostgresEnv,
) -> None:
    store = await node(pg)
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    await say(store, c.id, "one", client_id="k1")
    blocker = await raw(pg)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", c.id)
        write = asyncio.create_task(
            store.append_message(MessageRequest(c.id, "k2", CUSTOMER, "two"))
        )
        pid = await waiting_backend(blocker, pg.database)
        await blocker.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(Unavailable):
            await write
        await transaction.rollback()
    finally:
        await blocker.close()
    # The pool replaces the dead connection; the resend lands as seq 2, no gap.
    event, created, _ = await store.append_message(MessageRequest(c.id, "k2", CUSTOMER, "two"))
    assert created and event.seq == 2
    assert await seqs(store, c.id) == [1, 2]


async def test_a_statement_timeout_is_unavailable(pg: PostgresEnv) -> None:
    store = PostgresStore(pg.url + "?command_timeout=0.3")
    await store.open()
    pg.stores.append(store)
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    blocker = await raw(pg)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", c.id)
            with pytest.raises(Unavailable):
                await store.append_message(MessageRequest(c.id, "k1", CUSTOMER, "hi"))
    finally:
        await blocker.close()
    assert (await say(store, c.id, "after", client_id="k1")).seq == 1


async def test_nul_characters(pg: PostgresEnv) -> None:
    store = await node(pg)
    with pytest.raises(BadRequest):
        await store.add_tenant(uid("t"), "bad\x00name")
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    # Message text is kept verbatim (json escapes it); only the display preview drops NUL.
    event = await say(store, c.id, "nul \x00 inside")
    assert (await store.events_after(c.id, 0))[0] == event
    assert event.data["text"] == "nul \x00 inside"
    assert (await store.get_conversation(c.id)).preview == "nul  inside"


async def test_not_found_and_conflict_mapping(pg: PostgresEnv) -> None:
    store = await node(pg)
    tenant_id = await new_tenant(store)
    with pytest.raises(Conflict):
        await store.add_tenant(tenant_id)
    with pytest.raises(NotFound):
        await store.apply_transition(
            TransitionRequest(uid("c"), 0, "bot", "queued", "escalate", "request_human"))
    with pytest.raises(NotFound):
        await store.set_rating(uid("c"), 5, "")
    assert await store.events_after(uid("c"), 0) == []
    assert await store.owned_by(uid("a")) == []


async def test_ordering_is_bytewise_like_sqlite(pg: PostgresEnv) -> None:
    store = await node(pg)
    tenant_id = await new_tenant(store)
    for name in ("bob", "Zed", "_x", "alice", "Émile"):
        await store.add_agent(tenant_id, name)
    assert [a.name for a in await store.list_agents(tenant_id)] == sorted(
        ["bob", "Zed", "_x", "alice", "Émile"])


async def test_resends_queued_on_a_locked_conversation_store_once(pg: PostgresEnv) -> None:
    # Both nodes' statements wait on the same row lock; the second runs with a snapshot taken
    # before the first committed, so only the unique index can tell it the message is stored.
    a, b = await node(pg), await node(pg)
    tenant_id = await new_tenant(a)
    c = await a.create_conversation(tenant_id)
    blocker = await raw(pg)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", c.id)
        first = asyncio.create_task(a.append_message(MessageRequest(c.id, "k", CUSTOMER, "hi")))
        await waiting_backends(blocker, pg.database, 1)
        second = asyncio.create_task(b.append_message(MessageRequest(c.id, "k", CUSTOMER, "hi")))
        await waiting_backends(blocker, pg.database, 2)
        await transaction.commit()
    finally:
        await blocker.close()
    (event_a, created_a, _), (event_b, created_b, _) = await asyncio.gather(first, second)
    assert (created_a, created_b) == (True, False)
    assert event_a == event_b and event_a.seq == 1
    assert await seqs(a, c.id) == [1]
    assert (await a.get_conversation(c.id)).last_seq == 1


async def waiting_backends(conn: asyncpg.Connection, database: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND "
            "application_name = 'warmline' AND wait_event_type = 'Lock'",
            database,
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} store connections waited on the lock")
