"""The state machine table: every allowed transition, every forbidden one, and purity."""

from __future__ import annotations

import itertools

import pytest

from statemachine import machine
from statemachine.machine import (
    STATES,
    TRANSITIONS,
    TransitionSpec,
    allowed_triggers,
    next_state,
    spec_for,
)
from warmline import models
from warmline.errors import InvalidTransition

ALL_TRIGGERS = sorted({s.trigger for s in TRANSITIONS})
ALL_REASONS = sorted({r for s in TRANSITIONS for r in s.reasons})

ALLOWED = [
    pytest.param(spec, reason, id=f"{spec.source}-{spec.trigger}-{reason}")
    for spec in TRANSITIONS
    for reason in sorted(spec.reasons)
]

# Each state and each trigger that has no transition out of it, with every known reason.
FORBIDDEN_TRIGGERS = [
    pytest.param(state, trigger, reason, id=f"{state}-{trigger}-{reason}")
    for state, trigger in itertools.product(STATES, ALL_TRIGGERS)
    if trigger not in allowed_triggers(state)
    for reason in ALL_REASONS
]

# Each allowed trigger with a reason its guard does not accept.
REFUSED_REASONS = [
    pytest.param(spec, reason, id=f"{spec.source}-{spec.trigger}-{reason or 'empty'}")
    for spec in TRANSITIONS
    for reason in [*ALL_REASONS, "", "bogus", "LOW_CONFIDENCE"]
    if reason not in spec.reasons
]

# Names that are not triggers but are attributes `transitions` puts on a model (or that every
# Python object has): none of them may be taken for a transition.
NOT_TRIGGERS = [
    "",
    "bogus",
    "to_bot",
    "to_human",
    "state",
    "trigger",
    "machine",
    "is_bot",
    "is_human",
    "may_confuse",
    "may_resolve",
    "may_trigger",
    "__init__",
    "__class__",
    "__repr__",
]


@pytest.mark.parametrize(("spec", "reason"), ALLOWED)
def test_every_allowed_transition_gives_its_dest(spec: TransitionSpec, reason: str) -> None:
    assert next_state(spec.source, spec.trigger, reason) == spec.dest


@pytest.mark.parametrize(("state", "trigger", "reason"), FORBIDDEN_TRIGGERS)
def test_trigger_not_allowed_from_state_is_refused(state: str, trigger: str, reason: str) -> None:
    with pytest.raises(InvalidTransition):
        next_state(state, trigger, reason)


@pytest.mark.parametrize(("spec", "reason"), REFUSED_REASONS)
def test_allowed_trigger_with_unaccepted_reason_is_refused(
    spec: TransitionSpec, reason: str
) -> None:
    with pytest.raises(InvalidTransition):
        next_state(spec.source, spec.trigger, reason)


@pytest.mark.parametrize("reason", [None, 1, ("low_confidence",)])
def test_non_string_reason_is_refused(reason: object) -> None:
    with pytest.raises(InvalidTransition):
        next_state("bot", "confuse", reason)  # type: ignore[arg-type]


@pytest.mark.parametrize("trigger", NOT_TRIGGERS)
def test_unknown_trigger_is_refused(trigger: str) -> None:
    # Every state and reason, so a name `transitions` answers to (may_*, is_*) cannot slip
    # through as a no-op "transition" nor escape as a TypeError.
    for state in STATES:
        for reason in [*ALL_REASONS, "x"]:
            with pytest.raises(InvalidTransition):
                next_state(state, trigger, reason)


@pytest.mark.parametrize("state", ["", "Bot", "open", "closed", "unknown", "BOT "])
def test_unknown_state_is_refused(state: str) -> None:
    for spec in TRANSITIONS:
        for reason in spec.reasons:
            with pytest.raises(InvalidTransition):
                next_state(state, spec.trigger, reason)


def test_next_state_mutates_nothing() -> None:
    models_before = list(machine._MACHINE.models)
    table_before = tuple(TRANSITIONS)
    for spec, reason in ((s, r) for s in TRANSITIONS for r in sorted(s.reasons)):
        first = next_state(spec.source, spec.trigger, reason)
        second = next_state(spec.source, spec.trigger, reason)
        assert first == second == spec.dest
    for _ in range(2):
        with pytest.raises(InvalidTransition):
            next_state("queued", "confuse", "low_confidence")
        with pytest.raises(InvalidTransition):
            next_state("bot", "confuse", "bogus")
        with pytest.raises(InvalidTransition):
            next_state("bot", "bogus", "bogus")
    # The shared machine holds no model between calls, success or refusal.
    assert list(machine._MACHINE.models) == models_before
    assert TRANSITIONS == table_before


def test_refusal_names_the_state() -> None:
    with pytest.raises(InvalidTransition) as info:
        next_state("queued", "confuse", "low_confidence")
    assert info.value.code == "invalid_transition"
    assert "queued" in info.value.message


def test_table_is_consistent() -> None:
    assert STATES == models.STATES
    pairs = [(s.source, s.trigger) for s in TRANSITIONS]
    assert len(pairs) == len(set(pairs)), "one spec per (source, trigger)"
    for spec in TRANSITIONS:
        assert spec.source in STATES and spec.dest in STATES
        assert spec.reasons, f"{spec.trigger} from {spec.source} accepts nothing"
        assert spec_for(spec.source, spec.trigger) is spec
    assert spec_for("queued", "confuse") is None


def test_every_state_is_reachable_and_can_be_left() -> None:
    reached = {STATES[0]}
    frontier = [STATES[0]]
    while frontier:
        state = frontier.pop()
        for spec in TRANSITIONS:
            if spec.source == state and spec.dest not in reached:
                reached.add(spec.dest)
                frontier.append(spec.dest)
    assert reached == set(STATES)
    for state in STATES:
        assert allowed_triggers(state), f"{state} is a dead end"


def test_allowed_triggers() -> None:
    assert allowed_triggers("bot") == {
        "confuse": frozenset(
            {"low_confidence", "ungrounded", "negative_sentiment", "repeated_question"}
        ),
        "escalate": frozenset({"request_human", "policy_topic", "llm_failure"}),
        "resolve": frozenset({"customer_satisfied", "idle"}),
    }
    assert set(allowed_triggers("queued")) == {"assign"}
    assert set(allowed_triggers("human")) == {"requeue", "resolve"}
    assert set(allowed_triggers("resolved")) == {"reopen"}
    assert allowed_triggers("nope") == {}


def test_the_documented_lifecycle() -> None:
    path = [
        ("confuse", "low_confidence", "confused"),
        ("regain", "confident_answer", "bot"),
        ("confuse", "repeated_question", "confused"),
        ("escalate", "still_confused", "queued"),
        ("assign", "dispatched", "human"),
        ("requeue", "reply_sla", "queued"),
        ("assign", "claimed", "human"),
        ("resolve", "agent_resolved", "resolved"),
        ("reopen", "customer_message", "bot"),
        ("resolve", "idle", "resolved"),
    ]
    state = "bot"
    for trigger, reason, expected in path:
        state = next_state(state, trigger, reason)
        assert state == expected
