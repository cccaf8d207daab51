"""Presence is the union of an agent's connections, expiring by TTL."""

from __future__ import annotations

from presence.table import AgentPresence, ConnectionPresence, PresenceTable, aggregate

TTL = 30.0


def conn(cid: str, status: str, capacity: int = 2) -> ConnectionPresence:
    return ConnectionPresence(cid, status, capacity, expires_at=1e12)


def test_aggregate_status_precedence() -> None:
    assert aggregate("a", "t", [conn("1", "offline"), conn("2", "away"), conn("3", "online")],
                     5.0).status == "online"
    assert aggregate("a", "t", [conn("1", "offline"), conn("2", "away")], 5.0).status == "away"
    assert aggregate("a", "t", [conn("1", "offline")], 5.0).status == "offline"
    assert aggregate("a", "t", [], 5.0) == AgentPresence("a", "t", "offline", 0, 0, 5.0)


def test_aggregate_capacity_ignores_offline_connections() -> None:
    result = aggregate("a", "t", [conn("1", "online", 2), conn("2", "offline", 9)], 1.0)
    assert (result.capacity, result.connections) == (2, 2)
    assert aggregate("a", "t", [conn("1", "away", 3), conn("2", "online", 5)], 1.0).capacity == 5


def only(table: PresenceTable, tenant: str, now: float) -> AgentPresence:
    (presence,) = table.snapshot(tenant, now)
    return presence


def test_union_of_connections() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t", "tab1", "away", 2, now=100.0, ttl_s=TTL)
    table.heartbeat("a", "t", "tab2", "online", 3, now=101.0, ttl_s=TTL)
    presence = only(table, "t", 102.0)
    assert presence == AgentPresence("a", "t", "online", 3, 2, 101.0)


def test_a_sleeping_tab_does_not_flip_the_agent_offline() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t", "awake", "online", 2, now=0.0, ttl_s=TTL)
    table.heartbeat("a", "t", "asleep", "online", 2, now=0.0, ttl_s=TTL)
    table.heartbeat("a", "t", "awake", "online", 2, now=25.0, ttl_s=TTL)
    presence = only(table, "t", 40.0)  # "asleep" expired at 30
    assert (presence.status, presence.connections, presence.last_seen) == ("online", 1, 25.0)


def test_expiry_is_by_the_given_now() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t", "c1", "online", 2, now=100.0, ttl_s=TTL)
    assert only(table, "t", 129.999).status == "online"
    expired = only(table, "t", 130.0)
    assert (expired.status, expired.connections, expired.capacity) == ("offline", 0, 0)
    assert expired.last_seen == 100.0  # kept after every connection is gone


def test_heartbeat_extends_the_lease() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t", "c1", "online", 2, now=0.0, ttl_s=TTL)
    table.heartbeat("a", "t", "c1", "away", 2, now=20.0, ttl_s=TTL)
    presence = only(table, "t", 45.0)
    assert (presence.status, presence.connections) == ("away", 1)


def test_drop_one_of_two_keeps_the_agent_online() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t", "c1", "online", 2, now=0.0, ttl_s=TTL)
    table.heartbeat("a", "t", "c2", "online", 2, now=1.0, ttl_s=TTL)
    table.drop("a", "c1", now=5.0)
    presence = only(table, "t", 6.0)
    assert (presence.status, presence.connections, presence.last_seen) == ("online", 1, 5.0)
    table.drop("a", "c2", now=7.0)
    gone = only(table, "t", 8.0)
    assert (gone.status, gone.connections, gone.last_seen) == ("offline", 0, 7.0)


def test_dropping_an_unknown_connection_changes_nothing() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t", "c1", "online", 2, now=0.0, ttl_s=TTL)
    table.drop("a", "nope", now=9.0)
    table.drop("ghost", "c1", now=9.0)
    assert only(table, "t", 10.0) == AgentPresence("a", "t", "online", 2, 1, 0.0)


def test_snapshot_is_per_tenant() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t1", "c1", "online", 2, now=0.0, ttl_s=TTL)
    table.heartbeat("b", "t2", "c2", "away", 1, now=0.0, ttl_s=TTL)
    assert [p.agent_id for p in table.snapshot("t1", 1.0)] == ["a"]
    assert [p.agent_id for p in table.snapshot("t2", 1.0)] == ["b"]
    assert table.snapshot("t3", 1.0) == []


def test_an_agent_comes_back_after_expiring() -> None:
    table = PresenceTable()
    table.heartbeat("a", "t", "c1", "online", 2, now=0.0, ttl_s=TTL)
    assert only(table, "t", 100.0).status == "offline"
    table.heartbeat("a", "t", "c2", "online", 4, now=101.0, ttl_s=TTL)
    assert only(table, "t", 102.0) == AgentPresence("a", "t", "online", 4, 1, 101.0)
