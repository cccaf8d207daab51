"""Handoff storm: K customers ask for a human at the same instant, A agents are online.

Agents connect first with capacity ceil(K/A), so every conversation has a slot; customers
then all send `request_human` at one agreed CLOCK_MONOTONIC instant. Measured from that
instant: when the last `assigned` reached an agent (the dispatcher drained the whole
backlog) and when the last customer saw its `human` state event; plus how many `queue`
frames (customer positions, agent queue lists) the storm cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.loadkit.procstat import CpuMeter
from bench.loadkit.rig import Rig, progress, server_pid
from bench.loadkit.stats import latency_summary, split_evenly
from bench.loadkit.workers import open_workers
from bench.loadkit.wsclient import Frame, Heartbeats, Peer, close_all


@dataclass
class HandoffOptions:
    customers: int = 1000
    agents: int = 50
    capacity: int = 0  # 0: ceil(customers / agents)
    workers: int = 2
    inline: bool = False
    concurrency: int = 50
    timeout_s: float = 60.0
    start_margin_s: float = 1.0  # for the fire command to reach every worker
    env: dict[str, str] = field(default_factory=dict)


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.customers: list[Peer] = []
        self.agents: list[Peer] = []
        self.heartbeats = Heartbeats(10.0)
        self.armed = False
        self.start_at = 0.0
        self.frames: Counter[str] = Counter()
        self.assigned_s: list[float] = []
        self.human_s: list[float] = []
        self.expect_assigned = 0
        self._all_assigned = asyncio.Event()
        self._all_human = asyncio.Event()

    def _on_customer(self, peer: Peer, frame: Frame) -> None:
        if not self.armed:
            return
        kind = frame.get("type")
        if kind == "queue":
            self.frames["customer_queue"] += 1
        elif kind == "event" and frame.get("kind") == "state" and frame.get("to") == "human":
            if "human_s" not in peer.data:
                peer.data["human_s"] = time.monotonic() - self.start_at
                self.human_s.append(peer.data["human_s"])
                if len(self.human_s) >= len(self.customers):
                    self._all_human.set()
        elif kind == "error":
            self.frames["customer_error:" + str(frame.get("code"))] += 1

    def _on_agent(self, peer: Peer, frame: Frame) -> None:
        if not self.armed:
            return
        kind = frame.get("type")
        if kind == "queue":
            self.frames["agent_queue"] += 1
            self.frames["agent_queue_items"] += len(frame.get("items") or ())
        elif kind == "assigned":
            self.assigned_s.append(time.monotonic() - self.start_at)
            if len(self.assigned_s) >= self.expect_assigned:
                self._all_assigned.set()
        elif kind == "error":
            self.frames["agent_error:" + str(frame.get("code"))] += 1

    async def cmd_agents(
        self, url: str, tokens: list[str], capacity: int, concurrency: int
    ) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)

        async def one(token: str) -> None:
            async with gate:
                peer = await Peer.open(url, self._on_agent)
                self.agents.append(peer)
                self.heartbeats.add(peer)
                hello = {"type": "hello", "token": token, "capacity": capacity}
                welcome = await peer.request(hello)
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"agent hello: {welcome}")

        await asyncio.gather(*(one(t) for t in tokens))
        return {"agents": len(self.agents)}

    async def cmd_customers(self, url: str, count: int, concurrency: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                peer = await Peer.open(url, self._on_customer)
                self.customers.append(peer)
                self.heartbeats.add(peer)
                welcome = await peer.request({"type": "hello", "tenant": "demo"})
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"customer hello: {welcome}")

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(count)))
        return {"customers": len(self.customers), "seconds": time.monotonic() - started}

    async def cmd_fire(
        self, start_at: float, expect_assigned: int, timeout_s: float
    ) -> dict[str, Any]:
        self.start_at = start_at
        self.expect_assigned = expect_assigned
        if expect_assigned == 0:
            self._all_assigned.set()
        if not self.customers:
            self._all_human.set()
        self.armed = True
        ack_ms: list[float] = []
        errors: Counter[str] = Counter()

        async def ask(peer: Peer) -> None:
            sent = time.monotonic()
            try:
                reply = await peer.request({"type": "request_human"}, timeout_s=timeout_s)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                return
            if reply.get("type") == "ack":
                ack_ms.append((time.monotonic() - sent) * 1000)
            else:
                errors[str(reply.get("code"))] += 1

        await asyncio.sleep(max(start_at - time.monotonic(), 0))
        asks = asyncio.gather(*(ask(p) for p in self.customers))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(self._all_assigned.wait(), self._all_human.wait()), timeout_s
            )
        await asks
        self.armed = False
        return {
            "ack_ms": ack_ms,
            "assigned_s": self.assigned_s,
            "human_s": self.human_s,
            "customers": len(self.customers),
            "frames": dict(self.frames),
            "errors": dict(errors),
        }

    async def close(self) -> None:
        await self.heartbeats.close()
        await close_all(self.customers + self.agents)
        self.customers.clear()
        self.agents.clear()


async def run_handoff(options: HandoffOptions) -> dict[str, Any]:
    capacity = options.capacity or math.ceil(options.customers / options.agents)
    async with Rig(options.env) as rig:
        node = (await rig.start_nodes(1))[0]
        url = node.ws_url("customer")
        tokens = await rig.add_agents(options.agents)
        workers = open_workers("bench.loadkit.handoff", options.workers, options.inline)
        try:
            # Agents all in worker 0: it alone can tell when every assignment has arrived.
            agent_sets = [tokens if i == 0 else [] for i in range(workers.count)]
            await workers.call(
                "agents",
                [
                    {"url": node.ws_url("agent"), "tokens": t, "capacity": capacity,
                     "concurrency": options.concurrency}
                    for t in agent_sets
                ],
                timeout_s=120,
            )
            counts = split_evenly(options.customers, workers.count)
            await workers.call(
                "customers",
                [{"url": url, "count": c, "concurrency": options.concurrency} for c in counts],
                timeout_s=300,
            )
            progress(f"[handoff] {options.agents} agents (capacity {capacity}), "
                     f"{options.customers} customers connected")
            clients = {f"client{i}": pid for i, pid in enumerate(workers.pids)}
            meter = CpuMeter({"node0": server_pid(node), **clients})
            start_at = time.monotonic() + options.start_margin_s
            meter_task = asyncio.create_task(_meter_from(meter, start_at))
            results = await workers.call(
                "fire",
                [
                    {"start_at": start_at,
                     "expect_assigned": options.customers if i == 0 else 0,
                     "timeout_s": options.timeout_s}
                    for i in range(workers.count)
                ],
                timeout_s=options.timeout_s + 60,
            )
            await meter_task
            cpu = meter.stop()
        finally:
            await workers.close()
    assigned = sorted(x for r in results for x in r["assigned_s"])
    human = sorted(x for r in results for x in r["human_s"])
    frames: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in results:
        frames.update(r["frames"])
        errors.update(r["errors"])
    complete = len(assigned) >= options.customers and len(human) >= options.customers
    all_assigned_s = assigned[-1] if complete else math.nan
    all_human_s = human[-1] if complete else math.nan
    human_summary = latency_summary(x * 1000 for x in human)
    ack_summary = latency_summary(x for r in results for x in r["ack_ms"])
    progress(
        f"[handoff] {len(assigned)}/{options.customers} assigned, last after "
        f"{all_assigned_s:.3f} s; last customer saw 'human' after {all_human_s:.3f} s; "
        f"queue frames {dict(frames)}; cpu {cpu}"
    )
    return {
        "headline": {
            "all_assigned_s": all_assigned_s,
            "assigned": float(len(assigned)),
            "assigned_within_2s": float(sum(1 for x in assigned if x <= 2.0)),
            "all_human_s": all_human_s,
            "human_p50_ms": human_summary["p50"],
            "human_p99_ms": human_summary["p99"],
            "request_ack_p99_ms": ack_summary["p99"],
            "customer_queue_frames": float(frames["customer_queue"]),
            "agent_queue_frames": float(frames["agent_queue"]),
            "server_cpu_percent": cpu["node0"],
            "other_processes_cpu_percent": cpu["others"],
        },
        "capacity": capacity,
        "assigned": len(assigned),
        "human": len(human),
        "frames": dict(frames),
        "errors": dict(errors),
        "human_ms": human_summary,
        "request_ack_ms": ack_summary,
        "cpu_percent": cpu,
    }


async def _meter_from(meter: CpuMeter, start_at: float) -> None:
    await asyncio.sleep(max(start_at - time.monotonic(), 0))
    meter.start()
