"""dispatch.plan: who gets which queued conversation, as a pure plan."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.dispatch import (
    AgentSlot,
    Assignment,
    QueueItem,
    free_slots,
    loads_for,
    order_queue,
    plan,
)


def q(
    cid: str, queued_at: float, priority: int = 0, passed_over: tuple[str, ...] = ()
) -> QueueItem:
    return QueueItem(cid, priority, queued_at, passed_over)


def test_longest_waiting_first_within_a_priority() -> None:
    queue = [q("c3", 30.0), q("c1", 10.0), q("c2", 20.0)]
    assert plan(queue, [AgentSlot("a", capacity=1, load=0)]) == [Assignment("c1", "a")]
    assert [i.conversation_id for i in order_queue(queue)] == ["c1", "c2", "c3"]


def test_higher_priority_first_even_when_younger() -> None:
    queue = [q("old", 1.0, priority=0), q("vip", 50.0, priority=5), q("mid", 2.0, priority=1)]
    assert [i.conversation_id for i in order_queue(queue)] == ["vip", "mid", "old"]
    assert plan(queue, [AgentSlot("a", 2, 0)]) == [Assignment("vip", "a"), Assignment("mid", "a")]


def test_least_busy_agent_gets_it() -> None:
    agents = [AgentSlot("busy", 4, 3), AgentSlot("idle", 4, 0), AgentSlot("some", 4, 1)]
    assert plan([q("c1", 1.0)], agents) == [Assignment("c1", "idle")]


def test_least_busy_is_relative_to_capacity() -> None:
    # 1 of 10 is less busy than 1 of 2.
    agents = [AgentSlot("small", 2, 1), AgentSlot("big", 10, 1)]
    assert plan([q("c1", 1.0)], agents) == [Assignment("c1", "big")]


def test_ties_go_to_who_waited_longest_since_their_last_assignment() -> None:
    agents = [AgentSlot("recent", 2, 0, last_assigned_at=100.0), AgentSlot("long", 2, 0, 5.0)]
    assert plan([q("c1", 1.0)], agents) == [Assignment("c1", "long")]


def test_spreads_over_agents_round_robin_among_equals() -> None:
    agents = [AgentSlot("a", 2, 0), AgentSlot("b", 2, 0)]
    result = plan([q(f"c{i}", float(i)) for i in range(4)], agents)
    assert [a.agent_id for a in result] == ["a", "b", "a", "b"]


def test_capacity_is_never_exceeded() -> None:
    agents = [AgentSlot("a", 3, 2), AgentSlot("full", 2, 2), AgentSlot("over", 1, 3)]
    result = plan([q(f"c{i}", float(i)) for i in range(10)], agents)
    assert result == [Assignment("c0", "a")]


def test_zero_capacity_agents_get_nothing() -> None:
    assert plan([q("c1", 1.0)], [AgentSlot("a", 0, 0)]) == []


def test_nothing_to_do() -> None:
    assert plan([], [AgentSlot("a", 2, 0)]) == []
    assert plan([q("c1", 1.0)], []) == []


def test_the_whole_backlog_drains() -> None:
    queue = [q(f"c{i:02d}", float(100 - i)) for i in range(20)]  # c19 waited longest
    agents = [AgentSlot(f"a{i}", capacity=2, load=0) for i in range(3)]
    result = plan(queue, agents)
    assert len(result) == 6
    assert len({a.conversation_id for a in result}) == 6
    assert max(Counter(a.agent_id for a in result).values()) == 2
    assert set(Counter(a.agent_id for a in result)) == {"a0", "a1", "a2"}
    # The six who waited longest, not the newest.
    assert {a.conversation_id for a in result} == {f"c{i}" for i in range(14, 20)}


def test_passed_over_agent_is_skipped_but_others_still_get_it() -> None:
    agents = [AgentSlot("a", 2, 0), AgentSlot("b", 2, 1)]
    assert plan([q("c1", 1.0, passed_over=("a",))], agents) == [Assignment("c1", "b")]


def test_item_nobody_may_take_does_not_block_the_rest() -> None:
    agents = [AgentSlot("a", 1, 0)]
    queue = [q("c1", 1.0, passed_over=("a",)), q("c2", 2.0)]
    assert plan(queue, agents) == [Assignment("c2", "a")]


def test_passed_over_by_everyone_waits() -> None:
    agents = [AgentSlot("a", 1, 0), AgentSlot("b", 1, 0)]
    assert plan([q("c1", 1.0, passed_over=("a", "b"))], agents) == []


def test_free_slots_and_loads_for() -> None:
    agents = [AgentSlot("a", 3, 1), AgentSlot("b", 2, 5), AgentSlot("c", 1, 0)]
    assert free_slots(agents) == 3
    assert free_slots([]) == 0
    slots = loads_for({"a": 3, "b": 2}, {"a": 1, "x": 4})
    assert slots == [AgentSlot("a", 3, 1), AgentSlot("b", 2, 0)]


# Property test ---------------------------------------------------------------------------------

AGENT_IDS = [f"a{i}" for i in range(5)]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[QueueItem], list[AgentSlot]]:
    n_agents = draw(st.integers(0, 5))
    agents = [
        AgentSlot(
            AGENT_IDS[i],
            capacity=draw(st.integers(0, 4)),
            load=draw(st.integers(0, 5)),
            last_assigned_at=draw(st.floats(0, 100, allow_nan=False)),
        )
        for i in range(n_agents)
    ]
    n_items = draw(st.integers(0, 25))
    queue = [
        QueueItem(
            f"c{i}",
            priority=draw(st.integers(0, 3)),
            queued_at=draw(st.floats(0, 1000, allow_nan=False)),
            passed_over=tuple(draw(st.sets(st.sampled_from(AGENT_IDS), max_size=3))),
        )
        for i in range(n_items)
    ]
    return queue, agents


@settings(max_examples=200, deadline=None, derandomize=True)
@given(scenarios())
def test_plan_invariants(scenario: tuple[list[QueueItem], list[AgentSlot]]) -> None:
    queue, agents = scenario
    result = plan(queue, agents)
    by_id = {a.agent_id: a for a in agents}
    items = {i.conversation_id: i for i in queue}
    assigned = {a.conversation_id: a.agent_id for a in result}

    # No conversation twice; only known agents; never an agent the item passed over.
    assert len(assigned) == len(result)
    for conversation_id, agent_id in assigned.items():
        assert agent_id in by_id
        assert agent_id not in items[conversation_id].passed_over

    # Capacity never exceeded.
    final = {a.agent_id: a.load for a in agents}
    for assignment in result:
        final[assignment.agent_id] += 1
    for agent in agents:
        gained = final[agent.agent_id] - agent.load
        assert gained <= max(agent.capacity - agent.load, 0)

    def has_room(agent_id: str) -> bool:
        return final[agent_id] < by_id[agent_id].capacity

    # Drained: an item left waiting has no eligible agent with a free slot.
    for item in queue:
        if item.conversation_id not in assigned:
            assert not [
                a for a in by_id if has_room(a) and a not in item.passed_over
            ], f"{item.conversation_id} left waiting with room available"

    # Order: assignments follow queue order, and an item ahead in line is only skipped for an
    # agent it passed over.
    ordered = order_queue(queue)
    position = {item.conversation_id: n for n, item in enumerate(ordered)}
    assert [a.conversation_id for a in result] == sorted(assigned, key=position.__getitem__)
    for assignment in result:
        for ahead in ordered[: position[assignment.conversation_id]]:
            if ahead.conversation_id not in assigned:
                assert assignment.agent_id in ahead.passed_over

    # Least busy: each pick had the lowest load ratio among eligible agents with room then.
    load = {a.agent_id: a.load for a in agents}
    for assignment in result:
        item = items[assignment.conversation_id]
        eligible = [
            a for a in by_id if load[a] < by_id[a].capacity and a not in item.passed_over
        ]
        ratio = {a: load[a] / by_id[a].capacity for a in eligible}
        assert ratio[assignment.agent_id] == min(ratio.values())
        load[assignment.agent_id] += 1
