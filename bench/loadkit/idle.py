"""Idle: N customers connected and heartbeating, nothing else: memory and CPU per connection.

Resident memory comes from the server's /proc/<pid>/status (VmRSS) after a warm-up (so
imports and first-use caches are in the baseline), then with all N connected, then after a
hold of at least one heartbeat round; CPU is the server's over the hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from bench.loadkit.procstat import CpuMeter, peak_rss_kib, rss_kib
from bench.loadkit.rig import Rig, progress, server_pid
from bench.loadkit.stats import split_evenly
from bench.loadkit.workers import open_workers
from bench.loadkit.wsclient import Heartbeats, open_socket

PING = json.dumps({"type": "ping"})


@dataclass
class IdleOptions:
    connections: int = 10_000
    workers: int = 2
    inline: bool = False
    concurrency: int = 100  # connects in flight per worker
    warmup_connections: int = 200
    settle_s: float = 3.0
    hold_s: float = 35.0  # > two heartbeat rounds at the default 15 s
    target: str = "warmline"  # or "relay": the same for the bare websockets relay
    compression: bool = False  # offer permessage-deflate, like a browser
    env: dict[str, str] = field(default_factory=dict)


class IdleClient:
    """A socket that only heartbeats; frames it is sent (pongs) wait unread in its buffer,
    which costs the client a little memory and the server nothing."""

    __slots__ = ("ws",)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def heartbeat(self) -> None:
        if self.ws.state is State.OPEN:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(PING)


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.clients: list[IdleClient] = []
        self.heartbeats = Heartbeats(15.0)
        self.heartbeat_s = 15.0

    async def cmd_connect(
        self,
        url: str,
        count: int,
        concurrency: int,
        timeout_s: float = 60.0,
        compression: bool = False,
    ) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        errors: Counter[str] = Counter()
        started = time.monotonic()

        async def one() -> None:
            async with gate:
                try:
                    ws = await open_socket(url, timeout_s, compression)
                except Exception as exc:
                    errors[type(exc).__name__] += 1
                    return
                try:
                    await ws.send(json.dumps({"type": "hello", "tenant": "demo"}))
                    welcome = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
                    if welcome.get("type") != "welcome":
                        raise RuntimeError(str(welcome)[:200])
                    self.heartbeat_s = float(welcome.get("heartbeat_s") or 15.0)
                except Exception as exc:
                    errors[type(exc).__name__] += 1
                    await ws.close()
                    return
                client = IdleClient(ws)
                self.clients.append(client)
                self.heartbeats.interval_s = self.heartbeat_s
                self.heartbeats.add(client)

        await asyncio.gather(*(one() for _ in range(count)))
        return {
            "connected": count - sum(errors.values()),
            "errors": dict(errors),
            "seconds": time.monotonic() - started,
            "heartbeat_s": self.heartbeat_s,
        }

    async def cmd_status(self) -> dict[str, Any]:
        codes: Counter[str] = Counter()
        for client in self.clients:
            if client.ws.state is not State.OPEN:
                codes[str(client.ws.close_code)] += 1
        return {
            "open": len(self.clients) - sum(codes.values()),
            "closed": dict(codes),
            "pings": self.heartbeats.sent,
        }

    async def cmd_close_all(self) -> dict[str, int]:
        await self.heartbeats.close()
        gate = asyncio.Semaphore(500)

        async def one(client: IdleClient) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.ws.close(), 5)

        count = len(self.clients)
        await asyncio.gather(*(one(c) for c in self.clients))
        self.clients.clear()
        self.heartbeats = Heartbeats(self.heartbeat_s)
        return {"closed": count}

    async def close(self) -> None:
        await self.cmd_close_all()


async def run_idle(options: IdleOptions) -> dict[str, Any]:
    async with Rig(options.env) as rig:
        if options.target == "relay":
            relay = await rig.start_relay()
            pid, url = relay.pid, relay.ws_url("customer")
        else:
            node = (await rig.start_nodes(1))[0]
            pid, url = server_pid(node), node.ws_url("customer")
        workers = open_workers("bench.loadkit.idle", options.workers, options.inline)
        try:
            started_rss = rss_kib(pid)
            # Warm-up: first-use allocations (imports, caches, pools) belong to the baseline.
            counts = split_evenly(options.warmup_connections, workers.count)
            await workers.call(
                "connect",
                [
                    {"url": url, "count": c, "concurrency": options.concurrency,
                     "compression": options.compression}
                    for c in counts
                ],
                timeout_s=120,
            )
            await workers.call("close_all", {}, timeout_s=60)
            await asyncio.sleep(options.settle_s)
            baseline = rss_kib(pid)
            progress(
                f"[idle] {options.target} RSS {started_rss} KiB at start, "
                f"{baseline} KiB after warm-up"
            )

            counts = split_evenly(options.connections, workers.count)
            t0 = time.monotonic()
            results = await workers.call(
                "connect",
                [
                    {"url": url, "count": c, "concurrency": options.concurrency,
                     "compression": options.compression}
                    for c in counts
                ],
                timeout_s=600,
            )
            connect_s = time.monotonic() - t0
            connected = sum(r["connected"] for r in results)
            errors: Counter[str] = Counter()
            for r in results:
                errors.update(r["errors"])
            progress(f"[idle] {connected} connected in {connect_s:.1f} s, errors {dict(errors)}")
            await asyncio.sleep(options.settle_s)
            rss_connected = rss_kib(pid)
            clients = {f"client{i}": p for i, p in enumerate(workers.pids)}
            meter = CpuMeter({"server": pid, **clients})
            meter.start()
            await asyncio.sleep(options.hold_s)
            cpu = meter.stop()
            rss_held = rss_kib(pid)
            peak = peak_rss_kib(pid)
            status = await workers.call("status", {}, timeout_s=60)
            still_open = sum(s["open"] for s in status)
            closed: Counter[str] = Counter()
            for s in status:
                closed.update(s["closed"])
            per_connection = (rss_held - baseline) / still_open if still_open else float("nan")
            progress(
                f"[idle] {still_open} open after {options.hold_s:.0f} s hold; RSS {rss_held} KiB "
                f"({per_connection:.1f} KiB/connection); cpu {cpu}"
            )
            await workers.call("close_all", {}, timeout_s=120)
        finally:
            await workers.close()
    headline = {
        "connections_open": float(still_open),
        "rss_per_connection_kib": per_connection,
        "rss_baseline_mib": baseline / 1024,
        "rss_connected_mib": rss_connected / 1024,
        "rss_after_hold_mib": rss_held / 1024,
        "server_cpu_percent": cpu["server"],
        "connect_per_s": connected / connect_s if connect_s else float("nan"),
        "other_processes_cpu_percent": cpu["others"],
    }
    return {
        "headline": headline,
        "target": options.target,
        "connected": connected,
        "connect_errors": dict(errors),
        "connect_s": connect_s,
        "closed_during_hold": dict(closed),
        "rss_kib": {
            "start": started_rss,
            "baseline": baseline,
            "connected": rss_connected,
            "held": rss_held,
            "peak": peak,
        },
        "cpu_percent": cpu,
        "heartbeat_s": results[0]["heartbeat_s"] if results else None,
        "pings_sent": sum(s["pings"] for s in status),
    }
