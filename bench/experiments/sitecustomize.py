"""Opt-in experiments on a running Warmline node, to size suggested fixes before anyone
edits the server: nothing here is imported unless a benchmark passes
`--env PYTHONPATH=bench/experiments` (run from the repository root) and one of these:

    WL_EXP_NO_METRICS=1        skip the per-frame Prometheus updates
    WL_EXP_INLINE_READS=1      run store reads on the event loop thread (no thread hop)
    WL_EXP_SWITCH_INTERVAL=S   sys.setswitchinterval(S) (GIL hand-over between threads)
    WL_EXP_CPROFILE=FILE       cProfile the event loop thread (CPU time with WL_EXP_CPU=1);
                               written when the node stops
    WL_EXP_TRACEMALLOC=PREFIX  tracemalloc; each SIGUSR1 dumps a snapshot to PREFIX.<n>
    WL_EXP_CHECKPOINT_EVERY=N  checkpoint the SQLite WAL every N inline writes instead of the
                               store's CHECKPOINT_EVERY_WRITES
    WL_EXP_MMAP=BYTES          PRAGMA mmap_size on the loop's own SQLite connection
    WL_EXP_NO_CLIENT_KEY_INDEX=1
                               drop the idempotency index (events_client_key) and store
                               every chat message without looking for a resend: unsafe, the
                               most any cheaper idempotency key could save per message
    WL_EXP_NULL_APPEND=1       after a conversation's first real message, keep the rest of
                               its messages in memory only (what the chat benchmark would
                               deliver with a store that cost nothing per message)
    WL_EXP_STORE_CLOCK=FILE    every 2 s, the loop thread's CPU and wall time inside inline
                               SQLite batches per write, appended to FILE as JSON lines
    WL_EXP_STALLS=FILE         a watchdog thread logs every event-loop stall over 20 ms (with
                               the loop thread's stack, sampled during the stall), every
                               cycle collection over 5 ms, and every 2 s the collections per
                               generation and the store's counters (batches, writes, inline
                               batches that met the lock taken, checkpoints), to FILE, one
                               JSON line each with the node's pid (nodes may share FILE);
                               WL_EXP_GC=T0,T1,T2 sets the collector's
                               thresholds after the server's own

Python imports `sitecustomize` at start-up from PYTHONPATH; only the `warmline` server
process acts on it. Results obtained this way are labelled as experiments in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

ACTIVE = "warmline.cli" in " ".join(getattr(sys, "orig_argv", []))


def _no_metrics() -> None:
    from warmline import runtime

    for name in ("metrics_frame_in", "metrics_frame_out", "metrics_delivered"):
        setattr(runtime.Runtime, name, lambda self, *args: None)


def _inline_reads() -> None:
    import sqlite3

    from warmline.errors import Unavailable
    from warmline.store import sqlite as store

    async def _read(self: Any, fn: Any) -> Any:
        # Point reads in WAL mode take microseconds and never wait for the writer.
        if self._reader is None:
            raise Unavailable("store is closed")
        try:
            return fn(self._raw(self._reader))
        except sqlite3.Error as exc:
            raise Unavailable(f"store read failed: {exc}") from exc

    store.SQLiteStore._read = _read  # type: ignore[method-assign]


def _on_inline_connection(statement: str) -> None:
    """Run `statement` on the loop's own SQLite connection as soon as the store opens it."""
    from warmline.store import sqlite as store

    connect_inline = store.SQLiteStore._connect_inline

    def _connect_inline(self: Any) -> Any:
        db = connect_inline(self)
        db.execute(statement)
        return db

    store.SQLiteStore._connect_inline = _connect_inline  # type: ignore[method-assign]


def _no_client_key_index() -> None:
    from warmline.store import sqlite as store

    _on_inline_connection("DROP INDEX IF EXISTS events_client_key")
    store._INSERT_MESSAGE_ONCE = store._INSERT_MESSAGE


