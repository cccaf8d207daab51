"""Does one flooding customer slow the others down? Their p99 with and without a flooder.

    .venv/bin/python bench/flooder.py                  # limits on (the defaults)
    .venv/bin/python bench/flooder.py --unlimited      # also run with every limit off
    .venv/bin/python bench/flooder.py --customers 40 --seconds 10
    .venv/bin/python bench/flooder.py --unlimited --rounds 3   # medians, on a noisy machine

A real server (its own process, demo tenant) and, in this process, N ordinary customers that
each send a message every `--interval` seconds (well under the per-connection limit) and time
each one from send to its `ack` (the message is stored then). The flooder runs in a process of
its own, so its busy loop does not steal this process's event loop: it sends message and
typing frames as fast as the socket takes them, and counts what comes back.

Phases, each on a fresh server: ordinary customers alone; the same with one flooder; and with
`--unlimited`, the flood again with every rate limit switched off, to show what the limits buy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402

from tests.helpers.server import ServerProcess  # noqa: E402

QUESTIONS = (
    "How do I reset my password?",
    "Where is my order?",
    "Can I return a gift?",
    "Which payment methods do you take?",
)
UNLIMITED = {
    "WARMLINE_RATE_FRAME_PER_S": "0",
    "WARMLINE_RATE_MESSAGE_PER_S": "0",
    "WARMLINE_RATE_TYPING_PER_S": "0",
    "WARMLINE_RATE_TENANT_MESSAGE_PER_S": "0",
    "WARMLINE_RATE_TENANT_CONVERSATION_PER_S": "0",
    "WARMLINE_RATE_IP_CONNECT_PER_S": "0",
}
# The bench opens every connection from one address.
BENCH_ENV = {"WARMLINE_RATE_IP_CONNECT_BURST": "10000"}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# The ordinary customers ---------------------------------------------------------------------
async def customer(url: str, interval_s: float, until: float, index: int) -> list[float]:
    latencies: list[float] = []
    async with websockets.connect(url, max_size=None, max_queue=None) as ws:
        await ws.send(json.dumps({"type": "hello", "tenant": "demo", "ref": "h"}))
        while json.loads(await ws.recv()).get("type") != "welcome":
            pass
        sent: dict[str, float] = {}
        answered = asyncio.Event()  # set whenever nothing is outstanding
        counter = 0
        # Spread the customers over the interval so they do not all send at once.
        next_at = time.monotonic() + interval_s * (index % 10) / 10

        async def reader() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") in ("ack", "error") and frame.get("ref") in sent:
                    started = sent.pop(frame["ref"])
                    if frame["type"] == "ack":
                        latencies.append(time.perf_counter() - started)
                    if not sent:
                        answered.set()

        task = asyncio.create_task(reader())
        try:
            while time.monotonic() < until:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval_s
                counter += 1
                ref = f"m{counter}"
                sent[ref] = time.perf_counter()
                text = QUESTIONS[counter % len(QUESTIONS)]
                await ws.send(json.dumps({"type": "message", "id": ref, "text": text, "ref": ref}))
            if sent:
                answered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return latencies


async def ordinary(url: str, customers: int, seconds: float, interval_s: float) -> list[float]:
    until = time.monotonic() + seconds
    results = await asyncio.gather(*(customer(url, interval_s, until, i) for i in range(customers)))
    return [latency for result in results for latency in result]


# The flooder (its own process) --------------------------------------------------------------
async def flood(url: str, seconds: float) -> dict[str, Any]:
    counts: dict[str, int] = {"sent": 0}
    async with websockets.connect(url, max_size=None, max_queue=None) as ws:
        await ws.send(json.dumps({"type": "hello", "tenant": "demo"}))
        while json.loads(await ws.recv()).get("type") != "welcome":
            pass

        async def reader() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                key = frame.get("code") or frame.get("type")
                counts[key] = counts.get(key, 0) + 1

        task = asyncio.create_task(reader())
        until = time.monotonic() + seconds
        try:
            while time.monotonic() < until:
                n = counts["sent"]
                frame: dict[str, Any] = (
                    {"type": "typing", "on": bool(n % 2)}
                    if n % 2
                    else {"type": "message", "id": f"f{n}", "text": f"flood {n}", "ref": f"f{n}"}
                )
                await ws.send(json.dumps(frame))
                counts["sent"] += 1
        except websockets.ConnectionClosed as closed:
            counts[f"closed_{closed.rcvd.code if closed.rcvd else 'none'}"] = 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return counts


def start_flooder(url: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--flood", url, "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


# Phases -----------------------------------------------------------------------------------------
def summary(name: str, latencies: list[float], flooder: dict[str, Any] | None) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    row: dict[str, Any] = {
        "phase": name,
        "acks": len(ms),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
    }
    if flooder is not None:
        row["flooder"] = flooder
    return row


async def phase(
    name: str, env: dict[str, str], args: argparse.Namespace, with_flooder: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "bench.db", env={**BENCH_ENV, **env})
        with server:
            url = server.ws_url()
            # Warm up (first retrieval builds the index) before measuring anything.
            await ordinary(url, 2, 1.0, 0.25)
            flooder = start_flooder(url, args.seconds + 1) if with_flooder else None
            try:
                latencies = await ordinary(url, args.customers, args.seconds, args.interval)
            finally:
                report = None
                if flooder is not None:
                    out, _ = await asyncio.to_thread(flooder.communicate, None, 60)
                    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    return summary(name, latencies, report)


async def main(args: argparse.Namespace) -> None:
    phases = [("no flooder", {}, False), ("one flooder, limits on", {}, True)]
    if args.unlimited:
        phases.append(("one flooder, limits off", UNLIMITED, True))
    print(
        f"{args.customers} customers, one message every {args.interval}s each, "
        f"{args.seconds}s per phase; latency = message sent -> ack (stored)"
    )
    p99s: dict[str, list[float]] = {name: [] for name, _, _ in phases}
    # Rounds interleave the phases, so a busy neighbour on the machine hits them alike.
    for round_ in range(1, args.rounds + 1):
        for name, env, with_flooder in phases:
            row = await phase(name, env, args, with_flooder)
            flooder = row.pop("flooder", None)
            print(json.dumps({"round": round_, **row}), flush=True)
            if flooder is not None:
                print("   flooder:", json.dumps(flooder), flush=True)
            p99s[name].append(row["p99_ms"])
    if args.rounds > 1:
        for name, values in p99s.items():
            median = statistics.median(values)
            print(f"median p99 over {args.rounds} rounds, {name}: {median:.2f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--unlimited", action="store_true", help="also flood with limits off")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every phase, interleaved")
    parser.add_argument("--flood", metavar="WS_URL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.flood:
        print(json.dumps(asyncio.run(flood(arguments.flood, arguments.seconds))), flush=True)
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        asyncio.run(main(arguments))
