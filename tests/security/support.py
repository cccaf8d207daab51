"""Shared by the security tests: read-only snapshots of the store, metrics, process memory."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx

ORDER = {
    "tenants": "id",
    "agents": "id",
    "conversations": "id",
    "events": "conversation_id, seq",
}


def snapshot(db: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables that matter, read straight from the file (read-only)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            for table, order in ORDER.items()
        }


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        sample, value = line.rsplit(" ", 1)
        sample_name, _, rest = sample.partition("{")
        if sample_name != name:
            continue
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if got == want:
            return float(value)
    return 0.0


def scrape(base_url: str) -> str:
    return httpx.get(base_url + "/metrics", timeout=10).text


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
