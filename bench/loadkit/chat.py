"""Chat: M conversations, each a customer and an agent exchanging messages at a set rate.

Every conversation goes through the real handoff first: the customer sends `request_human`
and its agent (online with capacity 0, so the dispatcher leaves it alone) `claim`s it; the
pair then messages both ways, open loop, each side at <= the per-connection rate limit.

Each message's text carries its step number and the sender's CLOCK_MONOTONIC time (shared by
every process of the machine), so the other side measures send-to-receive latency. The rate
is stepped up (by adding conversations) until the system stops keeping up.

Topologies: `single` (one Warmline node), `cross` (two nodes sharing Redis, customers on one,
agents on the other) and `relay` (bench/ceiling_relay.py, the bare-Python ceiling).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.loadkit.procstat import CpuMeter
from bench.loadkit.rig import Rig, progress
from bench.loadkit.stats import (
    cpu_ms_per_message,
    is_saturated,
    latency_summary,
    median_or_nan,
    plan_step,
    should_stop,
    split_evenly,
)
from bench.loadkit.workers import Workers, open_workers
from bench.loadkit.wsclient import Frame, Heartbeats, Peer, close_all, is_state

PAD = "Hello, my parcel has not arrived yet and the tracking page shows no update."
TOPOLOGIES = ("single", "cross", "relay")


@dataclass
class ChatOptions:
    rates: Sequence[float] = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000)
    max_rate_per_side: float = 4.0  # the server allows 5/s sustained per connection
    workers: int = 2
    inline: bool = False
    warmup_s: float = 2.0
    measure_s: float = 6.0
    drain_s: float = 5.0
    probe_s: float = 10.0
    p99_limit_ms: float = 1000.0
    setup_concurrency: int = 25
    heartbeat_s: float = 10.0
    start_margin_s: float = 0.5  # for the step command to reach every worker
    env: dict[str, str] = field(default_factory=dict)
    # The ceiling relay commits every chat message to SQLite before its ack, as Warmline does.
    ceiling_store: bool = False


# Client side ---------------------------------------------------------------------------------
HELLO_ATTEMPTS = 5


async def hello(peer: Peer, frame: Frame) -> Frame:
    """Say hello; an overloaded server's transient `internal` error (a backing service slower
    than its timeout) is retried with backoff, as the widget and the dashboard do."""
    for attempt in range(HELLO_ATTEMPTS):
        welcome = await peer.request(dict(frame))
        if welcome.get("type") == "welcome":
            return welcome
        if welcome.get("code") != "internal" or attempt == HELLO_ATTEMPTS - 1:
            break
        await asyncio.sleep(0.5 * 2**attempt)
    raise RuntimeError(f"{frame['type']} as {peer.data.get('role')}: {welcome}")


@dataclass
class Pair:
    customer: Peer
    agent: Peer
    conversation_id: str


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.pairs: list[Pair] = []
        self.peers: list[Peer] = []
        self.heartbeats = Heartbeats(10.0)
        self._done: asyncio.Event | None = None
        self._reset(0, 0.0, 0.0)

    def _reset(self, step: int, t_from: float, t_to: float) -> None:
        self.step = step
        self.t_from_ns = int(t_from * 1e9)
        self.t_to_ns = int(t_to * 1e9)
        self.sent = 0
        self.sent_in_window = 0
        self.received = 0
        self.received_in_window = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.stale = 0
        self.skipped = 0
        self.max_lag_s = 0.0

    # Frames ----------------------------------------------------------------------------------
    def _on_frame(self, peer: Peer, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "event":
            if frame.get("kind") != "message":
                return
            author = frame.get("author") or {}
            if author.get("role") != peer.data["role"]:  # not our own echo
                self._delivered(str(frame.get("text", "")))
        elif kind == "error":
            self.errors[str(frame.get("code"))] += 1

    def _delivered(self, text: str) -> None:
        now_ns = time.monotonic_ns()
        head = text.split("|", 2)
        try:
            step, sent_ns = int(head[0]), int(head[1])
        except (ValueError, IndexError):
            self.stale += 1
            return
        if step != self.step:
            self.stale += 1  # a straggler of an earlier step that timed out its drain
            return
        self.received += 1
        if self.t_from_ns <= now_ns < self.t_to_ns:
            self.received_in_window += 1
        if self.t_from_ns <= sent_ns < self.t_to_ns:
            self.latencies.append((now_ns - sent_ns) / 1e6)
        if self._done is not None and self.received >= self.sent:
            self._done.set()

    # Commands --------------------------------------------------------------------------------
    async def cmd_setup(
        self,
        customer_url: str,
        agent_url: str,
        tokens: list[str],
        concurrency: int,
        heartbeat_s: float,
    ) -> dict[str, Any]:
        self.heartbeats.interval_s = heartbeat_s
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()
        results = await asyncio.gather(
            *(self._setup_pair(gate, customer_url, agent_url, t) for t in tokens),
            return_exceptions=True,
        )
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        return {
            "pairs": len(self.pairs),
            "failed": len(failures),
            "errors": failures[:3],
            "seconds": time.monotonic() - started,
        }

    async def _open(self, url: str, role: str) -> Peer:
        peer = await Peer.open(url, self._on_frame)
        peer.data["role"] = role
        self.peers.append(peer)
        self.heartbeats.add(peer)
        return peer

    async def _setup_pair(
        self, gate: asyncio.Semaphore, customer_url: str, agent_url: str, token: str
    ) -> None:
        async with gate:
            agent = await self._open(agent_url, "agent")
            await hello(agent, {"type": "hello", "token": token, "capacity": 0})
            customer = await self._open(customer_url, "customer")
            welcome = await hello(customer, {"type": "hello", "tenant": "demo"})
            conversation_id = welcome["conversation_id"]
            human = customer.expect(is_state("human"))
            assigned = agent.expect(
                lambda f: f.get("type") == "assigned"
                and f.get("conversation_id") == conversation_id
            )
            ack = await customer.request({"type": "request_human"})
            if ack.get("type") != "ack":
                raise RuntimeError(f"request_human: {ack}")
            ack = await agent.request({"type": "claim", "conversation_id": conversation_id})
            if ack.get("type") != "ack":
                raise RuntimeError(f"claim: {ack}")
            await asyncio.wait_for(asyncio.gather(human, assigned), 60)
            self.pairs.append(Pair(customer, agent, conversation_id))

    async def cmd_step(
        self,
        step: int,
        active: int,
        rate: float,
        start_at: float,
        warmup_s: float,
        measure_s: float,
        drain_s: float,
    ) -> dict[str, Any]:
        t_from = start_at + warmup_s
        t_to = t_from + measure_s
        self._reset(step, t_from, t_to)
        senders = []
        for pair in self.pairs[:active]:
            senders.append(self._sender(pair.customer, None, rate, start_at, t_to))
            senders.append(self._sender(pair.agent, pair.conversation_id, rate, start_at, t_to))
        await asyncio.gather(*senders)
        drain_started = time.monotonic()
        if self.received < self.sent:
            self._done = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), drain_s)
            self._done = None
        return {
            "active": min(active, len(self.pairs)),
            "sent": self.sent,
            "sent_in_window": self.sent_in_window,
            "received": self.received,
            "received_in_window": self.received_in_window,
            "latencies": self.latencies,
            "errors": dict(self.errors),
            "stale": self.stale,
            "skipped": self.skipped,
            "max_send_lag_ms": round(self.max_lag_s * 1000, 1),
            "drain_s": round(time.monotonic() - drain_started, 3),
        }

    async def _sender(
        self, peer: Peer, conversation_id: str | None, rate: float, start_at: float, t_end: float
    ) -> None:
        interval = 1.0 / rate
        at = start_at + random.random() * interval  # random phase: no synchronized bursts
        n = 0
        while at < t_end:
            now = time.monotonic()
            if at > now:
                await asyncio.sleep(at - now)
            else:
                lag = now - at
                self.max_lag_s = max(self.max_lag_s, lag)
                if lag > 1.0:
                    # The client fell a second behind: skip rather than burst into the rate
                    # limit; skipped sends are reported (a saturated client, not server).
                    missed = int(lag / interval)
                    self.skipped += missed
                    at += missed * interval
                    continue
            sent_ns = time.monotonic_ns()
            frame: Frame = {
                "type": "message",
                "id": f"s{self.step}-{n}",
                "text": f"{self.step}|{sent_ns}|{PAD}",
            }
            if conversation_id is not None:
                frame["conversation_id"] = conversation_id
            if peer.closed.is_set():
                self.errors["closed"] += 1
                return
            try:
                await peer.send(frame)
            except Exception:
                self.errors["send_failed"] += 1
                return
            self.sent += 1
            if self.t_from_ns <= sent_ns < self.t_to_ns:
                self.sent_in_window += 1
            n += 1
            at += interval

    async def cmd_status(self) -> dict[str, int]:
        return {"pairs": len(self.pairs), "closed": sum(p.closed.is_set() for p in self.peers)}

    async def close(self) -> None:
        await self.heartbeats.close()
        await close_all(self.peers)
        self.peers.clear()
        self.pairs.clear()


# Controller ----------------------------------------------------------------------------------
class StepRunner:
    """Drives the workers through steps on one topology, adding conversations as needed."""

    def __init__(self, topology: str, rig: Rig, workers: Workers, options: ChatOptions) -> None:
        self.topology = topology
        self.rig = rig
        self.workers = workers
        self.options = options
        self.pairs = 0
        self.step_no = 0
        if topology == "relay":
            assert rig.relay is not None
            self.customer_url = rig.relay.ws_url("customer")
            self.agent_url = rig.relay.ws_url("agent")
        else:
            self.customer_url = rig.nodes[0].ws_url("customer")
            self.agent_url = rig.nodes[-1].ws_url("agent")

    async def ensure_pairs(self, wanted: int) -> None:
        if wanted <= self.pairs:
            return
        count = wanted - self.pairs
        if self.topology == "relay":
            tokens = [f"relay-{self.pairs + i}" for i in range(count)]
        else:
            tokens = await self.rig.add_agents(count)
        per_worker: list[list[str]] = [[] for _ in range(self.workers.count)]
        for offset, token in enumerate(tokens):
            per_worker[(self.pairs + offset) % self.workers.count].append(token)
        started = time.monotonic()
        results = await self.workers.call(
            "setup",
            [
                {
                    "customer_url": self.customer_url,
                    "agent_url": self.agent_url,
                    "tokens": t,
                    "concurrency": self.options.setup_concurrency,
                    "heartbeat_s": self.options.heartbeat_s,
                }
                for t in per_worker
            ],
            timeout_s=120 + count * 0.2,
        )
        failed = sum(r["failed"] for r in results)
        if failed:
            errors = [e for r in results for e in r["errors"]]
            raise RuntimeError(f"{failed} of {count} conversations failed to set up: {errors}")
        self.pairs = wanted
        progress(
            f"[{self.topology}] {wanted} conversations handed off "
            f"(+{count} in {time.monotonic() - started:.1f} s)"
        )

    async def step(
        self, target_per_s: float, measure_s: float, label: str = "step"
    ) -> dict[str, Any]:
        options = self.options
        conversations, rate = plan_step(target_per_s, options.max_rate_per_side)
        await self.ensure_pairs(conversations)
        self.step_no += 1
        active = split_evenly(conversations, self.workers.count)
        start_at = time.monotonic() + options.start_margin_s
        t_from = start_at + options.warmup_s
        pids = self.rig.pids()
        pids.update({f"client{i}": pid for i, pid in enumerate(self.workers.pids)})
        meter = CpuMeter(pids)

        async def measure_cpu() -> dict[str, float]:
            await asyncio.sleep(max(t_from - time.monotonic(), 0))
            meter.start()
            await asyncio.sleep(measure_s)
            return meter.stop()

        cpu_task = asyncio.create_task(measure_cpu())
        try:
            results = await self.workers.call(
                "step",
                [
                    {
                        "step": self.step_no,
                        "active": a,
                        "rate": rate,
                        "start_at": start_at,
                        "warmup_s": options.warmup_s,
                        "measure_s": measure_s,
                        "drain_s": options.drain_s,
                    }
                    for a in active
                ],
                timeout_s=options.warmup_s + measure_s + options.drain_s + 60,
            )
        finally:
            cpu = await cpu_task
        result = aggregate_step(results, conversations, rate, measure_s, cpu, options.p99_limit_ms)
        result["label"] = label
        lat = result["latency_ms"]
        progress(
            f"[{self.topology}] {label} {self.step_no}: offered {result['offered_per_s']:.0f}/s "
            f"({conversations} conv x2 @ {rate:.2f}/s) -> delivered "
            f"{result['delivered_per_s']:.0f}/s, p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms, "
            f"lost {result['lost']}, cpu {cpu}"
            + ("  SATURATED" if result["saturated"] else "")
        )
        return result


def aggregate_step(
    results: list[dict[str, Any]],
    conversations: int,
    rate: float,
    measure_s: float,
    cpu: dict[str, float],
    p99_limit_ms: float,
) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latencies"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    offered = 2 * conversations * rate
    delivered = sum(r["received_in_window"] for r in results) / measure_s
    summary = latency_summary(latencies)
    server_cpu = sum(v for k, v in cpu.items() if k.startswith("node") or k == "relay")
    return {
        "conversations": conversations,
        "rate_per_side": rate,
        "offered_per_s": offered,
        "sent_per_s": sum(r["sent_in_window"] for r in results) / measure_s,
        "delivered_per_s": delivered,
        "latency_ms": summary,
        "sent": sent,
        "received": received,
        # Not received by the end of the drain; after a saturated step they may still arrive
        # and are then counted as `late_from_earlier_steps` by the next one.
        "lost": sent - received,
        "late_from_earlier_steps": sum(r["stale"] for r in results),
        "errors": dict(errors),
        "skipped_sends": sum(r["skipped"] for r in results),
        "max_send_lag_ms": max((r["max_send_lag_ms"] for r in results), default=0.0),
        "cpu_percent": cpu,
        # CPU time the server(s) spent per delivered message: unlike msgs/s, it barely moves
        # when other processes take cores away, so it compares across noisy runs.
        "server_cpu_ms_per_msg": cpu_ms_per_message(server_cpu, delivered),
        "saturated": is_saturated(
            offered, delivered, summary["p99"], sent - received, sent, p99_limit_ms=p99_limit_ms
        ),
    }


ProbePlan = Callable[[float], list[float]]


async def run_topology(
    topology: str, options: ChatOptions, probes: ProbePlan
) -> dict[str, Any]:
    """Step up to saturation on one topology, then run the probe rates `probes(saturation)`."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}")
    async with Rig(options.env) as rig:
        if topology == "relay":
            await rig.start_relay(store=options.ceiling_store)
        else:
            await rig.start_nodes(2 if topology == "cross" else 1, redis=topology == "cross")
        workers = open_workers("bench.loadkit.chat", options.workers, options.inline)
        try:
            runner = StepRunner(topology, rig, workers, options)
            steps: list[dict[str, Any]] = []
            for target in options.rates:
                steps.append(await runner.step(target, options.measure_s))
                if should_stop(
                    [s["delivered_per_s"] for s in steps], [s["saturated"] for s in steps]
                ):
                    break
            saturation = max(s["delivered_per_s"] for s in steps)
            probe_results = []
            for rate in probes(saturation):
                probe_results.append(await runner.step(rate, options.probe_s, label="probe"))
            return {
                "topology": topology,
                "steps": steps,
                "saturation_per_s": saturation,
                "reached_saturation": any(s["saturated"] for s in steps),
                "probes": probe_results,
            }
        finally:
            await workers.close()


