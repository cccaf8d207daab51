"""Demo mode: tenant `demo`, one agent, one supervisor and a shop's help center.

Demo tokens are derived from the database's own secret, so every start prints the same
working tokens although only their hashes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from retrieval.ingest import ingest_paths
from warmline.errors import Conflict
from warmline.store.base import Store

DEMO_TENANT = "demo"
DEMO_KB = Path(__file__).parent / "demo_kb"


@dataclass(frozen=True)
class DemoInfo:
    tenant: str
    agent_token: str
    supervisor_token: str
    documents: int


async def _demo_token(store: Store, who: str) -> str:
    secret = await store.secret("demo-tokens")
    return "wla_demo_" + hmac.new(secret, who.encode(), hashlib.sha256).hexdigest()


async def seed_demo(store: Store) -> DemoInfo:
    try:
        await store.add_tenant(DEMO_TENANT, "Pebble & Pine (demo)")
    except Conflict:
        pass
    agent_token = await _demo_token(store, "agent")
    supervisor_token = await _demo_token(store, "supervisor")
    if await store.agent_by_token(agent_token) is None:
        await store.add_agent(DEMO_TENANT, "Alex", "agent", token=agent_token)
    if await store.agent_by_token(supervisor_token) is None:
        await store.add_agent(DEMO_TENANT, "Sam", "supervisor", token=supervisor_token)
    documents = await store.list_documents(DEMO_TENANT)
    if not documents:
        await ingest_paths(store, DEMO_TENANT, [str(DEMO_KB)])
        documents = await store.list_documents(DEMO_TENANT)
    return DemoInfo(DEMO_TENANT, agent_token, supervisor_token, len(documents))
