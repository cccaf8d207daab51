"""Presence across nodes: an agent is the union of their tabs on every node, a closed tab does
not flip them offline, and a dead node's tabs fade out by TTL instead of staying "online"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.helpers.client import Client
from tests.multinode.conftest import Cluster

TTL_S = 1.5


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"WARMLINE_PRESENCE_TTL_S": str(TTL_S)}


async def alex_on(cluster: Cluster, node: str) -> dict[str, Any]:
    """Alex as the supervisor API on that node reports him."""
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(
            cluster[node].url + "/v1/api/stats",
            headers={"Authorization": f"Bearer {cluster.supervisor_token}"},
        )
    response.raise_for_status()
    (alex,) = [a for a in response.json()["agent_list"] if a["name"] == "Alex"]
    return alex


async def until_status(cluster: Cluster, node: str, status: str, within_s: float) -> float:
    started = time.monotonic()
    while (await alex_on(cluster, node))["status"] != status:
        assert time.monotonic() - started < within_s, f"Alex never became {status}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def tab(cluster: Cluster, node: str, status: str, capacity: int = 2) -> Client:
    client, _ = await Client.agent(cluster[node].ws_url("agent"), cluster.agent_token)
    ack = await client.request({"type": "presence", "status": status, "capacity": capacity})
    assert ack["type"] == "ack", ack
    return client


async def test_agent_tabs_on_two_nodes(cluster: Cluster) -> None:
    # Seen from node C, where neither tab is connected.
    away_tab = await tab(cluster, "a", "away")
    await until_status(cluster, "c", "away", within_s=5)
    online_tab = await tab(cluster, "b", "online", capacity=3)
    await until_status(cluster, "c", "online", within_s=5)
    assert (await alex_on(cluster, "c"))["capacity"] == 3

    # Closing the online tab leaves the other one: away, not offline.
    await online_tab.close()
    await until_status(cluster, "c", "away", within_s=5)

    # An online tab on B again, then B dies without saying goodbye: its tab lingers until
    # the TTL runs out, then Alex is back to what the surviving tab on A says.
    await tab(cluster, "b", "online")
    await until_status(cluster, "c", "online", within_s=5)
    await asyncio.to_thread(cluster["b"].kill)
    took = await until_status(cluster, "c", "away", within_s=TTL_S + 5)
    assert took <= TTL_S + 3

    # The last tab closes: offline everywhere.
    await away_tab.close()
    await until_status(cluster, "c", "offline", within_s=5)
    assert (await alex_on(cluster, "a"))["status"] == "offline"
