"""The Store contract: every backend (tests/store/conftest.py BACKENDS) must pass all of it.

Tests use their own tenants (unique ids) so they also hold on a shared server; "nodes" are
separate Store instances over the same data, as separate processes would have.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from statemachine.machine import next_state
from tests.store.conftest import StoreEnv
from warmline.errors import BadRequest, Conflict, NotFound, Unavailable, WarmlineError
from warmline.models import Agent, Chunk, Conversation, Document, Event
from warmline.store.base import AppendedMessage, MessageRequest, Store, TransitionRequest
from warmline.store.sqlite import SQLiteStore

CUSTOMER: dict[str, Any] = {"role": "customer", "id": "cust-1", "name": "Customer"}
BOT: dict[str, Any] = {"role": "bot", "id": "bot", "name": "Warmline Bot"}
BOT_STATES = frozenset({"bot", "confused"})


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def author_of(agent: Agent) -> dict[str, Any]:
    return {"role": "agent", "id": agent.id, "name": agent.name}


async def new_tenant(store: Store) -> str:
    tenant_id = uid("t")
    await store.add_tenant(tenant_id)
    return tenant_id


async def say(
    store: Store,
    conversation_id: str,
    text: str = "hello",
    author: Mapping[str, Any] = CUSTOMER,
    client_id: str | None = None,
    **kwargs: Any,
) -> Event:
    event, created, _ = await store.append_message(
        MessageRequest(conversation_id, client_id or uid("m"), author, text, **kwargs)
    )
    assert created
    return event


async def move(
    store: Store, conversation_id: str, trigger: str, reason: str, **kwargs: Any
) -> Conversation:
    current = await store.get_conversation(conversation_id)
    dest = next_state(current.state, trigger, reason)
    updated, event = await store.apply_transition(
        TransitionRequest(
            conversation_id, current.version, current.state, dest, trigger, reason, **kwargs
        )
    )
    assert (updated.state, updated.version) == (dest, current.version + 1)
    assert event.kind == "state" and event.seq == updated.last_seq
    return updated


async def to_human(store: Store, conversation_id: str, agent: Agent) -> Conversation:
    await move(store, conversation_id, "escalate", "request_human")
    return await move(store, conversation_id, "assign", "dispatched", agent_id=agent.id)


async def seqs(store: Store, conversation_id: str) -> list[int]:
    return [e.seq for e in await store.events_after(conversation_id, 0)]


# Lifecycle -------------------------------------------------------------------------------------


async def test_ping_and_schema_version(env: StoreEnv, store: Store) -> None:
    await store.ping()
    assert await store.schema_version() >= 1
    other = await env.node()
    assert await other.schema_version() == await store.schema_version()  # migrating is idempotent
    env.stores.remove(other)
    await other.close()
    with pytest.raises(Unavailable):
        await other.ping()
    await store.ping()  # the other node closing does not affect this one


async def test_secrets_are_generated_once_and_shared(env: StoreEnv, store: Store) -> None:
    first = await store.secret("session-key")
    assert isinstance(first, bytes) and len(first) == 32
    assert await store.secret("session-key") == first
    assert await (await env.node()).secret("session-key") == first
    assert await store.secret("other", generate_bytes=16) != first
    assert len(await store.secret("other")) == 16


async def test_secret_raced_by_two_nodes_is_one_value(env: StoreEnv, store: Store) -> None:
    other = await env.node()
    values = await asyncio.gather(*(s.secret("raced") for s in [store, other] * 5))
    assert len(set(values)) == 1


# Tenants ---------------------------------------------------------------------------------------


async def test_tenants(store: Store) -> None:
    tenant_id = uid("t")
    tenant = await store.add_tenant(tenant_id, "Demo Inc", ["https://a.example"])
    assert (tenant.id, tenant.name, tenant.allowed_origins, tenant.kb_version) == (
        tenant_id, "Demo Inc", ("https://a.example",), 0)
    assert await store.get_tenant(tenant_id) == tenant
    assert tenant in await store.list_tenants()
    unnamed = await store.add_tenant(uid("t"))
    assert unnamed.name == unnamed.id and unnamed.allowed_origins == ()

    updated = await store.set_allowed_origins(tenant_id, ["https://b.example", "https://c"])
    assert updated.allowed_origins == ("https://b.example", "https://c")
    assert (await store.get_tenant(tenant_id)).allowed_origins == updated.allowed_origins


async def test_duplicate_tenant_is_a_conflict_and_changes_nothing(store: Store) -> None:
    tenant_id = uid("t")
    original = await store.add_tenant(tenant_id, "First")
    with pytest.raises(Conflict):
        await store.add_tenant(tenant_id, "Second")
    assert await store.get_tenant(tenant_id) == original


async def test_unknown_tenant_is_not_found(store: Store) -> None:
    ghost = uid("ghost")
    with pytest.raises(NotFound):
        await store.get_tenant(ghost)
    with pytest.raises(NotFound):
        await store.set_allowed_origins(ghost, [])
    with pytest.raises(NotFound):
        await store.kb_version(ghost)
    with pytest.raises(NotFound):
        await store.create_conversation(ghost)
    with pytest.raises(NotFound):
        await store.add_agent(ghost, "Ann")
    assert ghost not in {t.id for t in await store.list_tenants()}


# Agents ----------------------------------------------------------------------------------------


async def test_agents_and_tokens(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, token = await store.add_agent(tenant_id, "Ann")
    assert (ann.tenant, ann.name, ann.role, ann.revoked) == (tenant_id, "Ann", "agent", False)
    assert len(token) >= 32
    assert await store.agent_by_token(token) == ann
    assert await store.agent_by_token(token + "x") is None
    assert await store.agent_by_token("") is None
    assert await store.get_agent(ann.id) == ann

    sup, given = await store.add_agent(tenant_id, "Sue", role="supervisor", token="wla_given_1")
    assert given == "wla_given_1" and sup.role == "supervisor"
    assert await store.agent_by_token("wla_given_1") == sup
    assert {a.id for a in await store.list_agents(tenant_id)} == {ann.id, sup.id}
    assert {ann.id, sup.id} <= {a.id for a in await store.list_agents()}
    other_tenant = await new_tenant(store)
    assert await store.list_agents(other_tenant) == []


async def test_unknown_role_is_a_bad_request(store: Store) -> None:
    tenant_id = await new_tenant(store)
    with pytest.raises(BadRequest):
        await store.add_agent(tenant_id, "Eve", role="admin")
    assert await store.list_agents(tenant_id) == []


async def test_a_token_already_in_use_is_a_conflict(store: Store) -> None:
    tenant_id = await new_tenant(store)
    await store.add_agent(tenant_id, "Ann", token="wla_same")
    with pytest.raises(Conflict):
        await store.add_agent(tenant_id, "Bob", token="wla_same")
    assert [a.name for a in await store.list_agents(tenant_id)] == ["Ann"]


async def test_only_the_token_hash_is_stored(env: StoreEnv, store: Store) -> None:
    tenant_id = await new_tenant(store)
    _, token = await store.add_agent(tenant_id, "Ann")
    _, given = await store.add_agent(tenant_id, "Bob", token="wla_" + "q7" * 20)
    dump = await env.dump()
    assert dump, "the dump must see the stored data"
    assert tenant_id.encode() in dump  # sanity: the dump holds what was written
    for secret in (token, given):
        assert secret.encode() not in dump


async def test_revoke(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, token = await store.add_agent(tenant_id, "Ann")
    revoked = await store.revoke_agent(ann.id)
    assert revoked.revoked and revoked.id == ann.id
    assert await store.agent_by_token(token) is None
    assert (await store.get_agent(ann.id)).revoked
    with pytest.raises(NotFound):
        await store.revoke_agent(uid("a"))
    with pytest.raises(NotFound):
        await store.get_agent(uid("a"))


# Conversations and the event log ---------------------------------------------------------------


async def test_create_and_get(store: Store) -> None:
    tenant_id = await new_tenant(store)
    conversation = await store.create_conversation(tenant_id)
    assert (conversation.tenant, conversation.state, conversation.version,
            conversation.last_seq, conversation.agent_id) == (tenant_id, "bot", 0, 0, None)
    assert await store.get_conversation(conversation.id) == conversation
    assert await store.events_after(conversation.id, 0) == []
    with pytest.raises(NotFound):
        await store.get_conversation(uid("c"))
    other = await store.create_conversation(tenant_id)
    assert other.id != conversation.id


async def test_append_message(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    sources = [{"doc_id": "d1", "title": "Refunds", "url": "https://x/refunds"}]
    event, created, state = await store.append_message(
        MessageRequest(c.id, "cm-1", CUSTOMER, "Where is my refund? 😀")
    )
    assert state == "bot"  # the state the message was stored in, from the same write
    assert created and (event.conversation_id, event.seq, event.kind) == (c.id, 1, "message")
    assert event.data["author"] == CUSTOMER
    assert event.data["text"] == "Where is my refund? 😀"
    assert event.data["client_id"] == "cm-1"
    assert isinstance(event.data["id"], str) and event.data["id"]
    reply = await say(store, c.id, "See our refunds page", BOT, "b-1", sources=sources)
    assert reply.seq == 2 and reply.data["sources"] == sources
    assert await store.events_after(c.id, 0) == [event, reply]
    assert (await store.get_conversation(c.id)).last_seq == 2
    frame = reply.to_frame()
    assert (frame["type"], frame["seq"], frame["kind"], frame["author"]["role"]) == (
        "event", 2, "message", "bot")


async def test_append_to_unknown_conversation(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.append_message(MessageRequest(uid("c"), "x", CUSTOMER, "hi"))


async def test_seq_is_gap_free_under_many_concurrent_writers(store: Store) -> None:
    tenant_id = await new_tenant(store)
    conversations = [await store.create_conversation(tenant_id) for _ in range(5)]
    results = await asyncio.gather(
        *(
            store.append_message(
                MessageRequest(conversations[i % 5].id, f"m{i}", CUSTOMER, f"message {i}")
            )
            for i in range(200)
        )
    )
    assert all(result.created for result in results)
    for c in conversations:
        assert await seqs(store, c.id) == list(range(1, 41))
        assert (await store.get_conversation(c.id)).last_seq == 40
    # Every message landed exactly once, in its own conversation.
    texts = {e.data["text"] for c in conversations for e in await store.events_after(c.id, 0)}
    assert texts == {f"message {i}" for i in range(200)}


async def test_seq_is_gap_free_across_two_nodes(env: StoreEnv, store: Store) -> None:
    other = await env.node()
    tenant_id = await new_tenant(store)
    conversations = [await store.create_conversation(tenant_id) for _ in range(5)]

    async def writer(node: Store, name: str, start: int) -> None:
        # Sequential appends per writer, ten writers per node: many interleaved transactions.
        for i in range(10):
            c = conversations[(start + i) % 5]
            await node.append_message(MessageRequest(c.id, f"{name}-{i}", CUSTOMER, name))

    await asyncio.gather(
        *(writer(node, f"{label}{w}", w) for w in range(10)
          for label, node in (("a", store), ("b", other)))
    )
    total = 0
    for c in conversations:
        got = await seqs(other, c.id)
        assert got == list(range(1, len(got) + 1))
        assert await seqs(store, c.id) == got
        total += len(got)
    assert total == 200


async def test_repeated_client_id_is_idempotent(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    first, created, _ = await store.append_message(MessageRequest(c.id, "same", CUSTOMER, "hi"))
    again, created_again, _ = await store.append_message(
        MessageRequest(c.id, "same", CUSTOMER, "hi (resent)")
    )
    assert created and not created_again
    assert again == first
    assert await seqs(store, c.id) == [1]
    assert (await store.get_conversation(c.id)).last_seq == 1


async def test_concurrent_resends_make_one_event(env: StoreEnv, store: Store) -> None:
    other = await env.node()
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    results = await asyncio.gather(
        *(node.append_message(MessageRequest(c.id, "dup", CUSTOMER, "hi"))
          for node in [store, other] * 5)
    )
    assert sum(result.created for result in results) == 1
    assert {result.event.seq for result in results} == {1}
    assert await seqs(store, c.id) == [1]


async def test_same_client_id_from_different_authors_is_two_events(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    other_customer = {**CUSTOMER, "id": "cust-2"}
    a, created_a, _ = await store.append_message(MessageRequest(c.id, "x1", CUSTOMER, "a"))
    b, created_b, _ = await store.append_message(MessageRequest(c.id, "x1", BOT, "b"))
    d, created_d, _ = await store.append_message(MessageRequest(c.id, "x1", other_customer, "d"))
    assert created_a and created_b and created_d
    assert [a.seq, b.seq, d.seq] == [1, 2, 3]
    # And the same author's id in another conversation is another message.
    c2 = await store.create_conversation(tenant_id)
    e, created_e, _ = await store.append_message(MessageRequest(c2.id, "x1", CUSTOMER, "e"))
    assert created_e and e.seq == 1


async def test_a_resend_is_acked_even_after_the_state_changed(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    first, _, _ = await store.append_message(
        MessageRequest(c.id, "b1", BOT, "answer", allowed_states=BOT_STATES)
    )
    await move(store, c.id, "escalate", "request_human")
    again, created, _ = await store.append_message(
        MessageRequest(c.id, "b1", BOT, "answer", allowed_states=BOT_STATES)
    )
    assert (again, created) == (first, False)


async def test_bot_messages_are_refused_outside_the_allowed_states(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    c = await store.create_conversation(tenant_id)
    await to_human(store, c.id, ann)
    before = await store.get_conversation(c.id)
    events_before = await store.events_after(c.id, 0)
    with pytest.raises(Conflict):
        await store.append_message(
            MessageRequest(c.id, "b2", BOT, "I can help!", allowed_states=BOT_STATES)
        )
    assert await store.get_conversation(c.id) == before
    assert await store.events_after(c.id, 0) == events_before
    # Once refused, the same client id is still free: nothing was recorded for it.
    await move(store, c.id, "resolve", "agent_resolved")
    await move(store, c.id, "reopen", "customer_message")
    _, created, _ = await store.append_message(
        MessageRequest(c.id, "b2", BOT, "I can help!", allowed_states=BOT_STATES)
    )
    assert created


async def test_agent_messages_need_the_owner(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    bob, _ = await store.add_agent(tenant_id, "Bob")
    c = await store.create_conversation(tenant_id)

    async def agent_says(agent: Agent, client_id: str) -> AppendedMessage:
        return await store.append_message(
            MessageRequest(c.id, client_id, author_of(agent), "Hi, Ann here",
                           owner_agent_id=agent.id)
        )

    with pytest.raises(Conflict):  # not human yet
        await agent_says(ann, "a0")
    await to_human(store, c.id, ann)
    last_seq = (await store.get_conversation(c.id)).last_seq
    with pytest.raises(Conflict):  # someone else's
        await agent_says(bob, "b1")
    assert (await store.get_conversation(c.id)).last_seq == last_seq
    event, created, state = await agent_says(ann, "a1")
    assert created and event.seq == last_seq + 1 and event.data["author"]["id"] == ann.id
    assert state == "human"
    again = await agent_says(ann, "a1")  # a resend: the first event, and the state now
    assert (again.event, again.created, again.state) == (event, False, "human")


async def test_events_after_pages(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    for i in range(25):
        await say(store, c.id, f"m{i}", client_id=f"k{i}")
    pages = []
    after = 0
    while True:
        page = await store.events_after(c.id, after, limit=10)
        if not page:
            break
        pages.append([e.seq for e in page])
        after = page[-1].seq
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
    assert [e.data["text"] for e in await store.events_after(c.id, 23)] == ["m23", "m24"]
    assert await store.events_after(c.id, 25) == []
    assert await store.events_after(c.id, 1000) == []


# Transitions -----------------------------------------------------------------------------------


async def test_transition_event_and_fields(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    c = await store.create_conversation(tenant_id)
    await say(store, c.id, "I want my money back")
    queued = await move(store, c.id, "escalate", "request_human", priority=3,
                        details={"summary": "refund"})
    assert (queued.priority, queued.escalation_reason, queued.handed_off) == (
        3, "request_human", True)
    assert queued.queued_at is not None and queued.agent_id is None
    [event] = await store.events_after(c.id, 1)
    assert event.seq == 2 and event.kind == "state"
    assert {k: event.data[k] for k in ("from", "to", "reason", "agent")} == {
        "from": "bot", "to": "queued", "reason": "request_human", "agent": None}
    assert event.data["details"] == {"summary": "refund"}

    human = await move(store, c.id, "assign", "claimed", agent_id=ann.id)
    assert human.agent_id == ann.id and human.assigned_at is not None
    [assigned] = await store.events_after(c.id, 2)
    assert assigned.data["agent"]["id"] == ann.id and assigned.data["agent"]["name"] == "Ann"

    requeued = await move(store, c.id, "requeue", "agent_disconnected", pass_over=ann.id)
    assert requeued.agent_id is None and requeued.passed_over == (ann.id,)
    assert requeued.escalation_reason == "request_human"  # why the bot escalated is kept

    await move(store, c.id, "assign", "dispatched", agent_id=ann.id)
    resolved = await move(store, c.id, "resolve", "agent_resolved")
    assert (resolved.resolved_by, resolved.agent_id) == ("human", None)
    assert await seqs(store, c.id) == [1, 2, 3, 4, 5, 6]


async def test_compare_and_set_has_exactly_one_winner(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    await say(store, c.id)
    before = await store.get_conversation(c.id)

    def request(to_state: str, trigger: str, reason: str) -> TransitionRequest:
        return TransitionRequest(c.id, before.version, "bot", to_state, trigger, reason)

    results = await asyncio.gather(
        store.apply_transition(request("queued", "escalate", "request_human")),
        store.apply_transition(request("resolved", "resolve", "idle")),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], Conflict)
    winner, event = winners[0]
    after = await store.get_conversation(c.id)
    assert after == winner
    assert after.version == before.version + 1 and after.last_seq == before.last_seq + 1
    assert await store.events_after(c.id, before.last_seq) == [event]


async def test_compare_and_set_across_two_nodes(env: StoreEnv, store: Store) -> None:
    other = await env.node()
    tenant_id = await new_tenant(store)
    agents = [(await store.add_agent(tenant_id, f"Agent {i}"))[0] for i in range(6)]
    c = await store.create_conversation(tenant_id)
    queued = await move(store, c.id, "escalate", "request_human")
    # Six agents on two nodes claim the same conversation at once.
    results = await asyncio.gather(
        *(
            node.apply_transition(
                TransitionRequest(c.id, queued.version, "queued", "human", "assign", "claimed",
                                  agent_id=agent.id)
            )
            for node, agent in zip([store, other] * 3, agents, strict=True)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    owner = winners[0][0].agent_id
    assert (await other.get_conversation(c.id)).agent_id == owner
    assert await seqs(store, c.id) == [1, 2]


async def test_stale_version_or_state_is_a_conflict(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    await move(store, c.id, "confuse", "low_confidence")
    current = await store.get_conversation(c.id)
    stale = TransitionRequest(c.id, current.version - 1, "bot", "queued", "escalate",
                              "request_human")
    wrong_state = TransitionRequest(c.id, current.version, "bot", "queued", "escalate",
                                    "request_human")
    for request in (stale, wrong_state):
        with pytest.raises(Conflict):
            await store.apply_transition(request)
    assert await store.get_conversation(c.id) == current
    with pytest.raises(NotFound):
        await store.apply_transition(
            TransitionRequest(uid("c"), 0, "bot", "queued", "escalate", "request_human")
        )


async def test_a_failed_write_does_not_undo_its_batch_neighbours(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    c1 = await store.create_conversation(tenant_id)
    c2 = await store.create_conversation(tenant_id)
    c3 = await store.create_conversation(tenant_id)
    await to_human(store, c3.id, ann)
    base1 = await store.get_conversation(c1.id)
    base3 = await store.get_conversation(c3.id)
    batches_before = store.batches if isinstance(store, SQLiteStore) else 0

    def transition(to_state: str, trigger: str, reason: str) -> TransitionRequest:
        return TransitionRequest(c1.id, base1.version, "bot", to_state, trigger, reason)

    results = await asyncio.gather(
        say(store, c1.id, "one", client_id="c1-1"),
        store.apply_transition(transition("queued", "escalate", "request_human")),
        say(store, c2.id, "two", client_id="c2-1"),
        store.apply_transition(transition("resolved", "resolve", "idle")),  # loses the race
        store.append_message(  # refused: a human owns c3
            MessageRequest(c3.id, "bot-1", BOT, "hi", allowed_states=BOT_STATES)
        ),
        say(store, c1.id, "three", client_id="c1-2"),
        say(store, c2.id, "four", client_id="c2-2"),
        say(store, c3.id, "five", client_id="c3-1"),
        return_exceptions=True,
    )
    if isinstance(store, SQLiteStore):  # the scenario is one group commit on SQLite
        assert store.batches == batches_before + 1
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 2 and all(isinstance(f, Conflict) for f in failures)
    assert isinstance(results[1], tuple) and isinstance(results[4], Conflict)
    assert isinstance(results[3], Conflict)
    assert await seqs(store, c1.id) == [1, 2, 3]
    assert [e.data["text"] for e in await store.events_after(c1.id, 0) if e.kind == "message"] \
        == ["one", "three"]
    assert await seqs(store, c2.id) == [1, 2]
    assert await seqs(store, c3.id) == list(range(1, base3.last_seq + 2))
    assert (await store.get_conversation(c1.id)).state == "queued"


# Queue, ownership and reply SLA ----------------------------------------------------------------


async def test_queued_order_is_priority_then_time(store: Store) -> None:
    tenant_id = await new_tenant(store)
    other_tenant = await new_tenant(store)
    ids = []
    for priority in (0, 5, 0, 5):
        c = await store.create_conversation(tenant_id)
        await move(store, c.id, "escalate", "request_human", priority=priority)
        ids.append(c.id)
    not_queued = await store.create_conversation(tenant_id)
    elsewhere = await store.create_conversation(other_tenant)
    await move(store, elsewhere.id, "escalate", "request_human")
    queue = await store.queued(tenant_id)
    assert [c.id for c in queue] == [ids[1], ids[3], ids[0], ids[2]]
    assert not_queued.id not in {c.id for c in queue}
    assert [c.id for c in await store.queued(other_tenant)] == [elsewhere.id]
    assert all(c.state == "queued" and c.queued_at is not None for c in queue)


async def test_loads_and_owned_by(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    bob, _ = await store.add_agent(tenant_id, "Bob")
    cs = [await store.create_conversation(tenant_id) for _ in range(4)]
    await to_human(store, cs[0].id, ann)
    await to_human(store, cs[1].id, ann)
    await to_human(store, cs[2].id, bob)
    await move(store, cs[3].id, "escalate", "request_human")
    assert await store.loads(tenant_id) == {ann.id: 2, bob.id: 1}
    assert [c.id for c in await store.owned_by(ann.id)] == [cs[0].id, cs[1].id]
    assert [c.id for c in await store.owned_by(bob.id)] == [cs[2].id]

    await move(store, cs[0].id, "resolve", "agent_resolved")
    await move(store, cs[2].id, "requeue", "agent_requeue")
    loads = await store.loads(tenant_id)
    assert loads.get(ann.id) == 1 and loads.get(bob.id, 0) == 0
    assert [c.id for c in await store.owned_by(ann.id)] == [cs[1].id]
    assert await store.owned_by(bob.id) == []
    assert await store.loads(await new_tenant(store)) == {}


async def test_awaiting_reply(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    c = await store.create_conversation(tenant_id)

    async def awaiting(before: float) -> bool:
        return c.id in {x.id for x in await store.awaiting_reply_since(before)}

    await say(store, c.id, "while the bot answers")
    assert (await store.get_conversation(c.id)).awaiting_agent_since is None
    await to_human(store, c.id, ann)
    await say(store, c.id, "hi Ann", author_of(ann), owner_agent_id=ann.id)
    assert (await store.get_conversation(c.id)).awaiting_agent_since is None
    assert not await awaiting(time.time() + 60)

    t0 = time.time()
    await say(store, c.id, "are you there?")
    since = (await store.get_conversation(c.id)).awaiting_agent_since
    assert since is not None and t0 <= since <= time.time()
    assert await awaiting(since + 0.001)
    assert not await awaiting(since)  # strictly before `before`
    await say(store, c.id, "hello??")  # the wait started with the first unanswered message
    assert (await store.get_conversation(c.id)).awaiting_agent_since == since

    await say(store, c.id, "sorry, here", author_of(ann), owner_agent_id=ann.id)
    assert (await store.get_conversation(c.id)).awaiting_agent_since is None
    assert not await awaiting(time.time() + 60)

    await say(store, c.id, "one more thing")
    await move(store, c.id, "requeue", "reply_sla")
    assert (await store.get_conversation(c.id)).awaiting_agent_since is None
    assert not await awaiting(time.time() + 60)


async def test_customer_message_updates_the_preview(store: Store) -> None:
    tenant_id = await new_tenant(store)
    c = await store.create_conversation(tenant_id)
    await say(store, c.id, "x" * 500)
    preview = (await store.get_conversation(c.id)).preview
    assert preview and set(preview) == {"x"} and len(preview) <= 500


# Stats -----------------------------------------------------------------------------------------


async def test_tenant_stats_ratings_and_handle_times(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    by_bot, by_human, confused, fresh = [await store.create_conversation(tenant_id)
                                         for _ in range(4)]
    await move(store, by_bot.id, "resolve", "customer_satisfied")
    await to_human(store, by_human.id, ann)
    await move(store, by_human.id, "resolve", "agent_resolved")
    await move(store, confused.id, "confuse", "low_confidence")
    await store.set_rating(by_bot.id, 2, "")
    await store.set_rating(by_human.id, 4, "quick")
    with pytest.raises(NotFound):
        await store.set_rating(uid("c"), 5, "")

    stats = await store.tenant_stats(tenant_id)
    assert stats.states == {"resolved": 2, "confused": 1, "bot": 1}
    assert (stats.conversations, stats.handed_off, stats.resolved_by_bot,
            stats.resolved_total) == (4, 1, 1, 2)
    assert stats.ratings_avg == pytest.approx(3.0)
    assert (await store.get_conversation(by_bot.id)).resolved_by == "bot"
    assert (await store.get_conversation(by_human.id)).rating == 4
    assert fresh.state == "bot"

    handle_times = await store.recent_handle_times(tenant_id)
    assert len(handle_times) == 1 and handle_times[0] >= 0
    assert await store.recent_handle_times(await new_tenant(store)) == []

    reopened = await move(store, by_bot.id, "reopen", "customer_message")
    assert (reopened.resolved_by, reopened.rating) == (None, None)
    stats = await store.tenant_stats(tenant_id)
    assert stats.states == {"resolved": 1, "confused": 1, "bot": 2}
    assert (stats.resolved_by_bot, stats.resolved_total) == (0, 1)

    empty = await store.tenant_stats(await new_tenant(store))
    assert (empty.states, empty.conversations, empty.ratings_avg) == ({}, 0, None)


async def test_recent_handle_times_newest_first_and_limited(store: Store) -> None:
    tenant_id = await new_tenant(store)
    ann, _ = await store.add_agent(tenant_id, "Ann")
    for _ in range(3):
        c = await store.create_conversation(tenant_id)
        await to_human(store, c.id, ann)
        await move(store, c.id, "resolve", "agent_resolved")
    assert len(await store.recent_handle_times(tenant_id)) == 3
    assert len(await store.recent_handle_times(tenant_id, limit=2)) == 2


# Knowledge -------------------------------------------------------------------------------------


def document(tenant_id: str, doc_id: str, body: str = "body") -> Document:
    return Document(tenant_id, doc_id, f"Title {doc_id}", f"https://kb/{doc_id}", body, 1000.0,
                    content_hash=f"h-{body}")


def chunk(tenant_id: str, doc_id: str, n: int, text: str = "") -> Chunk:
    return Chunk(tenant_id, doc_id, f"{doc_id}#{n}", f"Title {doc_id}", f"https://kb/{doc_id}",
                 text or f"text {doc_id} {n}", heading_path=("Top", f"Section {n}"),
                 updated_at=1000.0 + n, label="billing" if n == 0 else None)


async def test_replace_document_replaces_chunks_and_bumps_the_version(store: Store) -> None:
    tenant_id = await new_tenant(store)
    other_tenant = await new_tenant(store)
    d1, d2 = document(tenant_id, "d1"), document(tenant_id, "d2")
    assert await store.kb_version(tenant_id) == 0
    assert await store.replace_document(d1, [chunk(tenant_id, "d1", i) for i in range(3)]) == 1
    assert await store.replace_document(d2, [chunk(tenant_id, "d2", 0)]) == 2
    assert await store.list_documents(tenant_id) == [d1, d2]
    assert await store.list_chunks(tenant_id) == [
        *(chunk(tenant_id, "d1", i) for i in range(3)), chunk(tenant_id, "d2", 0)]

    d1_v2 = document(tenant_id, "d1", "new body")
    new_chunks = [chunk(tenant_id, "d1", 7, "fresh text"), chunk(tenant_id, "d1", 8)]
    assert await store.replace_document(d1_v2, new_chunks) == 3
    assert await store.kb_version(tenant_id) == 3
    assert (await store.get_tenant(tenant_id)).kb_version == 3
    assert await store.list_documents(tenant_id) == [d1_v2, d2]
    assert await store.list_chunks(tenant_id) == [*new_chunks, chunk(tenant_id, "d2", 0)]

    # Another tenant sees none of it.
    assert await store.list_documents(other_tenant) == []
    assert await store.list_chunks(other_tenant) == []
    assert await store.kb_version(other_tenant) == 0
    with pytest.raises(NotFound):
        await store.replace_document(document(uid("ghost"), "d1"), [])


async def test_a_failed_replace_changes_nothing(store: Store) -> None:
    tenant_id = await new_tenant(store)
    original = [chunk(tenant_id, "d1", 0), chunk(tenant_id, "d1", 1)]
    await store.replace_document(document(tenant_id, "d1"), original)
    duplicate_ids = [chunk(tenant_id, "d1", 5), chunk(tenant_id, "d1", 5)]
    with pytest.raises(WarmlineError):
        await store.replace_document(document(tenant_id, "d1", "changed"), duplicate_ids)
    assert await store.list_chunks(tenant_id) == original
    assert await store.list_documents(tenant_id) == [document(tenant_id, "d1")]
    assert await store.kb_version(tenant_id) == 1


async def test_delete_document(store: Store) -> None:
    tenant_id = await new_tenant(store)
    await store.replace_document(document(tenant_id, "d1"), [chunk(tenant_id, "d1", 0)])
    await store.replace_document(document(tenant_id, "d2"), [chunk(tenant_id, "d2", 0)])
    assert await store.delete_document(tenant_id, "d1") is True
    assert await store.kb_version(tenant_id) == 3
    assert [d.doc_id for d in await store.list_documents(tenant_id)] == ["d2"]
    assert await store.list_chunks(tenant_id) == [chunk(tenant_id, "d2", 0)]
    assert await store.delete_document(tenant_id, "d1") is False
    assert await store.delete_document(tenant_id, "never") is False
    assert await store.kb_version(tenant_id) == 3  # nothing deleted, nothing to reindex


async def test_vectors(store: Store) -> None:
    tenant_id = await new_tenant(store)
    other_tenant = await new_tenant(store)
    chunks = [chunk(tenant_id, "d1", i) for i in range(3)]
    await store.replace_document(document(tenant_id, "d1"), chunks)
    vectors = {c.chunk_id: bytes([i]) * 16 + b"\x00\xff" for i, c in enumerate(chunks)}
    await store.save_vectors(tenant_id, "model-a", vectors)
    assert await store.load_vectors(tenant_id, "model-a") == vectors
    assert await store.load_vectors(tenant_id, "model-b") == {}
    assert await store.load_vectors(other_tenant, "model-a") == {}

    updated = {chunks[0].chunk_id: b"\x01" * 18}
    await store.save_vectors(tenant_id, "model-a", updated)
    assert (await store.load_vectors(tenant_id, "model-a"))[chunks[0].chunk_id] == b"\x01" * 18
    await store.save_vectors(tenant_id, "model-b", {chunks[1].chunk_id: b"b"})
    assert await store.load_vectors(tenant_id, "model-b") == {chunks[1].chunk_id: b"b"}


async def test_concurrent_reads_share_a_batch_and_fail_alone(store: Store) -> None:
    tenant_id = await new_tenant(store)
    conversations = [await store.create_conversation(tenant_id) for _ in range(3)]
    read_batches_before = store.read_batches if isinstance(store, SQLiteStore) else 0
    results = await asyncio.gather(
        *(store.get_conversation(c.id) for c in conversations),
        store.get_conversation(uid("c")),  # unknown: NotFound for this caller alone
        store.events_after(conversations[0].id, 0),
        return_exceptions=True,
    )
    assert [r.id for r in results[:3] if isinstance(r, Conversation)] == [
        c.id for c in conversations
    ]
    assert isinstance(results[3], NotFound) and results[4] == []
    if isinstance(store, SQLiteStore):  # one hop to the reader thread for all five
        assert store.read_batches == read_batches_before + 1
