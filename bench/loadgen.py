"""Warmline load generator: one subcommand per scenario; see bench/README.md.

    .venv/bin/python bench/loadgen.py idle --connections 10000 --runs 3
    .venv/bin/python bench/loadgen.py chat --runs 3            # Warmline and the ceiling relay
    .venv/bin/python bench/loadgen.py chat-nodes --runs 3      # one node vs two through Redis
    .venv/bin/python bench/loadgen.py handoff --customers 1000 --agents 50 --runs 3
    .venv/bin/python bench/loadgen.py reconnect --clients 2000 --runs 3

Every run starts its own servers (127.0.0.1, ports the OS picks, a fresh SQLite file) and
client worker processes, and stops them after. Progress goes to stderr; the results (the
medians of the runs against the targets, then per-run details) go to stdout as markdown,
and everything measured to --json-out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadkit.chat import ChatOptions, run_chat, run_chat_nodes
from bench.loadkit.handoff import HandoffOptions, run_handoff
from bench.loadkit.idle import IdleOptions, run_idle
from bench.loadkit.procstat import machine, raise_nofile, wait_for_quiet
from bench.loadkit.reconnect import ReconnectOptions, run_reconnect
from bench.loadkit.rig import BENCH_ENV, progress
from bench.loadkit.stats import check_target, fmt, markdown_table, median_runs

Target = tuple[str, str, float, bool]  # (headline key, label, limit, higher is better)

TARGETS: dict[str, list[Target]] = {
    "idle": [
        ("connections_open", "concurrent connections on one node", 10_000, True),
        ("rss_per_connection_kib", "RSS per idle connection (KiB)", 32.0, False),
    ],
    "chat": [
        ("throughput_ratio", "Warmline / ceiling delivered msgs/s", 0.6, True),
        ("warmline_probe_p99_ms", "p99 at half of saturation (ms)", 25.0, False),
    ],
    "chat-nodes": [("cross_over_single_p99", "p99 two nodes / one node, same rate", 2.0, False)],
    "handoff": [("all_assigned_s", "all conversations assigned (s)", 2.0, False)],
    "reconnect": [
        ("all_resumed_s", "all clients resumed (s)", 10.0, False),
        ("lost", "lost events", 0.0, False),
        ("duplicated", "duplicated events", 0.0, False),
    ],
}


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def parse_rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# Reports -------------------------------------------------------------------------------------
def targets_table(scenario: str, medians: dict[str, float], runs: list[dict[str, float]]) -> str:
    rows = []
    for key, label, limit, higher in TARGETS.get(scenario, []):
        value = medians.get(key, math.nan)
        rows.append([label, value, ("≥ " if higher else "≤ ") + fmt(limit),
                     "met" if check_target(value, limit, higher) else "MISSED"])
    return markdown_table(["target", "median", "goal", ""], rows)


def headline_table(medians: dict[str, float], runs: list[dict[str, float]]) -> str:
    headers = ["metric", *(f"run {i + 1}" for i in range(len(runs))), "median"]
    rows = [[key, *(run.get(key, math.nan) for run in runs), value]
            for key, value in medians.items()]
    return markdown_table(headers, rows)


def steps_table(result: dict[str, Any]) -> str:
    rows = []
    for step in [*result["steps"], *result["probes"]]:
        lat = step["latency_ms"]
        cpu = step["cpu_percent"]
        server = sum(v for k, v in cpu.items() if k.startswith("node") or k == "relay")
        clients = sum(v for k, v in cpu.items() if k.startswith("client"))
        rows.append([
            step["label"], step["conversations"], step["offered_per_s"], step["delivered_per_s"],
            lat["p50"], lat["p95"], lat["p99"], step["lost"], server,
            step["server_cpu_ms_per_msg"], cpu.get("redis", math.nan),
            clients, cpu.get("others", math.nan), "yes" if step["saturated"] else "",
        ])
    return markdown_table(
        ["", "conv.", "offered/s", "delivered/s", "p50 ms", "p95 ms", "p99 ms", "lost",
         "server cpu %", "server cpu ms/msg", "redis cpu %", "clients cpu %",
         "other procs cpu %", "saturated"],
        rows,
    )


def details(scenario: str, result: dict[str, Any]) -> str:
    if scenario == "chat":
        parts = [f"Warmline (one node):\n\n{steps_table(result['warmline'])}"]
        if "ceiling" in result:
            label = "Ceiling relay" + (", storing" if result.get("ceiling_store") else "")
            parts.append(f"{label}:\n\n{steps_table(result['ceiling'])}")
        return "\n\n".join(parts)
    if scenario == "chat-nodes":
        return (f"One node:\n\n{steps_table(result['single'])}\n\n"
                f"Two nodes through Redis:\n\n{steps_table(result['cross'])}")
    shown = {k: v for k, v in result.items() if k != "headline"}
    return "```json\n" + json.dumps(shown, indent=1, default=str)[:6000] + "\n```"


# Running -------------------------------------------------------------------------------------
async def run_many(
    scenario: str,
    runs: int,
    once: Callable[[], Awaitable[dict[str, Any]]],
    quiet_below: float = 0.0,
) -> list[dict[str, Any]]:
    results = []
    for index in range(runs):
        background = math.nan
        if quiet_below > 0:
            background, waited = await wait_for_quiet(quiet_below)
            progress(f"== machine busy {background:.0f}% before the run (waited {waited:.0f} s)")
        progress(f"== {scenario}: run {index + 1} of {runs}")
        started = time.monotonic()
        result = await once()
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["busy_before_percent"] = background
        results.append(result)
    return results


def build_runner(args: argparse.Namespace) -> Callable[[], Awaitable[dict[str, Any]]]:
    env = parse_env(args.env)
    if args.scenario == "idle":
        idle = IdleOptions(
            connections=args.connections, workers=args.workers, inline=args.inline,
            concurrency=args.concurrency, hold_s=args.hold, settle_s=args.settle,
            warmup_connections=args.warmup_connections, target=args.target,
            compression=args.compression, env=env,
        )
        return lambda: run_idle(idle)
    if args.scenario in ("chat", "chat-nodes"):
        chat = ChatOptions(
            rates=parse_rates(args.rates), max_rate_per_side=args.rate_per_side,
            workers=args.workers, inline=args.inline, warmup_s=args.warmup, measure_s=args.measure,
            drain_s=args.drain, probe_s=args.probe, p99_limit_ms=args.p99_limit, env=env,
            ceiling_store=getattr(args, "ceiling_store", False),
        )
        if args.scenario == "chat":
            return lambda: run_chat(chat, ceiling=not args.no_ceiling)
        return lambda: run_chat_nodes(chat)
    if args.scenario == "handoff":
        handoff = HandoffOptions(
            customers=args.customers, agents=args.agents, capacity=args.capacity,
            workers=args.workers, inline=args.inline, timeout_s=args.timeout, env=env,
        )
        return lambda: run_handoff(handoff)
    storm = ReconnectOptions(
        clients=args.clients, agents=args.agents, agent_rate=args.agent_rate,
        workers=args.workers, inline=args.inline, resume_timeout_s=args.timeout, env=env,
    )
    return lambda: run_reconnect(storm)


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    runs = [r["headline"] for r in results]
    medians = median_runs(runs)
    env = {**BENCH_ENV, **parse_env(args.env)}
    lines = [
        f"## {args.scenario}",
        "",
        f"Command: `{shlex.join(['.venv/bin/python', 'bench/loadgen.py', *sys.argv[1:]])}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()),
        "",
        "Server environment: " + " ".join(f"{k}={v}" for k, v in env.items()),
        "",
        targets_table(args.scenario, medians, runs),
        "",
        headline_table(medians, runs),
    ]
    for index, result in enumerate(results):
        title = f"### run {index + 1} ({result['wall_s']} s)"
        lines += ["", title, "", details(args.scenario, result)]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadgen", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", type=int, default=1, help="repeat, report medians (default 1)")
    common.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    common.add_argument("--inline", action="store_true", help="clients in this process")
    common.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra server environment, e.g. WARMLINE_HEARTBEAT_S=5")
    common.add_argument("--json-out", type=Path, help="write every measurement here")
    common.add_argument("--quiet-below", type=float, default=0.0, metavar="PERCENT",
                        help="on a shared machine: before each run, wait (up to 10 min) until "
                        "the machine's CPU use is below PERCENT (of one core)")
    sub = parser.add_subparsers(dest="scenario", required=True)

    idle = sub.add_parser("idle", parents=[common], help="N idle customers: RSS and CPU")
    idle.add_argument("--connections", type=int, default=10_000)
    idle.add_argument("--concurrency", type=int, default=100, help="connects in flight/worker")
    idle.add_argument("--hold", type=float, default=35.0, help="seconds held after connecting")
    idle.add_argument("--settle", type=float, default=3.0)
    idle.add_argument("--warmup-connections", type=int, default=200)
    idle.add_argument("--target", choices=("warmline", "relay"), default="warmline",
                      help="relay: the same against bench/ceiling_relay.py, for reference")
    idle.add_argument("--compression", action="store_true",
                      help="clients offer permessage-deflate, as browsers do")

    for name, text in (("chat", "chat to saturation, then the ceiling relay"),
                       ("chat-nodes", "chat on one node, then across two nodes via Redis")):
        chat = sub.add_parser(name, parents=[common], help=text)
        chat.add_argument("--rates", default="250,500,1000,1500,2000,3000,4000,6000,8000,12000",
                          help="offered msgs/s per step (both directions together)")
        chat.add_argument("--rate-per-side", type=float, default=4.0,
                          help="max msgs/s of one connection (server limit: 5/s sustained)")
        chat.add_argument("--warmup", type=float, default=2.0)
        chat.add_argument("--measure", type=float, default=6.0)
        chat.add_argument("--drain", type=float, default=5.0)
        chat.add_argument("--probe", type=float, default=10.0, help="seconds of each probe")
        chat.add_argument("--p99-limit", type=float, default=1000.0,
                          help="a step with a higher p99 (ms) counts as saturated")
        if name == "chat":
            chat.add_argument("--no-ceiling", action="store_true")
            chat.add_argument("--ceiling-store", action="store_true",
                              help="the ceiling relay commits every message to SQLite first")

    handoff = sub.add_parser("handoff", parents=[common], help="K customers ask for a human")
    handoff.add_argument("--customers", type=int, default=1000)
    handoff.add_argument("--agents", type=int, default=50)
    handoff.add_argument("--capacity", type=int, default=0, help="0: customers/agents")
    handoff.add_argument("--timeout", type=float, default=60.0)

    storm = sub.add_parser("reconnect", parents=[common], help="kill -9 a node holding N")
    storm.add_argument("--clients", type=int, default=2000)
    storm.add_argument("--agents", type=int, default=40)
    storm.add_argument("--agent-rate", type=float, default=4.0)
    storm.add_argument("--timeout", type=float, default=60.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_nofile()
    results = asyncio.run(
        run_many(args.scenario, args.runs, build_runner(args), args.quiet_below)
    )
    if args.json_out is not None:
        payload = {"scenario": args.scenario, "argv": sys.argv, "machine": machine(),
                   "env": {**BENCH_ENV, **parse_env(args.env)}, "runs": results}
        args.json_out.write_text(json.dumps(payload, indent=1, default=str))
    print(report(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