def _cprofile(path: str) -> None:
    import cProfile
    import time

    profiler = (
        cProfile.Profile(time.thread_time) if os.environ.get("WL_EXP_CPU") else (cProfile.Profile())
    )
    profiler.enable()
    done: list[bool] = []

    def dump() -> None:
        if not done:
            done.append(True)
            profiler.disable()
            profiler.dump_stats(path)

    # uvicorn re-raises SIGTERM after its graceful shutdown, so atexit alone never runs.
    original_raise = signal.raise_signal

    def raise_signal(signum: int) -> None:
        dump()
        original_raise(signum)

    signal.raise_signal = raise_signal
    import atexit

    atexit.register(dump)


def _tracemalloc(prefix: str) -> None:
    import tracemalloc

    tracemalloc.start(12)
    count = [0]

    def snapshot(signum: int, frame: Any) -> None:
        count[0] += 1
        tracemalloc.take_snapshot().dump(f"{prefix}.{count[0]}")

    signal.signal(signal.SIGUSR1, snapshot)


def _stalls(path: str) -> None:
    import gc
    import json
    import threading
    import time
    import traceback

    import uvicorn

    out = open(path, "a", buffering=1)  # the watchdog writes to it until the process ends
    last_tick = [time.monotonic()]
    main_ident = threading.main_thread().ident
    gc_started = [0.0]
    # Per generation: collections, total ms, worst ms (summed into one line every 2 s).
    gc_totals = {g: [0, 0.0, 0.0] for g in range(3)}

    def write(record: dict[str, Any]) -> None:
        record["t"] = time.monotonic()
        record["pid"] = os.getpid()
        out.write(json.dumps(record) + "\n")

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
            return
        took = time.perf_counter() - gc_started[0]
        totals = gc_totals[info["generation"]]
        totals[0] += 1
        totals[1] += took * 1000
        totals[2] = max(totals[2], took * 1000)
        if took > 0.005:
            write(
                {
                    "gc": info["generation"],
                    "ms": round(took * 1000, 1),
                    "collected": info["collected"],
                }
            )

    gc.callbacks.append(on_gc)

    def tick() -> None:
        last_tick[0] = time.monotonic()

    def watchdog() -> None:
        in_stall: list[str] = []
        started = 0.0
        next_summary = time.monotonic() + 2.0
        while True:
            time.sleep(0.005)
            if time.monotonic() >= next_summary:
                next_summary += 2.0
                store_counts = [
                    (store.batches, store.batched_writes, store.inline_busy, store.checkpoints)
                    for store in stores
                ]
                write(
                    {
                        "gc_summary": {
                            g: [n, round(ms, 1), round(worst, 1)]
                            for g, (n, ms, worst) in gc_totals.items()
                        },
                        "store_batches_writes_busy_checkpoints": store_counts,
                    }
                )
                for totals in gc_totals.values():
                    totals[:] = [0, 0.0, 0.0]
            lag = time.monotonic() - last_tick[0]
            if lag > 0.02:
                if not in_stall:
                    started = last_tick[0]
                if len(in_stall) < 8:
                    frame = sys._current_frames().get(main_ident)  # type: ignore[arg-type]
                    stack = "".join(traceback.format_stack(frame, limit=12)) if frame else ""
                    in_stall.append(f"+{(time.monotonic() - started) * 1000:.0f}ms\n{stack}")
            elif in_stall:
                write(
                    {"stall_ms": round((last_tick[0] - started) * 1000, 1), "samples": in_stall[:]}
                )
                in_stall.clear()

    from warmline.store import sqlite as sqlite_store

    stores: list[Any] = []
    original_open = sqlite_store.SQLiteStore.open

    async def open_store(self: Any) -> None:
        stores.append(self)
        await original_open(self)

    sqlite_store.SQLiteStore.open = open_store  # type: ignore[method-assign]
    original_startup = uvicorn.Server.startup

    async def startup(self: Any, sockets: Any = None) -> None:
        import asyncio

        loop = asyncio.get_running_loop()

        def ticker() -> None:
            tick()
            loop.call_later(0.002, ticker)

        loop.call_soon(ticker)
        if os.environ.get("WL_EXP_GC"):
            gc.set_threshold(*(int(v) for v in os.environ["WL_EXP_GC"].split(",")))
        write({"gc_threshold": gc.get_threshold()})
        threading.Thread(target=watchdog, daemon=True, name="stall-watchdog").start()
        await original_startup(self, sockets)

    uvicorn.Server.startup = startup  # type: ignore[method-assign]


