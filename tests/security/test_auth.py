"""Authentication and authorization end to end: agent and supervisor tokens (random, hashed,
revocable), roles on every endpoint and frame, and customer session tokens whose signing key
rotates without logging anybody out."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess
from warmline.tokens import key_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("auth") / "warmline.db"
    # A short presence TTL: live connections re-check their token every 0.2 s.
    with ServerProcess(db, env={"WARMLINE_PRESENCE_TTL_S": "0.6"}) as server:
        yield server


def stats(server: ServerProcess, token: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return server.get("/v1/api/stats", params=params, headers=headers)


# Agent and supervisor tokens ---------------------------------------------------------------------
def test_agent_tokens_are_256_bit_random_and_stored_only_as_hashes(server: ServerProcess) -> None:
    tokens = [server.add_agent(f"Random {i}") for i in range(3)]
    assert len(set(tokens)) == 3
    for token in tokens:
        prefix, _, body = token.partition("_")
        assert prefix == "wla"
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        assert len(raw) >= 32  # 256 bits
    with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT * FROM agents").fetchall()
        hashes = {row[0] for row in conn.execute("SELECT token_hash FROM agents")}
    stored = json.dumps(rows)
    for token in tokens:
        assert token not in stored  # never in clear
        assert hashlib.sha256(token.encode()).hexdigest() in hashes


async def test_a_revoked_token_is_refused_and_its_live_connections_end(
    server: ServerProcess,
) -> None:
    token = server.add_agent("Leaver")
    supervisor = server.add_agent("Boss", role="supervisor")
    agent, welcome = await Client.agent(server.ws_url("agent"), token, status="away")
    watcher, _ = await Client.agent(server.ws_url("supervisor"), supervisor)
    assert stats(server, supervisor).status_code == 200

    for agent_id in (welcome["agent"]["id"], _agent_id(server, "Boss")):
        result = server.cli("agent", "revoke", agent_id)
        assert result.returncode == 0, result.stderr

    # The live connections are told, then closed as a refused hello would be.
    for client in (agent, watcher):
        error = await client.recv_type("error", timeout=10)
        assert error["code"] == "unauthorized"
        assert await client.wait_closed() == 1008
    # New ones are refused outright.
    again = await Client.connect(server.ws_url("agent"))
    assert (await again.request({"type": "hello", "token": token}))["code"] == "unauthorized"
    assert await again.wait_closed() == 1008
    assert stats(server, supervisor).status_code == 401


def _agent_id(server: ServerProcess, name: str) -> str:
    with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT id FROM agents WHERE name = ?", (name,)).fetchone()
    return str(row[0])


# Roles on every endpoint -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "token_of"),
    [("supervisor", "agent_token"), ("agent", "supervisor_token")],
)
async def test_a_token_only_opens_its_own_roles_endpoint(
    server: ServerProcess, endpoint: str, token_of: str
) -> None:
    client = await Client.connect(server.ws_url(endpoint))
    error = await client.request({"type": "hello", "token": getattr(server, token_of)})
    assert error["code"] == "forbidden"
    assert await client.wait_closed() == 1008


async def test_credentials_of_one_kind_do_not_pass_for_another(server: ServerProcess) -> None:
    customer, welcome = await Client.customer(server.ws_url())
    await customer.close()
    # A customer session token where an agent token is expected, and the other way round.
    for endpoint in ("agent", "supervisor"):
        client = await Client.connect(server.ws_url(endpoint))
        error = await client.request({"type": "hello", "token": welcome["token"]})
        assert error["code"] == "unauthorized"
        assert await client.wait_closed() == 1008
    client = await Client.connect(server.ws_url())
    error = await client.request({"type": "hello", "tenant": "demo", "token": server.agent_token})
    assert error["code"] == "unauthorized"
    assert await client.wait_closed() == 1008


def test_stats_api_needs_a_supervisor_token(server: ServerProcess) -> None:
    customer_token = httpx.post(
        server.url + "/v1/lp/customer/send", json={"type": "hello", "tenant": "demo"}
    ).json()[0]["token"]
    assert stats(server, None).status_code == 401
    assert server.get("/v1/api/stats", headers={"Authorization": "Bearer"}).status_code == 401
    assert stats(server, "wla_" + "A" * 43).status_code == 401
    assert stats(server, customer_token).status_code == 401
    forbidden = stats(server, server.agent_token)
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    ok = stats(server, server.supervisor_token)
    assert ok.status_code == 200 and ok.json()["type"] == "stats"
    basic = server.get("/v1/api/stats", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert basic.status_code == 401


async def test_every_frame_is_checked_against_the_connections_role(server: ServerProcess) -> None:
    # Before hello: nothing but hello and ping.
    for endpoint, frame in [
        ("customer", {"type": "message", "id": "m", "text": "hi"}),
        ("agent", {"type": "claim", "conversation_id": "c_x"}),
        ("agent", {"type": "presence", "status": "online"}),
    ]:
        client = await Client.connect(server.ws_url(endpoint))
        assert (await client.request(frame))["code"] == "unauthorized"
        assert (await client.request({"type": "ping"}))["type"] == "pong"
        await client.close()
    # After hello: another role's frames are not part of this role's protocol.
    customer, _ = await Client.customer(server.ws_url())
    supervisor, _ = await Client.agent(server.ws_url("supervisor"), server.supervisor_token)
    agent, _ = await Client.agent(server.ws_url("agent"), server.agent_token, status="away")
    for client, frame in [
        (customer, {"type": "claim", "conversation_id": "c_x"}),
        (customer, {"type": "resolve", "conversation_id": "c_x"}),
        (customer, {"type": "presence", "status": "online"}),
        (supervisor, {"type": "claim", "conversation_id": "c_x"}),
        (supervisor, {"type": "message", "conversation_id": "c_x", "id": "m", "text": "hi"}),
        (supervisor, {"type": "presence", "status": "online"}),
        (agent, {"type": "request_human"}),
        (agent, {"type": "rate", "score": 5}),
    ]:
        reply = await client.request(dict(frame))
        assert reply["type"] == "error" and reply["code"] == "bad_request", (frame, reply)
    for client in (customer, supervisor, agent):
        await client.close()


# Customer session tokens -------------------------------------------------------------------------
async def test_signing_key_rotation_keeps_sessions_then_retires_the_old_key(
    tmp_path: Path,
) -> None:
    old, new = "old-key-" + "o" * 24, "new-key-" + "n" * 24
    server = ServerProcess(tmp_path / "rotate.db", env={"WARMLINE_SECRET_KEY": old})
    try:
        server.start()
        client, first = await Client.customer(server.ws_url())
        await client.request({"type": "message", "id": "m1", "text": "Where is my order?"})
        await client.close()
        assert _kid(first["token"]) == key_id(old.encode())

        # Rotate: the new key signs, the old one still verifies. Nobody is logged out.
        server.extra_env["WARMLINE_SECRET_KEY"] = f"{new},{old}"
        server.restart()
        client, resumed = await Client.resume(server.ws_url(), first["token"], 0)
        assert resumed["conversation_id"] == first["conversation_id"]
        await client.event(seq=1)
        await client.close()
        client, second = await Client.customer(server.ws_url())
        await client.close()
        assert _kid(second["token"]) == key_id(new.encode())

        # After the token lifetime the old key is dropped: its tokens stop working.
        server.extra_env["WARMLINE_SECRET_KEY"] = new
        server.restart()
        refused = await Client.connect(server.ws_url())
        error = await refused.request(
            {"type": "hello", "tenant": "demo", "token": first["token"], "last_seq": 0}
        )
        assert error["code"] == "unauthorized"
        assert await refused.wait_closed() == 1008
        client, again = await Client.resume(server.ws_url(), second["token"], 0)
        assert again["conversation_id"] == second["conversation_id"]
        await client.close()
        # The same on the long-polling transport.
        lp = server.post(
            "/v1/lp/customer/send",
            json={"type": "message", "id": "m2", "text": "hi"},
            headers={"Authorization": f"Bearer {first['token']}"},
        )
        assert lp.status_code == 401
    finally:
        server.stop()
        server.kill()


def _kid(token: str) -> str:
    body = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["k"])


async def test_a_tampered_session_token_is_refused(server: ServerProcess) -> None:
    client, welcome = await Client.customer(server.ws_url())
    await client.close()
    body, signature = welcome["token"].split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["c"] = "c_someone_else"
    forged_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    for forged in (f"{forged_body}.{signature}", f"{body}.{signature[:-2]}", body, "x.y.z"):
        client = await Client.connect(server.ws_url())
        error = await client.request({"type": "hello", "tenant": "demo", "token": forged})
        assert error["code"] == "unauthorized", forged
        assert await client.wait_closed() == 1008
