"""`bot → confused → queued → human → resolved`, declared with `transitions`.

The table below is the single source of truth: the `transitions` machine, the guards, the
docs/statemachine.md diagram and the tests are all derived from it. Applying a transition is
a pure function of (state, trigger, reason); persistence by compare-and-set is the store's job.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from transitions import EventData, Machine, MachineError

from warmline.errors import InvalidTransition

STATES: tuple[str, ...] = ("bot", "confused", "queued", "human", "resolved")


@dataclass(frozen=True)
class TransitionSpec:
    trigger: str
    source: str
    dest: str
    reasons: frozenset[str]  # the guard: the only reasons this transition accepts
    doc: str


def _spec(trigger: str, source: str, dest: str, reasons: set[str], doc: str) -> TransitionSpec:
    return TransitionSpec(trigger, source, dest, frozenset(reasons), doc)


TRANSITIONS: tuple[TransitionSpec, ...] = (
    _spec(
        "confuse",
        "bot",
        "confused",
        {"low_confidence", "ungrounded", "negative_sentiment", "repeated_question"},
        "the bot cannot ground a confident answer",
    ),
    _spec("regain", "confused", "bot", {"confident_answer"}, "the next answer is confident"),
    _spec(
        "escalate",
        "confused",
        "queued",
        {"still_confused", "accepted_human", "request_human", "policy_topic", "llm_failure"},
        "still confused, or the customer accepts a human",
    ),
    _spec(
        "escalate",
        "bot",
        "queued",
        {"request_human", "policy_topic", "llm_failure"},
        "explicit request for a human, or a policy topic",
    ),
    _spec(
        "assign", "queued", "human", {"dispatched", "claimed", "transferred"}, "an agent takes it"
    ),
    _spec(
        "requeue",
        "human",
        "queued",
        {"agent_requeue", "transfer", "agent_disconnected", "reply_sla"},
        "the agent gives it back, transfers, disconnects, or misses the reply SLA",
    ),
    _spec("resolve", "human", "resolved", {"agent_resolved"}, "the agent resolves it"),
    _spec(
        "resolve",
        "bot",
        "resolved",
        {"customer_satisfied", "idle"},
        "the customer is satisfied or goes idle",
    ),
    _spec("reopen", "resolved", "bot", {"customer_message"}, "the customer writes again"),
)


TRIGGERS: frozenset[str] = frozenset(spec.trigger for spec in TRANSITIONS)


class _Subject:
    """The model `transitions` drives; it only carries a state."""

    state: str

    def __init__(self) -> None:
        self.state = STATES[0]


def _guard_for(spec: TransitionSpec) -> Any:
    def guard(event: EventData) -> bool:
        return event.kwargs.get("reason") in spec.reasons

    guard.__name__ = f"guard_{spec.trigger}_{spec.source}"
    return guard


def _build_machine() -> Machine:
    machine = Machine(
        model=None,
        states=list(STATES),
        initial=STATES[0],
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
    )
    for spec in TRANSITIONS:
        machine.add_transition(spec.trigger, spec.source, spec.dest, conditions=[_guard_for(spec)])
    return machine


_MACHINE = _build_machine()


def next_state(state: str, trigger: str, reason: str) -> str:
    """The state after `trigger` with `reason`, or InvalidTransition; nothing is mutated."""
    return _next_state(state, trigger, reason)


@functools.lru_cache(maxsize=1024)
def _next_state(state: str, trigger: str, reason: str) -> str:
    # Pure, so memoized: driving the `transitions` machine costs far more than a lookup
    # (refusals raise and are not cached; the key space of valid ones is tiny).
    if state not in STATES:
        raise InvalidTransition(f"unknown state {state!r}")
    if trigger not in TRIGGERS:
        # Checked first: the model also has attributes (`state`, `is_bot`, ...) that are
        # not transitions and must never be called as one.
        raise InvalidTransition(f"unknown transition {trigger!r}")
    subject = _Subject()
    _MACHINE.add_model(subject, initial=state)
    try:
        trigger_method = getattr(subject, trigger)
        try:
            applied = trigger_method(reason=reason)
        except MachineError as exc:
            raise InvalidTransition(
                f"cannot {trigger} a conversation in state {state!r}", state=state
            ) from exc
        if not applied:
            raise InvalidTransition(
                f"{trigger} from {state!r} does not accept reason {reason!r}", state=state
            )
        return subject.state
    finally:
        _MACHINE.remove_model(subject)


def allowed_triggers(state: str) -> dict[str, frozenset[str]]:
    """trigger -> accepted reasons, from `state`."""
    return {spec.trigger: spec.reasons for spec in TRANSITIONS if spec.source == state}


def spec_for(state: str, trigger: str) -> TransitionSpec | None:
    for spec in TRANSITIONS:
        if spec.source == state and spec.trigger == trigger:
            return spec
    return None