def half(saturation: float) -> float:
    return max(saturation / 2, 1.0)


async def run_chat(options: ChatOptions, ceiling: bool = True) -> dict[str, Any]:
    """Warmline on one node, then the ceiling relay, each to saturation; probes at half."""
    warmline = await run_topology("single", options, lambda sat: [half(sat)])
    result: dict[str, Any] = {"warmline": warmline}
    if ceiling:
        half_warmline = half(warmline["saturation_per_s"])
        result["ceiling"] = await run_topology(
            "relay", options, lambda sat: [half(sat), half_warmline]
        )
        result["ceiling_store"] = options.ceiling_store
    result["headline"] = chat_headline(result)
    return result


async def run_chat_nodes(options: ChatOptions) -> dict[str, Any]:
    """One node, then two nodes through Redis (customers on one, agents on the other); both
    probed at half of the single node's saturation, so p99s compare at the same rate."""
    single = await run_topology("single", options, lambda sat: [half(sat)])
    same_rate = half(single["saturation_per_s"])
    cross = await run_topology("cross", options, lambda sat: [same_rate])
    result = {"single": single, "cross": cross}
    result["headline"] = nodes_headline(result)
    return result


def _probe_p(result: dict[str, Any], index: int, key: str) -> float:
    probes = result["probes"]
    if index >= len(probes):
        return math.nan
    return float(probes[index]["latency_ms"][key])


