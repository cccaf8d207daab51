"""Store write throughput and latency: SQLite (group commit) beside PostgreSQL (pool).

Two scenarios, each writer one conversation working back to back while the others do the same:

- `append`: the chat's write path alone, `append_message` with a client id (gap-free seq,
  idempotency check). One op = one append.
- `chat`: what the store sees of one chat exchange: the customer's message, the delivering
  node reading it back (`events_after`, as a subscriber filling a gap does) and the bot's
  answer, refused unless the bot still owns the conversation. One op = one exchange.
 "Nodes" are separate Store instances over the same data, as separate
server processes would have; their writers are spread evenly over them. Optionally every
writer shares a few hot conversations instead (`--hot N`), the worst case for row locks.

    .venv/bin/python bench/store_bench.py                    # everything, default grid
    .venv/bin/python bench/store_bench.py --scenarios chat --writers 1,32 --nodes 2
    .venv/bin/python bench/store_bench.py --pg postgresql://user@db.example/postgres

PostgreSQL: `--pg` (default $WARMLINE_BENCH_POSTGRES_URL, else the local server) names an
administrative database; the benchmark creates a scratch database beside it and drops it.
Every run checks afterwards that each conversation's seq is gap-free.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warmline.store.base import MessageRequest, Store
from warmline.store.postgres import PostgresStore
from warmline.store.sqlite import SQLiteStore

DEFAULT_PG = os.environ.get(
    "WARMLINE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AUTHOR = {"role": "customer", "id": "bench", "name": "Bench"}
BOT = {"role": "bot", "id": "bot", "name": "Bot"}
BOT_STATES = frozenset({"bot", "confused"})


@dataclass(frozen=True)
class Result:
    backend: str
    scenario: str
    nodes: int
    writers: int
    conversations: int
    appends: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index]


class Target:
    """Where the data lives for one run: a scratch SQLite file or PostgreSQL database."""

    def __init__(self, backend: str, admin_url: str, directory: Path) -> None:
        self.backend = backend
        self.admin_url = admin_url
        self.directory = directory
        self.database = f"warmline_bench_{uuid.uuid4().hex[:10]}"
        self.path = directory / f"{self.database}.db"

    @property
    def url(self) -> str:
        return urlunsplit(urlsplit(self.admin_url)._replace(path="/" + self.database))

    async def __aenter__(self) -> Target:
        if self.backend == "postgres":
            import asyncpg

            admin = await asyncpg.connect(self.admin_url, timeout=5)
            try:
                await admin.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                await admin.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.backend == "postgres":
            import asyncpg

            admin = await asyncpg.connect(self.admin_url, timeout=5)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await admin.close()
        else:
            for file in self.directory.glob(self.path.name + "*"):
                file.unlink()

    def store(self, pool_size: int, pg_sync: str) -> Store:
        if self.backend == "postgres":
            # synchronous_commit goes to the server as a session setting, as in a real URL.
            return PostgresStore(
                f"{self.url}?pool_max_size={pool_size}&synchronous_commit={pg_sync}"
            )
        return SQLiteStore(str(self.path))


async def run_one(
    backend: str,
    admin_url: str,
    directory: Path,
    nodes: int,
    writers: int,
    seconds: float,
    hot: int,
    pool_size: int,
    pg_sync: str,
    scenario: str,
) -> Result:
    async with Target(backend, admin_url, directory) as target:
        stores = [target.store(pool_size, pg_sync) for _ in range(nodes)]
        for store in stores:
            await store.open()
        try:
            tenant = f"bench-{uuid.uuid4().hex[:6]}"
            await stores[0].add_tenant(tenant)
            count = hot or writers
            conversations = [(await stores[0].create_conversation(tenant)).id
                             for _ in range(count)]
            latencies: list[float] = []
            appends = 0
            start_line = asyncio.Event()
            all_warm = asyncio.Event()
            warmed = 0
            deadline = 0.0

            async def writer(index: int) -> None:
                nonlocal appends, warmed
                store = stores[index % nodes]
                conversation = conversations[index % count]
                # Warm up: open connections and prepare statements outside the measurement.
                await store.append_message(
                    MessageRequest(conversation, f"w{index}-warm", AUTHOR, "warm up")
                )
                warmed += 1
                if warmed == writers:
                    all_warm.set()
                await start_line.wait()
                i = 0
                reader = stores[(index + 1) % nodes]  # delivery happens on another node
                seen = 0
                while time.perf_counter() < deadline:
                    began = time.perf_counter()
                    await store.append_message(
                        MessageRequest(conversation, f"w{index}-{i}", AUTHOR, f"message {i}")
                    )
                    if scenario == "chat":
                        events = await reader.events_after(conversation, seen)
                        seen = events[-1].seq if events else seen
                        await store.append_message(
                            MessageRequest(conversation, f"w{index}-{i}", BOT, f"answer {i}",
                                           allowed_states=BOT_STATES)
                        )
                    latencies.append((time.perf_counter() - began) * 1000)
                    appends += 1
                    i += 1

            tasks = [asyncio.create_task(writer(i)) for i in range(writers)]
            await all_warm.wait()  # everyone starts together, warmed up
            began = time.perf_counter()
            deadline = began + seconds
            start_line.set()
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - began

            for c in conversations:  # the point of the exercise: still gap-free
                got = [e.seq for e in await stores[-1].events_after(c, 0, limit=10**9)]
                if got != list(range(1, len(got) + 1)):
                    raise SystemExit(f"{backend}: seq gap in {c}")
            label = backend if backend == "sqlite" else f"postgres sync={pg_sync}"
            return Result(label, scenario, nodes, writers, count, appends, elapsed, latencies)
        finally:
            for store in stores:
                await store.close()


def table(results: list[Result]) -> str:
    header = ("scenario", "backend", "nodes", "writers", "convs", "ops", "ops/s", "p50 ms",
              "p99 ms")
    rows = [
        (r.scenario, r.backend, str(r.nodes), str(r.writers), str(r.conversations), str(r.appends),
         f"{r.rate:,.0f}", f"{r.percentile(50):.2f}", f"{r.percentile(99):.2f}")
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="append,chat")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--writers", default="1,16,64", help="comma-separated grid")
    parser.add_argument("--nodes", default="1,2", help="comma-separated grid")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--hot", type=int, default=0,
                        help="all writers share this many conversations (0: one each)")
    parser.add_argument("--pool-size", type=int, default=10, help="PostgreSQL pool per node")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument(
        "--pg-sync", default="on,off",
        help="synchronous_commit settings to run PostgreSQL with: 'on' (the default; fsync "
             "per commit) and 'off' (a crash may lose the last few commits, never corrupts: "
             "what SQLite's synchronous=NORMAL in WAL mode promises)",
    )
    args = parser.parse_args(argv)

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="warmline-bench-") as tmp:
        runs = [
            (backend, sync)
            for backend in args.backends.split(",")
            for sync in (args.pg_sync.split(",") if backend == "postgres" else ["-"])
        ]
        grid = [
            (scenario, backend, sync, int(nodes), int(writers))
            for scenario in args.scenarios.split(",")
            for backend, sync in runs
            for nodes in args.nodes.split(",")
            for writers in args.writers.split(",")
        ]
        for scenario, backend, sync, nodes, writers in grid:
            result = await run_one(backend, args.pg, Path(tmp), nodes, writers, args.seconds,
                                   args.hot, args.pool_size, sync, scenario)
            results.append(result)
            print(f"  {scenario:6} {result.backend:17} nodes={nodes} writers={writers:<3} "
                  f"{result.rate:9,.0f} ops/s  p50 {result.percentile(50):.2f} ms  "
                  f"p99 {result.percentile(99):.2f} ms  "
                  f"(mean {statistics.fmean(result.latencies_ms):.2f} ms)",
                  file=sys.stderr)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
