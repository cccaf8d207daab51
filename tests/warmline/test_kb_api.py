"""The knowledge-base API: ingest as a background job, answer from it, delete it."""

from __future__ import annotations

import asyncio

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess, wait_until

ARTICLE = """---
title: Gift wrapping
url: https://help.pebbleandpine.example/gift-wrapping
---
# Gift wrapping

## Can you gift wrap my order?
Yes: gift wrapping in recycled kraft paper with a handwritten card costs $4.50 per item.
Choose "Gift wrap" at checkout; wrapped items ship in a plain outer box.
"""

QUESTION = "Can you gift wrap my order with a handwritten card?"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ask(server: ServerProcess, question: str) -> dict:
    customer, _ = await Client.customer(server.ws_url())
    await customer.request({"type": "message", "id": "q", "text": question})
    reply = await customer.recv_until(
        lambda f: f.get("type") == "event" and f.get("author", {}).get("role") == "bot"
    )
    await customer.close()
    return reply


async def test_ingest_answer_and_delete(demo_server: ServerProcess) -> None:
    headers = auth(demo_server.supervisor_token)
    response = await asyncio.to_thread(
        demo_server.post,
        "/v1/api/kb/documents",
        json={"documents": [{"name": "gift-wrapping.md", "content": ARTICLE}]},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in ("queued", "running", "done")

    def finished() -> dict | None:
        status = demo_server.get(f"/v1/api/kb/jobs/{job['id']}", headers=headers).json()
        return status if status["status"] in ("done", "failed") else None

    done = await asyncio.to_thread(wait_until, finished, 30)
    assert done["status"] == "done", done
    listed = demo_server.get("/v1/api/kb/documents", headers=headers).json()["documents"]
    doc_id = next(d["doc_id"] for d in listed if d["title"] == "Gift wrapping")

    reply = await ask(demo_server, QUESTION)
    assert any(s["doc_id"] == doc_id for s in reply["sources"]), reply
    assert "4.50" in reply["text"]

    deleted = demo_server.client_delete(f"/v1/api/kb/documents/{doc_id}", headers=headers)
    assert deleted.status_code == 200, deleted.text
    reply = await ask(demo_server, QUESTION)
    assert all(s["doc_id"] != doc_id for s in reply.get("sources", [])), reply
    assert demo_server.client_delete(
        f"/v1/api/kb/documents/{doc_id}", headers=headers
    ).status_code == 404


def test_kb_api_refuses_bad_callers_and_bodies(demo_server: ServerProcess) -> None:
    body = {"documents": [{"name": "x.md", "content": "# X\n\nText."}]}
    assert demo_server.post("/v1/api/kb/documents", json=body).status_code == 401
    agent = auth(demo_server.agent_token)
    assert demo_server.post("/v1/api/kb/documents", json=body, headers=agent).status_code == 403
    supervisor = auth(demo_server.supervisor_token)
    other = demo_server.post("/v1/api/kb/documents?tenant=other", json=body, headers=supervisor)
    assert other.status_code == 403
    for bad in (b"not json", b"[]", b'{"documents": []}', b'{"documents": [{"name": 3}]}'):
        response = demo_server.post("/v1/api/kb/documents", content=bad, headers=supervisor)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["code"] == "bad_request"
    assert demo_server.get("/v1/api/kb/jobs/nope", headers=supervisor).status_code == 404
