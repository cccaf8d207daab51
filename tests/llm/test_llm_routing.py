from __future__ import annotations

from llm.base import Turn
from llm.routing import RoutePolicy, choose_route, route_reasons, score_margin
from retrieval.base import Hit
from tests.llm.llm_support import REFUNDS, RETURNS, make_request


def test_easy_question_goes_small() -> None:
    request = make_request("How long do I have to return an item?", confidence=0.9)
    assert route_reasons(request) == ()
    assert choose_route(request) == "small"


def test_single_hit_with_high_confidence_is_easy() -> None:
    assert choose_route(make_request(hits=(Hit(RETURNS, 3.0),))) == "small"


def test_low_confidence_goes_large() -> None:
    request = make_request(confidence=0.3)
    assert route_reasons(request) == ("low_confidence",)
    assert choose_route(request) == "large"


def test_close_hit_scores_go_large() -> None:
    request = make_request(hits=(Hit(RETURNS, 10.0), Hit(REFUNDS, 9.5)))
    assert score_margin(request) == 0.05
    assert route_reasons(request) == ("low_margin",)


def test_zero_top_score_counts_as_no_margin() -> None:
    assert score_margin(make_request(hits=(Hit(RETURNS, 0.0), Hit(REFUNDS, 0.0)))) == 0.0


def test_long_question_goes_large() -> None:
    question = " ".join(["word"] * 31) + "?"
    assert route_reasons(make_request(question)) == ("long",)


def test_multi_part_questions_go_large() -> None:
    for question in (
        "How do I return it? And how long does the refund take?",
        "Can I return shoes and also exchange a shirt",
        "Two things:\n1. returns\n2. refunds",
    ):
        assert "multi_part" in route_reasons(make_request(question)), question


def test_later_turns_go_large() -> None:
    history = tuple(
        Turn(role, text) for _ in range(3) for role, text in (("customer", "hi"), ("bot", "hello"))
    )
    assert route_reasons(make_request(history=history)) == ("later_turn",)
    assert route_reasons(make_request(history=history[:4])) == ()


def test_policy_is_tunable() -> None:
    policy = RoutePolicy(min_confidence=0.95)
    assert choose_route(make_request(confidence=0.9), policy) == "large"
