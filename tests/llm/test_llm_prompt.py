from __future__ import annotations

from llm.base import Turn
from llm.prompt import NO_ANSWER, PromptPolicy, build_messages, format_passages
from tests.llm.llm_support import make_request


def test_passages_are_numbered_with_titles_and_headings() -> None:
    text = format_passages(make_request())
    assert text.startswith("[1] Returns policy > How long do I have to return an item?\n")
    assert "\n\n[2] Refunds\nRefunds go back" in text
    assert "[3] Shipping options" in text


def test_messages_hold_passages_history_and_question_only() -> None:
    history = (
        Turn("customer", "Hi, I bought shoes"),
        Turn("bot", "Great! Shoes ship in 3 days [2]."),
        Turn("agent", "Hello, this is Ana."),
    )
    messages = build_messages(make_request("Can I return them?", history=history))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "assistant", "user"]
    system = messages[0]["content"]
    assert NO_ANSWER in system and "[1] Returns policy" in system
    assert "demo" not in system  # no tenant or internal data beyond the passages
    assert messages[2]["content"] == "Great! Shoes ship in 3 days."  # old citations dropped
    assert messages[3]["content"].endswith("Hello, this is Ana.")
    assert messages[-1] == {"role": "user", "content": "Can I return them?"}


def test_history_and_passages_are_bounded() -> None:
    history = tuple(Turn("customer", f"message {i}") for i in range(10))
    policy = PromptPolicy(max_passages=1, max_passage_chars=40, max_history_turns=2)
    messages = build_messages(make_request(history=history), policy)
    assert [m["content"] for m in messages[1:-1]] == ["message 8", "message 9"]
    assert "\n[2] " not in messages[0]["content"]
    assert messages[0]["content"].endswith("…")