def chat_headline(result: dict[str, Any]) -> dict[str, float]:
    warmline = result["warmline"]
    headline: dict[str, float] = {
        "warmline_saturation_msgs_per_s": warmline["saturation_per_s"],
        "warmline_probe_rate_per_s": warmline["probes"][0]["offered_per_s"],
        "warmline_probe_p50_ms": _probe_p(warmline, 0, "p50"),
        "warmline_probe_p95_ms": _probe_p(warmline, 0, "p95"),
        "warmline_probe_p99_ms": _probe_p(warmline, 0, "p99"),
        "warmline_probe_server_cpu_percent": warmline["probes"][0]["cpu_percent"].get(
            "node0", math.nan
        ),
        "warmline_cpu_ms_per_msg": _cpu_per_msg(warmline),
        "other_processes_cpu_percent": _others(result),
    }
    ceiling = result.get("ceiling")
    if ceiling is not None:
        headline.update(
            {
                "ceiling_saturation_msgs_per_s": ceiling["saturation_per_s"],
                "ceiling_probe_p99_ms": _probe_p(ceiling, 0, "p99"),
                "ceiling_p99_at_warmline_probe_rate_ms": _probe_p(ceiling, 1, "p99"),
                "throughput_ratio": warmline["saturation_per_s"] / ceiling["saturation_per_s"],
                "ceiling_cpu_ms_per_msg": _cpu_per_msg(ceiling),
            }
        )
        # The contention-proof twin of throughput_ratio: ceiling CPU per message / ours.
        headline["cpu_efficiency_ratio"] = (
            headline["ceiling_cpu_ms_per_msg"] / headline["warmline_cpu_ms_per_msg"]
        )
        headline["p99_ratio_same_rate"] = (
            headline["warmline_probe_p99_ms"] / headline["ceiling_p99_at_warmline_probe_rate_ms"]
        )
    return headline


