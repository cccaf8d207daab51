"""Reconnect storm: kill -9 a node holding N customers; they resume on the other node.

Two nodes share the SQLite file and Redis. Customers connect to node A and are handed to
agents connected to node B, which keep writing into every conversation before, during and
after the kill, so events are stored while the customers are away. Each customer reconnects
like the widget does (full-jitter exponential backoff, base 0.5 s, cap 10 s) to the next
node with its token and the last seq it saw. Measured from the SIGKILL: when the last
customer got its `welcome` on node B and when the last one had caught up; then every
customer's seen seqs are checked against the store: lost and duplicated events must be 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from bench.loadkit.procstat import CpuMeter
from bench.loadkit.rig import Rig, progress, server_pid
from bench.loadkit.stats import latency_summary, split_evenly
from bench.loadkit.workers import open_workers
from bench.loadkit.wsclient import Frame, Heartbeats, Peer, close_all, encode, open_socket
from warmline.backoff import Backoff
from warmline.store import open_store

MAX_ATTEMPTS = 40  # per customer, consecutive failures before it gives up (reported)


@dataclass
class ReconnectOptions:
    clients: int = 2000
    agents: int = 40
    agent_rate: float = 4.0  # messages/s per agent connection (under the 5/s limit)
    workers: int = 2
    inline: bool = False
    concurrency: int = 50
    traffic_before_s: float = 2.0
    traffic_after_s: float = 2.0
    resume_timeout_s: float = 60.0
    backoff_base_s: float = 0.5  # what web/static/warmline-client.js uses
    backoff_cap_s: float = 10.0
    env: dict[str, str] = field(default_factory=dict)


class StormCustomer:
    """A customer that reconnects like the widget: next node, backoff with full jitter,
    `hello` with its token and last seq, and a record of every seq it was sent."""

    def __init__(self, urls: list[str], backoff: Backoff, changed: Callable[[], None]) -> None:
        self.urls = urls
        self.url_index = 0
        self.backoff = backoff
        self.changed = changed
        self.ws: ClientConnection | None = None
        self.token: str | None = None
        self.conversation_id = ""
        self.seen: list[int] = []
        self.last_seq = 0
        self.welcomes = 0
        self.failures = 0
        self.lost_at: float | None = None
        self.resumed_at: float | None = None
        self.caught_up_at: float | None = None
        self.resume_target = 0
        self.human = False
        self.gave_up = False
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                ws = await open_socket(self.urls[self.url_index], timeout_s=10)
            except Exception:
                ws = None
            if ws is not None:
                self.ws = ws
                try:
                    hello: Frame = {"type": "hello", "tenant": "demo"}
                    if self.token is not None:
                        hello.update(token=self.token, last_seq=self.last_seq)
                    await ws.send(encode(hello))
                    async for raw in ws:
                        if self._on_frame(json.loads(raw)):
                            attempt = 0
                except (websockets.ConnectionClosed, OSError):
                    pass
                finally:
                    self.ws = None
            if self.stopping:
                return
            if self.token is not None and self.lost_at is None:
                self.lost_at = time.monotonic()
            self.failures += 1
            if attempt >= MAX_ATTEMPTS:
                self.gave_up = True
                self.changed()
                return
            self.url_index = (self.url_index + 1) % len(self.urls)
            await asyncio.sleep(self.backoff.delay(attempt, random.random()))
            attempt += 1

    def _on_frame(self, frame: Frame) -> bool:
        """Handle one frame; True for a welcome (the connection is good)."""
        kind = frame.get("type")
        if kind == "welcome":
            self.welcomes += 1
            if self.token is None:
                self.token = frame["token"]
                self.conversation_id = frame["conversation_id"]
            else:
                self.resumed_at = time.monotonic()
                self.resume_target = int(frame["last_seq"])
                self._check_caught_up()
            self.changed()
            return True
        if kind == "event" and frame.get("conversation_id") == self.conversation_id:
            seq = int(frame["seq"])
            self.seen.append(seq)
            self.last_seq = max(self.last_seq, seq)
            if frame.get("kind") == "state" and frame.get("to") == "human":
                self.human = True
            self._check_caught_up()
            self.changed()
        return False

    def _check_caught_up(self) -> None:
        if self.resumed_at is not None and self.caught_up_at is None:
            if self.last_seq >= self.resume_target:
                self.caught_up_at = time.monotonic()

    async def send(self, frame: Frame) -> None:
        if self.ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(encode(frame))

    async def heartbeat(self) -> None:
        await self.send({"type": "ping"})

    def audit(self, expected_last: int) -> dict[str, int]:
        counts = Counter(self.seen)
        return {
            "lost": sum(1 for s in range(1, expected_last + 1) if s not in counts),
            "duplicated": sum(n - 1 for n in counts.values() if n > 1),
            "out_of_order": sum(
                1 for a, b in zip(self.seen, self.seen[1:], strict=False) if b <= a
            ),
            "unexpected": sum(1 for s in counts if s > expected_last),
        }


def _all_human(customers: list[StormCustomer]) -> Callable[[], bool]:
    return lambda: all(c.human for c in customers)


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.customers: list[StormCustomer] = []
        self.agents: list[Peer] = []
        self.heartbeats = Heartbeats(10.0)
        self._changed = asyncio.Event()
        self.agent_frames: Counter[str] = Counter()
        self._traffic: list[asyncio.Task[None]] = []
        self._stop_traffic = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def _until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait, woken by every customer change, until `predicate()` holds or time is up."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    # Agents ----------------------------------------------------------------------------------
    def _on_agent(self, peer: Peer, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "assigned":
            peer.data["conversations"].append(frame["conversation_id"])
            self.changed()
        elif kind == "ack" and "seq" in frame:
            self.agent_frames["acked"] += 1
            self.changed()
        elif kind == "error":
            self.agent_frames["error:" + str(frame.get("code"))] += 1
            self.changed()

    async def cmd_agents(self, url: str, tokens: list[str], capacity: int) -> dict[str, int]:
        async def one(token: str) -> None:
            peer = await Peer.open(url, self._on_agent)
            peer.data["conversations"] = []
            self.agents.append(peer)
            self.heartbeats.add(peer)
            welcome = await peer.request({"type": "hello", "token": token, "capacity": capacity})
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"agent hello: {welcome}")

        await asyncio.gather(*(one(t) for t in tokens))
        return {"agents": len(self.agents)}

    async def cmd_wait_assigned(self, count: int, timeout_s: float) -> dict[str, int]:
        def assigned() -> int:
            return sum(len(a.data["conversations"]) for a in self.agents)

        await self._until(lambda: assigned() >= count, timeout_s)
        return {"assigned": assigned()}

    async def cmd_traffic_start(self, rate: float, max_s: float = 600.0) -> dict[str, int]:
        self._stop_traffic.clear()
        self.agent_frames["sent"] = 0
        self.agent_frames["acked"] = 0
        self._traffic = [
            asyncio.create_task(self._agent_traffic(a, rate, max_s)) for a in self.agents
        ]
        return {"agents": len(self._traffic)}

    async def _agent_traffic(self, agent: Peer, rate: float, max_s: float) -> None:
        conversations: list[str] = agent.data["conversations"]
        if not conversations:
            return
        interval = 1.0 / rate
        at = time.monotonic() + random.random() * interval
        end = time.monotonic() + max_s
        n = 0
        while not self._stop_traffic.is_set() and at < end:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_traffic.wait(), max(at - time.monotonic(), 0))
            if self._stop_traffic.is_set():
                return
            conversation_id = conversations[n % len(conversations)]
            await agent.send(
                {"type": "message", "conversation_id": conversation_id,
                 "id": f"storm-{n}", "text": f"agent update {n}"}
            )
            self.agent_frames["sent"] += 1
            n += 1
            at += interval

    async def cmd_traffic_stop(self, timeout_s: float = 20.0) -> dict[str, int]:
        self._stop_traffic.set()
        await asyncio.gather(*self._traffic)
        self._traffic = []
        frames = self.agent_frames
        await self._until(
            lambda: frames["acked"] + sum(v for k, v in frames.items() if k.startswith("error:"))
            >= frames["sent"],
            timeout_s,
        )
        return dict(frames)

    # Customers -------------------------------------------------------------------------------
    async def cmd_customers(
        self, urls: list[str], count: int, concurrency: int, base_s: float, cap_s: float,
        timeout_s: float,
    ) -> dict[str, Any]:
        backoff = Backoff(base_s, cap_s)
        started = time.monotonic()
        for start in range(0, count, concurrency):
            size = min(count, start + concurrency) - start
            batch = [StormCustomer(urls, backoff, self.changed) for _ in range(size)]
            for customer in batch:
                self.customers.append(customer)
                customer.task = asyncio.create_task(customer.run())
                self.heartbeats.add(customer)
            await self._until(lambda: all(c.token for c in self.customers), timeout_s)
        return {
            "welcomed": sum(1 for c in self.customers if c.token),
            "seconds": time.monotonic() - started,
        }

    async def cmd_escalate(self, concurrency: int, timeout_s: float) -> dict[str, int]:
        for start in range(0, len(self.customers), concurrency):
            batch = self.customers[start : start + concurrency]
            for customer in batch:
                await customer.send({"type": "request_human"})
            await self._until(_all_human(batch), timeout_s)
        return {"human": sum(c.human for c in self.customers)}

    async def cmd_conversations(self) -> list[str]:
        return [c.conversation_id for c in self.customers]

    async def cmd_wait_resumed(self, t_kill: float, timeout_s: float) -> dict[str, Any]:
        def settled(c: StormCustomer) -> bool:
            return c.gave_up or c.caught_up_at is not None

        await self._until(lambda: all(settled(c) for c in self.customers), timeout_s)
        return {
            "resumed_s": [c.resumed_at - t_kill for c in self.customers if c.resumed_at],
            "caught_up_s": [c.caught_up_at - t_kill for c in self.customers if c.caught_up_at],
            "noticed_s": [c.lost_at - t_kill for c in self.customers if c.lost_at],
            "not_resumed": sum(1 for c in self.customers if c.resumed_at is None),
            "gave_up": sum(c.gave_up for c in self.customers),
            "failed_attempts": sum(c.failures for c in self.customers),
            "customers": len(self.customers),
        }

    async def cmd_verify(self, expected: dict[str, int], timeout_s: float) -> dict[str, Any]:
        await self._until(
            lambda: all(c.last_seq >= expected.get(c.conversation_id, 0) for c in self.customers),
            timeout_s,
        )
        totals: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        for customer in self.customers:
            audit = customer.audit(expected.get(customer.conversation_id, 0))
            totals.update(audit)
            if any(audit.values()) and len(examples) < 3:
                examples.append({"conversation_id": customer.conversation_id, **audit,
                                 "seen_tail": customer.seen[-20:]})
        totals["events_checked"] = sum(expected.get(c.conversation_id, 0) for c in self.customers)
        return {"totals": dict(totals), "examples": examples}

    async def close(self) -> None:
        await self.heartbeats.close()
        self._stop_traffic.set()
        for task in self._traffic:
            task.cancel()
        for customer in self.customers:
            customer.stopping = True
            if customer.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(customer.ws.close(), 2)
            if customer.task is not None:
                customer.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await customer.task
        await close_all(self.agents)
        self.customers.clear()
        self.agents.clear()


async def _last_seqs(db: str, conversation_ids: list[str]) -> dict[str, int]:
    store = open_store(db)
    await store.open()
    try:
        return {cid: (await store.get_conversation(cid)).last_seq for cid in conversation_ids}
    finally:
        await store.close()


async def run_reconnect(options: ReconnectOptions) -> dict[str, Any]:
    capacity = math.ceil(options.clients / options.agents)
    if capacity > 100:
        raise ValueError("an agent takes at most 100 conversations: add agents")
    async with Rig(options.env) as rig:
        node_a, node_b = await rig.start_nodes(2, redis=True)
        tokens = await rig.add_agents(options.agents)
        workers = open_workers("bench.loadkit.reconnect", options.workers, options.inline)
        try:
            agent_sets = [tokens if i == 0 else [] for i in range(workers.count)]
            await workers.call(
                "agents",
                [{"url": node_b.ws_url("agent"), "tokens": t, "capacity": capacity}
                 for t in agent_sets],
                timeout_s=120,
            )
            counts = split_evenly(options.clients, workers.count)
            urls = [node_a.ws_url("customer"), node_b.ws_url("customer")]
            await workers.call(
                "customers",
                [{"urls": urls, "count": c, "concurrency": options.concurrency,
                  "base_s": options.backoff_base_s, "cap_s": options.backoff_cap_s,
                  "timeout_s": 60.0} for c in counts],
                timeout_s=600,
            )
            await workers.call(
                "escalate", {"concurrency": options.concurrency, "timeout_s": 60.0}, timeout_s=900
            )
            assigned = await workers.call(
                "wait_assigned",
                [{"count": options.clients if i == 0 else 0, "timeout_s": 60.0}
                 for i in range(workers.count)],
                timeout_s=120,
            )
            progress(f"[reconnect] {options.clients} customers on node A handed to "
                     f"{options.agents} agents on node B ({assigned[0]['assigned']} assigned)")
            await workers.call("traffic_start", {"rate": options.agent_rate}, timeout_s=30)
            await asyncio.sleep(options.traffic_before_s)

            pids = {f"client{i}": pid for i, pid in enumerate(workers.pids)}
            if rig.redis is not None and rig.redis.pid is not None:
                pids["redis"] = rig.redis.pid
            meter = CpuMeter({"node_b": server_pid(node_b), **pids})
            meter.start()
            t_kill = time.monotonic()
            await asyncio.to_thread(node_a.kill)
            progress("[reconnect] node A killed (SIGKILL)")
            resumed = await workers.call(
                "wait_resumed",
                {"t_kill": t_kill, "timeout_s": options.resume_timeout_s},
                timeout_s=options.resume_timeout_s + 30,
            )
            cpu = meter.stop()
            await asyncio.sleep(options.traffic_after_s)
            traffic = await workers.call("traffic_stop", {}, timeout_s=60)
            conversation_ids = [c for ids in await workers.call("conversations", {}, timeout_s=30)
                                for c in ids]
            expected = await _last_seqs(str(rig.db), conversation_ids)
            verified = await workers.call(
                "verify", {"expected": expected, "timeout_s": 30.0}, timeout_s=60
            )
        finally:
            await workers.close()
    resumed_s = sorted(x for r in resumed for x in r["resumed_s"])
    caught_up_s = sorted(x for r in resumed for x in r["caught_up_s"])
    not_resumed = sum(r["not_resumed"] for r in resumed)
    totals: Counter[str] = Counter()
    for v in verified:
        totals.update(v["totals"])
    examples = [e for v in verified for e in v["examples"]]
    all_resumed_s = resumed_s[-1] if resumed_s and not not_resumed else math.nan
    all_caught_up_s = caught_up_s[-1] if len(caught_up_s) == options.clients else math.nan
    resume_summary = latency_summary(x * 1000 for x in resumed_s)
    progress(
        f"[reconnect] {len(resumed_s)}/{options.clients} resumed, last after {all_resumed_s:.2f} s "
        f"(caught up {all_caught_up_s:.2f} s); lost {totals['lost']}, duplicated "
        f"{totals['duplicated']} of {totals['events_checked']} events; node B cpu {cpu}"
    )
    return {
        "headline": {
            "all_resumed_s": all_resumed_s,
            "all_caught_up_s": all_caught_up_s,
            "resume_p50_ms": resume_summary["p50"],
            "resume_p99_ms": resume_summary["p99"],
            "lost": float(totals["lost"]),
            "duplicated": float(totals["duplicated"]),
            "events_checked": float(totals["events_checked"]),
            "node_b_cpu_percent": cpu["node_b"],
            "other_processes_cpu_percent": cpu["others"],
        },
        "not_resumed": not_resumed,
        "gave_up": sum(r["gave_up"] for r in resumed),
        "failed_attempts": sum(r["failed_attempts"] for r in resumed),
        "noticed_ms": latency_summary(x * 1000 for r in resumed for x in r["noticed_s"]),
        "resume_ms": resume_summary,
        "audit": dict(totals),
        "audit_examples": examples,
        "agent_traffic": traffic[0],
        "cpu_percent": cpu,
    }
