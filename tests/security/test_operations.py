"""What operators see: every metric family the issue lists, observed during a real journey
(with an OpenAI-compatible fake LLM, so time-to-first-token is real too), and structured logs
carrying conversation, connection and request ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.client import Client
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.server import ServerProcess, wait_until
from tests.security.support import metric, scrape
from warmline import logs
from warmline.config import Config

# Family -> a sample (name, labels) that the journey must have made non-zero; None: the family
# must be exposed with at least one sample, whatever its value (e.g. no bus reconnects today).
FAMILIES: dict[str, tuple[str, dict[str, str]] | None] = {
    "warmline_connections": (
        "warmline_connections",
        {"role": "customer", "transport": "websocket"},
    ),
    "warmline_frames_in": ("warmline_frames_in_total", {"role": "customer"}),
    "warmline_frames_out": ("warmline_frames_out_total", {"role": "agent"}),
    "warmline_delivery_latency_seconds": ("warmline_delivery_latency_seconds_count", {}),
    "warmline_transitions": (
        "warmline_transitions_total",
        {"from_state": "queued", "to_state": "human"},
    ),
    "warmline_queue_depth": None,  # back to 0 once assigned; present since the queue moved
    "warmline_queue_wait_seconds": ("warmline_queue_wait_seconds_count", {}),
    "warmline_agents": ("warmline_agents", {"tenant": "demo", "status": "online"}),
    "warmline_llm_time_to_first_token_seconds": (
        "warmline_llm_time_to_first_token_seconds_count",
        {"route": "small"},
    ),
    "warmline_retrieval_latency_seconds": ("warmline_retrieval_latency_seconds_count", {}),
    "warmline_rate_limited": ("warmline_rate_limited_total", {"kind": "message"}),
    "warmline_errors": ("warmline_errors_total", {"code": "bad_request"}),
    "warmline_bus_reconnects": None,
    "warmline_slow_consumers": None,
}


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        fake.script(reply="Open Settings, then Security, then Reset password [1].")
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM) -> Iterator[ServerProcess]:
    env = {
        "WARMLINE_LLM_BASE_URL": llm.url,
        "WARMLINE_LLM_API_KEY": "test",
        "WARMLINE_LLM_MODEL_SMALL": "small-model",
        "WARMLINE_LLM_MODEL_LARGE": "large-model",
        "WARMLINE_RATE_MESSAGE_BURST": "5",
        "WARMLINE_LOG_JSON": "1",
        "WARMLINE_LOG_LEVEL": "info",
        "WARMLINE_ORIGIN_CACHE_S": "0",
    }
    db = tmp_path_factory.mktemp("operations") / "warmline.db"
    with ServerProcess(db, env=env) as server:
        yield server


async def test_every_metric_family_is_exposed_and_observed(server: ServerProcess) -> None:
    # A customer asks; the LLM answers (retrieval, time to first token, live delivery).
    customer, welcome = await Client.customer(server.ws_url())
    conversation_id = welcome["conversation_id"]
    await customer.request({"type": "message", "id": "q1", "text": "How do I reset my password?"})
    await customer.recv_until(lambda f: f.get("kind") == "message" and f["author"]["role"] == "bot")
    # A bad frame, and a flood of messages past the per-connection burst.
    await customer.send_raw("not json")
    await customer.recv_type("error", code="bad_request")
    flooder, _ = await Client.customer(server.ws_url())
    replies = [
        await flooder.request({"type": "message", "id": f"f{i}", "text": "hi"}) for i in range(7)
    ]
    assert any(r.get("code") == "rate_limited" for r in replies)
    # Handoff: queued (queue depth), assigned to an online agent (transition, queue wait).
    agent, _ = await Client.agent(server.ws_url("agent"), server.agent_token, status="away")
    await customer.request({"type": "request_human"})
    await agent.recv_until(
        lambda f: (
            f.get("type") == "queue"
            and any(i["conversation_id"] == conversation_id for i in f["items"])
        )
    )
    await agent.request({"type": "presence", "status": "online", "capacity": 5})
    await agent.recv_type("assigned", conversation_id=conversation_id)
    await agent.request(
        {"type": "message", "conversation_id": conversation_id, "id": "a1", "text": "Hi there"}
    )
    await customer.recv_until(lambda f: f.get("kind") == "message" and f.get("text") == "Hi there")
    # A long-polling customer is a connection too (while its poll is held).
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        token = (
            await http.post("/v1/lp/customer/send", json={"type": "hello", "tenant": "demo"})
        ).json()[0]["token"]
        held = asyncio.create_task(
            http.get("/v1/lp/customer/poll", params={"token": token, "timeout": "5"})
        )
        await asyncio.to_thread(
            wait_until,
            lambda: (
                metric(
                    scrape(server.url),
                    "warmline_connections",
                    role="customer",
                    transport="longpoll",
                )
                >= 1
            ),
        )
        text = await asyncio.to_thread(scrape, server.url)
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for family, sample in FAMILIES.items():
        assert family in families, f"{family} is not exposed"
        assert families[family].samples, f"{family} has no samples"
        if sample is not None:
            name, labels = sample
            assert metric(text, name, **labels) > 0, f"{name}{labels} was never observed"
    assert metric(text, "warmline_queue_depth", tenant="demo") == 0  # set, and drained again
    for client in (customer, flooder, agent):
        await client.close()


async def test_json_logs_carry_the_ids_of_what_they_are_about(server: ServerProcess) -> None:
    assert (
        server.cli("tenant", "add", "fenced", "--allowed-origin", "https://ok.example").returncode
        == 0
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        hello = await http.post(
            "/v1/lp/customer/send",
            json={"type": "hello", "tenant": "fenced"},
            headers={"Origin": "https://ok.example"},
        )
        token, conversation_id = hello.json()[0]["token"], hello.json()[0]["conversation_id"]
        # Refused from another origin: the refusal is logged with the request's ids.
        refused = await http.post(
            "/v1/lp/customer/send",
            json={"type": "message", "id": "m1", "text": "hi", "token": token},
            headers={"Origin": "https://evil.example", "X-Request-ID": "req-from-the-proxy"},
        )
        assert refused.status_code == 403
    ws = await Client.connect(server.ws_url(), origin="https://evil.example")
    await ws.request({"type": "hello", "tenant": "fenced"})

    def refusals() -> list[dict]:
        found = []
        for line in server.output().splitlines():
            if line.startswith("{") and "refused origin" in line:
                found.append(json.loads(line))
        return found if len(found) >= 2 else []

    by_request, by_connection = await asyncio.to_thread(wait_until, refusals)
    assert by_request["level"] == "info" and by_request["logger"] == "warmline.runtime"
    assert by_request["request_id"] == "req-from-the-proxy"
    assert by_request["conversation_id"] == conversation_id
    assert by_connection["connection_id"].startswith("ws_")
    assert "request_id" not in by_connection


# In process: the formatters and the context ---------------------------------------------------
Install = Callable[[Config], io.StringIO]


@pytest.fixture
def install() -> Iterator[Install]:
    """Configure logging into a string for one test, then put everything back."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def setup(config: Config) -> io.StringIO:
        # Called in the test body, after pytest attached its capture handler, which goes
        # too: a lone surrogate in a captured record would break the xdist worker's report.
        stream = io.StringIO()
        root.handlers.clear()
        logs.configure_logging(config, stream)
        return stream

    yield setup
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