def _null_append() -> None:
    import time

    from warmline.models import Event
    from warmline.store import base
    from warmline.store import sqlite as sqlite_store
    from warmline.store.rules import message_event_data, message_id_for

    original = sqlite_store.SQLiteStore.append_message
    known: dict[str, list[Any]] = {}

    async def append_message(self: Any, request: Any) -> Any:
        seen = known.get(request.conversation_id)
        if seen is None:
            appended = await original(self, request)
            known[request.conversation_id] = [appended.event.seq, appended.state]
            return appended
        seen[0] += 1
        data = message_event_data(request, message_id_for(request))
        event = Event(request.conversation_id, seen[0], time.time(), "message", data)
        return base.AppendedMessage(event, True, seen[1])

    sqlite_store.SQLiteStore.append_message = append_message  # type: ignore[method-assign]


def _store_clock(path: str) -> None:
    import json
    import threading
    import time

    from warmline.store import sqlite as sqlite_store

    original = sqlite_store.SQLiteStore._run_batch
    totals = {"cpu": 0.0, "wall": 0.0, "writes": 0, "batches": 0}
    last = [time.monotonic()]

    def run_batch(self: Any, db: Any, batch: Any, wait: bool = False) -> Any:
        if db is not self._inline:
            return original(self, db, batch, wait)
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            return original(self, db, batch, wait)
        finally:
            totals["cpu"] += time.thread_time() - c0
            totals["wall"] += time.perf_counter() - w0
            totals["writes"] += len(batch)
            totals["batches"] += 1
            now = time.monotonic()
            if now - last[0] >= 2.0 and totals["writes"]:
                line = {
                    "pid": os.getpid(),
                    "writes_per_s": totals["writes"] / (now - last[0]),
                    "cpu_us_per_write": 1e6 * totals["cpu"] / totals["writes"],
                    "wall_us_per_write": 1e6 * totals["wall"] / totals["writes"],
                    "writes_per_batch": totals["writes"] / totals["batches"],
                    "thread": threading.get_ident(),
                }
                with open(path, "a") as out:
                    out.write(json.dumps(line) + "\n")
                totals.update(cpu=0.0, wall=0.0, writes=0, batches=0)
                last[0] = now

    sqlite_store.SQLiteStore._run_batch = run_batch  # type: ignore[method-assign]


if ACTIVE:
    if os.environ.get("WL_EXP_STORE_CLOCK"):
        _store_clock(os.environ["WL_EXP_STORE_CLOCK"])
    if os.environ.get("WL_EXP_NULL_APPEND"):
        _null_append()
    if os.environ.get("WL_EXP_STALLS"):
        _stalls(os.environ["WL_EXP_STALLS"])
    if os.environ.get("WL_EXP_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["WL_EXP_SWITCH_INTERVAL"]))
    if os.environ.get("WL_EXP_CPROFILE"):
        _cprofile(os.environ["WL_EXP_CPROFILE"])
    if os.environ.get("WL_EXP_TRACEMALLOC"):
        _tracemalloc(os.environ["WL_EXP_TRACEMALLOC"])
    if os.environ.get("WL_EXP_NO_METRICS"):
        _no_metrics()
    if os.environ.get("WL_EXP_INLINE_READS"):
        _inline_reads()
    if os.environ.get("WL_EXP_NO_CLIENT_KEY_INDEX"):
        _no_client_key_index()
    if os.environ.get("WL_EXP_MMAP"):
        _on_inline_connection(f"PRAGMA mmap_size = {int(os.environ['WL_EXP_MMAP'])}")
    if os.environ.get("WL_EXP_CHECKPOINT_EVERY"):
        from warmline.store import sqlite as _sqlite_store

        _sqlite_store.CHECKPOINT_EVERY_WRITES = int(os.environ["WL_EXP_CHECKPOINT_EVERY"])
