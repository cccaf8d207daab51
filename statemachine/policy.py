"""What the bot does with a customer message: a pure decision over plain values.

The bot turn (warmline/bot.py) gathers the inputs (state, text, retrieval confidence, what the
customer said before) and applies the decision; nothing here touches I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

ANSWER = "answer"
CLARIFY = "clarify"  # bot → confused, with a clarifying reply
ESCALATE = "escalate"  # → queued

_HUMAN = re.compile(
    r"\b(human|humans|(?:a|real|live|actual) (?:person|people)|(?:an? |live |human |real )agent|"
    r"representative|operator|(?:talk|speak|chat) (?:to|with) (?:someone|somebody|a person|"
    r"staff|support)|customer service|live chat)\b",
    re.IGNORECASE,
)
# A message that is nothing but the word ("agent", "human!") is a request too.
_BARE_HUMAN = re.compile(
    r"^\s*(agent|human|person|people|operator|representative|staff)\s*[.!?]*\s*$",
    re.IGNORECASE,
)
# The whole message must be a short yes: "ok but how do I change my email?" is a question.
_AFFIRMATIVE = re.compile(
    r"^\s*(yes|yeah|yep|yup|sure|ok|okay|please|please do|yes please|go ahead|connect me|"
    r"yes,? please|ok,? please|sure,? please)\s*[.!]*\s*$",
    re.IGNORECASE,
)
_POLICY = re.compile(
    r"\b(lawyer|legal action|sue|lawsuit|fraud|fraudulent|chargeback|stolen card|"
    r"identity theft|data breach|harass\w*|discriminat\w*|police|court)\b",
    re.IGNORECASE,
)
_NEGATIVE = re.compile(
    r"\b(angry|furious|terrible|awful|useless|worst|ridiculous|unacceptable|horrible|"
    r"disgusting|scam|hate|pathetic|stupid bot|not helpful|doesn'?t help|fed up)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Decision:
    action: str  # ANSWER | CLARIFY | ESCALATE
    reason: str  # the transition's reason when the action changes state


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def wants_human(text: str) -> bool:
    return bool(_HUMAN.search(text) or _BARE_HUMAN.match(text))


def decide(
    state: str,
    text: str,
    confidence: float | None,
    threshold: float,
    previous_customer_texts: Sequence[str] = (),
) -> Decision:
    """The bot's move for a customer message in state `bot` or `confused`.

    `confidence` is None when the decision must be made before retrieval (the cheap checks
    come first so an explicit request for a human never waits on a search).
    """
    if wants_human(text):
        return Decision(ESCALATE, "request_human")
    if state == "confused" and _AFFIRMATIVE.search(text):
        return Decision(ESCALATE, "accepted_human")
    if _POLICY.search(text):
        return Decision(ESCALATE, "policy_topic")
    normalized = normalize(text)
    repeated = bool(normalized) and normalized in {normalize(t) for t in previous_customer_texts}
    if repeated:
        return (
            Decision(CLARIFY, "repeated_question")
            if state == "bot"
            else Decision(ESCALATE, "still_confused")
        )
    if _NEGATIVE.search(text):
        return (
            Decision(CLARIFY, "negative_sentiment")
            if state == "bot"
            else Decision(ESCALATE, "still_confused")
        )
    if confidence is None:
        return Decision(ANSWER, "")
    if confidence >= threshold:
        return Decision(ANSWER, "confident_answer")
    return (
        Decision(CLARIFY, "low_confidence")
        if state == "bot"
        else Decision(ESCALATE, "still_confused")
    )


CLARIFY_TEXT = {
    "low_confidence": (
        "I'm not sure I have the right answer for that. Could you rephrase it with a few more "
        'details? Or say "human" and I\'ll connect you with a person.'
    ),
    "ungrounded": (
        "I couldn't find that in our help articles. Could you tell me a bit more? Or say "
        '"human" and I\'ll connect you with a person.'
    ),
    "repeated_question": (
        "It looks like my last answer didn't help. Would you like me to connect you with a "
        "person? Just say yes."
    ),
    "negative_sentiment": (
        "I'm sorry this has been frustrating. Would you like me to connect you with a person? "
        "Just say yes."
    ),
}

ESCALATE_TEXT = "I'm connecting you with a person now. You'll see your place in line below."