def nodes_headline(result: dict[str, Any]) -> dict[str, float]:
    single, cross = result["single"], result["cross"]
    single_p99 = _probe_p(single, 0, "p99")
    cross_p99 = _probe_p(cross, 0, "p99")
    return {
        "single_saturation_msgs_per_s": single["saturation_per_s"],
        "cross_saturation_msgs_per_s": cross["saturation_per_s"],
        "probe_rate_per_s": single["probes"][0]["offered_per_s"],
        "single_probe_p50_ms": _probe_p(single, 0, "p50"),
        "single_probe_p99_ms": single_p99,
        "cross_probe_p50_ms": _probe_p(cross, 0, "p50"),
        "cross_probe_p99_ms": cross_p99,
        "cross_over_single_p99": cross_p99 / single_p99 if single_p99 else math.nan,
        "other_processes_cpu_percent": _others(result),
    }


def _cpu_per_msg(topology: dict[str, Any]) -> float:
    """Median server CPU per message over the unsaturated steps (the loaded ones count)."""
    values = [
        s["server_cpu_ms_per_msg"]
        for s in topology["steps"] + topology["probes"]
        if not s["saturated"] and s["delivered_per_s"] >= 200
    ]
    return median_or_nan(values)


def _others(result: dict[str, Any]) -> float:
    """Mean CPU of processes not ours during the steps: how shared the machine was."""
    values = [
        step["cpu_percent"].get("others", math.nan)
        for topology in result.values()
        if isinstance(topology, dict) and "steps" in topology
        for step in topology["steps"] + topology["probes"]
    ]
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
