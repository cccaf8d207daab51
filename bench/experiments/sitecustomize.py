"""Opt-in experiments on a running Warmline node, to size suggested fixes before anyone
edits the server: nothing here is imported unless a benchmark passes
`--env PYTHONPATH=bench/experiments` (run from the repository root) and one of these:

    WL_EXP_QUEUE_EVERY_S=0.5   publish a tenant's queue frames at most every 0.5 s
    WL_EXP_ENCODE_ONCE=1       encode a frame once for all the connections it goes to
    WL_EXP_STATE_CACHE=1       memoize the pure state machine's next_state
    WL_EXP_NO_METRICS=1        skip the per-frame Prometheus updates
    WL_EXP_INLINE_READS=1      run store reads on the event loop thread (no thread hop)
    WL_EXP_INLINE_STORE=1      run every store call on the event loop thread (no threads;
                               single node only: a write could wait on another node's lock)
    WL_EXP_SWITCH_INTERVAL=S   sys.setswitchinterval(S) (GIL hand-over between threads)
    WL_EXP_CPROFILE=FILE       cProfile the event loop thread (CPU time with WL_EXP_CPU=1);
                               written when the node stops
    WL_EXP_TRACEMALLOC=PREFIX  tracemalloc; each SIGUSR1 dumps a snapshot to PREFIX.<n>

Python imports `sitecustomize` at start-up from PYTHONPATH; only the `warmline` server
process acts on it. Results obtained this way are labelled as experiments in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any

ACTIVE = "warmline.cli" in " ".join(getattr(sys, "orig_argv", []))


def _queue_every(seconds: float) -> None:
    import asyncio

    from presence import dispatcher

    original = dispatcher.Dispatcher.publish_queue

    async def publish_queue(self: Any, tenant: str) -> None:
        # Triggers that arrive meanwhile coalesce into this one run.
        await asyncio.sleep(seconds)
        await original(self, tenant)

    dispatcher.Dispatcher.publish_queue = publish_queue  # type: ignore[method-assign]


def _encode_once() -> None:
    from realtime import connection, protocol

    original = protocol.encode
    cache: dict[tuple[int, bool], tuple[Any, str | bytes]] = {}

    def encode(frame: dict[str, Any], binary: bool) -> str | bytes:
        key = (id(frame), binary)
        hit = cache.get(key)
        if hit is not None and hit[0] is frame:
            return hit[1]
        payload = original(frame, binary)
        if len(cache) > 256:
            cache.clear()
        cache[key] = (frame, payload)
        return payload

    async def outgoing(self: Any, message: dict[str, Any]) -> dict[str, Any] | None:
        kind = message.get("type")
        if message.get("_origin") == self.id or (isinstance(kind, str) and kind.startswith("_")):
            return None
        if not any(k.startswith("_") for k in message):
            return message  # the very object every subscriber got: encoded once
        return {k: v for k, v in message.items() if not k.startswith("_")}

    protocol.encode = encode
    connection.Connection.outgoing = outgoing  # type: ignore[method-assign]


def _state_cache() -> None:
    from statemachine import machine
    from warmline import conversations

    cached = functools.lru_cache(maxsize=1024)(machine.next_state)
    machine.next_state = cached
    conversations.next_state = cached


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


def _inline_store() -> None:
    import asyncio

    from warmline.store import sqlite as store

    def run_inline(conn: Any, fn: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        return future

    store._run_in_connection_thread = run_inline


def _cprofile(path: str) -> None:
    import cProfile
    import time

    profiler = cProfile.Profile(time.thread_time) if os.environ.get("WL_EXP_CPU") else (
        cProfile.Profile()
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


if ACTIVE:
    if os.environ.get("WL_EXP_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["WL_EXP_SWITCH_INTERVAL"]))
    if os.environ.get("WL_EXP_CPROFILE"):
        _cprofile(os.environ["WL_EXP_CPROFILE"])
    if os.environ.get("WL_EXP_TRACEMALLOC"):
        _tracemalloc(os.environ["WL_EXP_TRACEMALLOC"])
    if os.environ.get("WL_EXP_QUEUE_EVERY_S"):
        _queue_every(float(os.environ["WL_EXP_QUEUE_EVERY_S"]))
    if os.environ.get("WL_EXP_ENCODE_ONCE"):
        _encode_once()
    if os.environ.get("WL_EXP_STATE_CACHE"):
        _state_cache()
    if os.environ.get("WL_EXP_NO_METRICS"):
        _no_metrics()
    if os.environ.get("WL_EXP_INLINE_READS"):
        _inline_reads()
    if os.environ.get("WL_EXP_INLINE_STORE"):
        _inline_store()
