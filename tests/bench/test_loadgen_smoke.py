"""Every load-generator scenario at a tiny size, so the benchmarks do not rot.

These check that each scenario runs end to end against real servers and reports sane
numbers (all delivered, nothing lost or doubled), not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadkit.chat import ChatOptions, run_chat, run_chat_nodes, run_topology
from bench.loadkit.handoff import HandoffOptions, run_handoff
from bench.loadkit.idle import IdleOptions, run_idle
from bench.loadkit.reconnect import ReconnectOptions, run_reconnect

ROOT = Path(__file__).resolve().parents[2]

TINY_CHAT = dict(
    rates=(16,), workers=1, inline=True, warmup_s=0.2, measure_s=0.6, drain_s=3.0,
    probe_s=0.6, start_margin_s=0.05,
)


def _all_delivered(step: dict) -> None:
    assert step["lost"] == 0, step
    assert step["errors"] == {}, step
    assert step["latency_ms"]["count"] > 0, step


async def test_chat_against_warmline_and_the_ceiling() -> None:
    result = await run_chat(ChatOptions(**TINY_CHAT))  # type: ignore[arg-type]
    for topology in ("warmline", "ceiling"):
        for step in result[topology]["steps"] + result[topology]["probes"]:
            _all_delivered(step)
    assert len(result["ceiling"]["probes"]) == 2  # its own half, and Warmline's half
    headline = result["headline"]
    assert headline["throughput_ratio"] > 0
    assert headline["warmline_probe_p99_ms"] > 0


async def test_chat_against_the_ceiling_that_stores_every_message() -> None:
    options = ChatOptions(**TINY_CHAT, ceiling_store=True)  # type: ignore[arg-type]
    result = await run_topology("relay", options, lambda saturation: [saturation / 2])
    for step in result["steps"] + result["probes"]:
        _all_delivered(step)


async def test_chat_across_two_nodes() -> None:
    result = await run_chat_nodes(ChatOptions(**TINY_CHAT))  # type: ignore[arg-type]
    for topology in ("single", "cross"):
        for step in result[topology]["steps"] + result[topology]["probes"]:
            _all_delivered(step)
    assert result["cross"]["probes"][0]["offered_per_s"] == pytest.approx(
        result["single"]["probes"][0]["offered_per_s"]
    )


async def test_handoff_storm() -> None:
    result = await run_handoff(
        HandoffOptions(customers=12, agents=3, workers=2, inline=True, timeout_s=20,
                       start_margin_s=0.05)
    )
    assert result["assigned"] == 12 and result["human"] == 12
    assert result["errors"] == {}
    assert result["headline"]["all_assigned_s"] < 20


async def test_reconnect_storm() -> None:
    result = await run_reconnect(
        ReconnectOptions(clients=12, agents=2, workers=2, inline=True, traffic_before_s=0.3,
                         traffic_after_s=0.3, resume_timeout_s=20, backoff_base_s=0.05)
    )
    headline = result["headline"]
    assert result["not_resumed"] == 0
    assert headline["lost"] == 0 and headline["duplicated"] == 0
    # Every conversation's queued and human state events, and some agent messages.
    assert headline["events_checked"] > 12 * 2
    assert result["agent_traffic"]["sent"] == result["agent_traffic"]["acked"] > 0
    assert result["audit"]["out_of_order"] == 0


def test_idle_through_the_command_line_and_worker_processes(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), "idle", "--connections", "30",
         "--warmup-connections", "4", "--hold", "0.3", "--settle", "0.1", "--workers", "2",
         "--json-out", str(out)],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "## idle" in completed.stdout
    run = json.loads(out.read_text())["runs"][0]
    assert run["connected"] == 30
    assert run["headline"]["connections_open"] == 30
    assert run["rss_kib"]["held"] > 0


async def test_idle_inline() -> None:
    result = await run_idle(
        IdleOptions(connections=10, workers=1, inline=True, warmup_connections=2, settle_s=0.1,
                    hold_s=0.2)
    )
    assert result["connected"] == 10
    assert result["closed_during_hold"] == {}


def test_the_sqlite_layout_benchmark_compares_both_layouts() -> None:
    out = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "sqlite_layout.py"), "--rounds", "1"),
            *("--conversations", "50", "--messages", "400"),
        ],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if " KiB) |" in line}
    assert set(rows) == {"v1 (WITHOUT ROWID, 4 KiB)", "current (rowid, 2 KiB)"}, out
    wal = {name: float(line.split("|")[3]) for name, line in rows.items()}
    # Half-size pages at least: every message writes whole pages to the WAL.
    assert wal["current (rowid, 2 KiB)"] < 0.7 * wal["v1 (WITHOUT ROWID, 4 KiB)"], out