JSON = Config(log_json=True, log_level="debug")


async def test_context_ids_follow_tasks_started_from_a_connection(install: Install) -> None:
    stream = install(JSON)
    log = logging.getLogger("warmline.test")

    async def bot_turn() -> None:
        log.info("answering", extra={"route": "small"})

    with logs.context(connection_id="ws_1", conversation_id="c_1"):
        task = asyncio.create_task(bot_turn())  # copies the context, as TaskOwner.spawn does
    log.warning("outside")
    await task
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    inner = next(entry for entry in lines if entry["message"] == "answering")
    outer = next(entry for entry in lines if entry["message"] == "outside")
    assert inner["conversation_id"] == "c_1" and inner["connection_id"] == "ws_1"
    assert inner["route"] == "small" and inner["level"] == "info"
    assert "conversation_id" not in outer and outer["level"] == "warning"


def test_text_logs_show_the_ids_too(install: Install) -> None:
    stream = install(Config(log_json=False))
    with logs.context(request_id="req-1"):
        logging.getLogger("warmline.test").info("polled")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("warmline.test").exception("failed")
    text = stream.getvalue()
    assert "INFO warmline.test: polled [request_id=req-1]" in text
    assert "ERROR warmline.test: failed [request_id=req-1]\nTraceback" in text


def test_json_lines_survive_hostile_text(install: Install) -> None:
    stream = install(JSON)
    log = logging.getLogger("warmline.test")
    log.error("bad input %s", "\ud800\n\x00", extra={"obj": object()})
    try:
        raise ValueError("boom \udfff")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "bad input \ud800\n\x00" and first["obj"].startswith("<object")
    assert "boom" in second["exc_info"]


def test_configure_logging_twice_keeps_one_handler(install: Install) -> None:
    install(JSON)
    stream = install(JSON)
    logs.configure_logging(JSON, stream)
    logging.getLogger("warmline.test").info("once")
    assert stream.getvalue().count('"once"') == 1
    assert len(logging.getLogger().handlers) == 1


@pytest.mark.parametrize(
    ("header", "kept"),
    [("abc-123", True), ("x" * 65, False), ("has space", False), ("", False), (None, False)],
)
def test_request_ids_from_outside_are_kept_only_when_sane(header: str | None, kept: bool) -> None:
    value = logs.request_id(header)
    assert (value == header) is kept
    assert value


def test_unknown_context_fields_are_refused() -> None:
    with pytest.raises(ValueError):
        logs.bind(user="x")


def test_log_json_comes_from_the_environment(tmp_path: Path) -> None:
    assert Config.from_env({"WARMLINE_LOG_JSON": "1"}).log_json is True
