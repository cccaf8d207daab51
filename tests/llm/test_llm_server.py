"""The bot through a real server process with an OpenAI-compatible LLM started by the test:
answers stream as `bot_delta` frames, then the whole answer with its sources; a model that
fails or hangs never leaves the customer without a reply; the bot stays silent once a human
owns the conversation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.client import Client
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.server import ServerProcess


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(scope="module")
def llm_server(llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "WARMLINE_LLM_BASE_URL": llm.url,
        "WARMLINE_LLM_API_KEY": "test",
        "WARMLINE_LLM_MODEL_SMALL": "small-model",
        "WARMLINE_LLM_MODEL_LARGE": "large-model",
        "WARMLINE_LLM_TIMEOUT_S": "6",
        "WARMLINE_LLM_FIRST_TOKEN_TIMEOUT_S": "3",
        "WARMLINE_LLM_MAX_ATTEMPTS": "1",
    }
    db = tmp_path_factory.mktemp("llm") / "warmline.db"
    with ServerProcess(db, env=env) as server:
        yield server


def bot_event(frame: dict) -> bool:
    return frame.get("type") == "event" and frame.get("author", {}).get("role") == "bot"


async def test_streamed_llm_answer_with_sources(llm: FakeLLM, llm_server: ServerProcess) -> None:
    llm.script(reply="You can reset it from the sign-in page; the link lasts 60 minutes [1].")
    customer, _ = await Client.customer(llm_server.ws_url())
    await customer.request({"type": "message", "id": "q", "text": "How do I reset my password?"})
    answer = await customer.recv_until(bot_event, timeout=20)
    deltas = [f for f in customer.received if f.get("type") == "bot_delta"]
    assert len(deltas) > 3, ("not streamed token by token", llm_server.output()[-1500:])
    assert all(d["message_id"] == answer["id"] for d in deltas)
    assert "".join(d["delta"] for d in deltas).strip() == answer["text"].strip()
    assert "60 minutes" in answer["text"]
    assert answer["sources"] and answer["route"] in ("small", "large")
    assert answer["fallback"] is False
    # The prompt held the retrieved passages and the question, nothing else of the tenant.
    prompt = json_text(llm.requests[-1])
    assert "How do I reset my password?" in prompt and "password" in prompt.lower()
    await customer.close()


async def test_a_hanging_llm_falls_back_to_the_extractive_answer(
    llm: FakeLLM, llm_server: ServerProcess
) -> None:
    llm.script(hang=True)
    customer, _ = await Client.customer(llm_server.ws_url())
    await customer.request(
        {"type": "message", "id": "q", "text": "Which payment methods do you accept?"}
    )
    answer = await customer.recv_until(bot_event, timeout=20)
    assert answer["fallback"] is True and answer["route"] == "extractive"
    assert answer["sources"]
    llm.script(hang=False)
    await customer.close()


async def test_model_says_the_documents_do_not_answer(
    llm: FakeLLM, llm_server: ServerProcess
) -> None:
    llm.script(reply="NO_ANSWER")
    customer, _ = await Client.customer(llm_server.ws_url())
    # A question retrieval is sure about with BM25 alone too (the embedding model may still be
    # loading), so the decision to stay silent is the model's.
    await customer.request(
        {"type": "message", "id": "q", "text": "What payment methods do you accept?"}
    )
    confused = await customer.recv_until(
        lambda f: f.get("kind") == "state" and f.get("to") == "confused", timeout=20
    )
    assert confused["reason"] == "ungrounded"
    assert not any("NO_ANSWER" in f.get("text", "") + f.get("delta", "") for f in customer.received)
    await customer.close()


async def test_the_bot_never_answers_while_a_human_owns_the_conversation(
    llm: FakeLLM, llm_server: ServerProcess
) -> None:
    llm.script(reply="Refunds take 3 business days [1].")
    agent, _ = await Client.agent(llm_server.ws_url("agent"), llm_server.agent_token, capacity=5)
    customer, welcome = await Client.customer(llm_server.ws_url())
    await customer.request({"type": "request_human"})
    await agent.recv_type("assigned", conversation_id=welcome["conversation_id"], timeout=20)
    human = await customer.recv_until(lambda f: f.get("kind") == "state" and f.get("to") == "human")
    requests_before = len(llm.requests)
    for i in range(3):
        await customer.request(
            {"type": "message", "id": f"h{i}", "text": "How long do refunds take?"}
        )
    await agent.request(
        {
            "type": "message",
            "conversation_id": welcome["conversation_id"],
            "id": "a",
            "text": "On it",
        }
    )
    await customer.recv_until(lambda f: f.get("type") == "event" and f.get("text") == "On it")
    assert not any(bot_event(f) and f["seq"] > human["seq"] for f in customer.events)
    after_handoff = customer.received[customer.received.index(human) :]
    assert not any(f.get("type") == "bot_delta" for f in after_handoff)
    assert len(llm.requests) == requests_before, "the LLM was asked while a human owned it"
    await agent.close()
    await customer.close()


def json_text(body: dict) -> str:
    return " ".join(str(m.get("content", "")) for m in body.get("messages", []))
