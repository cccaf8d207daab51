"""The bot's decision per customer message, and that every decision is a legal transition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine.machine import next_state
from statemachine.policy import (
    ANSWER,
    CLARIFY,
    CLARIFY_TEXT,
    ESCALATE,
    Decision,
    decide,
    normalize,
    wants_human,
)

T = 0.5  # the confidence threshold used throughout
BOTH = ["bot", "confused"]


@pytest.mark.parametrize("state", BOTH)
@pytest.mark.parametrize(
    "text",
    [
        "I want to talk to a human",
        "Can I speak to someone please?",
        "AGENT",
        "get me a real person",
        "is there a representative available",
        "let me talk to somebody",
        "live chat with staff",
        "operator!",
    ],
)
def test_explicit_request_for_a_human_escalates(state: str, text: str) -> None:
    assert wants_human(text)
    # Even with a confident answer at hand and a policy topic in the same message.
    assert decide(state, text, 0.99, T) == Decision(ESCALATE, "request_human")
    # A policy topic in the same message still escalates (as a policy topic when the request
    # was a bare word that now sits inside a longer sentence).
    assert decide(state, text + " about a chargeback", None, T).action == ESCALATE


@pytest.mark.parametrize(
    "text", ["yes", "Yes please", "  yeah", "sure", "ok", "Okay.", "please do", "go ahead",
             "connect me"]
)
def test_affirmative_in_confused_accepts_a_human(text: str) -> None:
    assert decide("confused", text, 0.99, T) == Decision(ESCALATE, "accepted_human")


@pytest.mark.parametrize("text", ["yes", "sure", "ok"])
def test_affirmative_in_bot_is_just_a_message(text: str) -> None:
    assert decide("bot", text, 0.99, T) == Decision(ANSWER, "confident_answer")
    assert decide("bot", text, 0.1, T) == Decision(CLARIFY, "low_confidence")


@pytest.mark.parametrize("text", ["no", "nope, how do I reset my password", "yesterday it broke"])
def test_non_affirmative_in_confused_is_not_acceptance(text: str) -> None:
    assert decide("confused", text, 0.99, T) == Decision(ANSWER, "confident_answer")


@pytest.mark.parametrize("state", BOTH)
@pytest.mark.parametrize(
    "text",
    [
        "I will contact my lawyer",
        "I'm going to sue you",
        "this is fraud",
        "I want to file a chargeback",
        "my stolen card was used",
        "identity theft on my account",
        "was there a data breach?",
        "your driver harassed me",
        "I'll call the police",
    ],
)
def test_policy_topics_escalate(state: str, text: str) -> None:
    assert decide(state, text, 0.99, T) == Decision(ESCALATE, "policy_topic")


def test_repeated_question_in_bot_clarifies() -> None:
    before = ["Hi", "How do I reset my password?"]
    assert decide("bot", "how do i RESET my password", 0.99, T, before) == Decision(
        CLARIFY, "repeated_question"
    )


def test_repeated_question_in_confused_escalates() -> None:
    before = ["How do I reset my password?"]
    assert decide("confused", "How do I reset my password??", 0.99, T, before) == Decision(
        ESCALATE, "still_confused"
    )


def test_punctuation_only_is_never_a_repeat() -> None:
    assert normalize("?!") == ""
    assert decide("bot", "???", 0.99, T, ["!!!"]) == Decision(ANSWER, "confident_answer")


def test_a_new_question_is_not_a_repeat() -> None:
    before = ["How do I reset my password?"]
    assert decide("bot", "How do I change my email?", 0.99, T, before) == Decision(
        ANSWER, "confident_answer"
    )


@pytest.mark.parametrize("text", ["this is useless", "I'm so angry", "worst service, fed up"])
def test_negative_sentiment(text: str) -> None:
    assert decide("bot", text, 0.99, T) == Decision(CLARIFY, "negative_sentiment")
    assert decide("confused", text, 0.99, T) == Decision(ESCALATE, "still_confused")


@pytest.mark.parametrize("state", BOTH)
@pytest.mark.parametrize("confidence", [T, 0.51, 1.0])
def test_confident_answer_in_both_states(state: str, confidence: float) -> None:
    decision = decide(state, "How do I change my email?", confidence, T)
    assert decision == Decision(ANSWER, "confident_answer")


@pytest.mark.parametrize("confidence", [0.0, 0.2, 0.4999])
def test_unconfident_answer(confidence: float) -> None:
    text = "How do I change my email?"
    assert decide("bot", text, confidence, T) == Decision(CLARIFY, "low_confidence")
    assert decide("confused", text, confidence, T) == Decision(ESCALATE, "still_confused")


@pytest.mark.parametrize("state", BOTH)
def test_no_confidence_yet_means_answer_without_a_transition(state: str) -> None:
    assert decide(state, "How do I change my email?", None, T) == Decision(ANSWER, "")


def test_every_clarify_reason_has_a_text() -> None:
    for reason in ("low_confidence", "repeated_question", "negative_sentiment"):
        assert CLARIFY_TEXT[reason]


def _apply(state: str, decision: Decision) -> str:
    """The transition the bot turn makes for a decision; raises if the machine refuses it."""
    if decision.action == CLARIFY:
        return next_state(state, "confuse", decision.reason)
    if decision.action == ESCALATE:
        return next_state(state, "escalate", decision.reason)
    if state == "confused" and decision.reason == "confident_answer":
        return next_state(state, "regain", decision.reason)
    return state


_WORDS = st.sampled_from(
    ["yes", "human", "sue", "angry", "password", "reset", "how", "ok", "the", "?", "agent",
     "please", "fraud", "no", "thanks"]
)
_TEXT = st.lists(_WORDS, max_size=6).map(" ".join) | st.text(max_size=40)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    state=st.sampled_from(BOTH),
    text=_TEXT,
    confidence=st.none() | st.floats(0.0, 1.0),
    previous=st.lists(_TEXT, max_size=3),
)
def test_every_decision_is_a_legal_transition(
    state: str, text: str, confidence: float | None, previous: list[str]
) -> None:
    decision = decide(state, text, confidence, T, previous)
    assert decision.action in (ANSWER, CLARIFY, ESCALATE)
    dest = _apply(state, decision)
    if decision.action == ANSWER and not decision.reason:
        assert confidence is None and dest == state  # decided before retrieval: no change yet
    else:
        assert dest == {ANSWER: "bot", CLARIFY: "confused", ESCALATE: "queued"}[decision.action]
