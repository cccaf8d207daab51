"""Client workers: the same `Worker` class run in separate processes or inline.

A scenario module defines `class Worker` whose `cmd_<name>` coroutines are the commands the
controller sends. In a process, commands arrive over a pipe and run on that process's own
event loop (uvloop when installed), so clients use their own CPU; inline (for the fast smoke
tests) they run on the controller's loop. Both have the same `call` interface.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from bench.loadkit.procstat import raise_nofile

Args = dict[str, Any]


class WorkerError(RuntimeError):
    pass


class ScenarioWorker(Protocol):
    async def close(self) -> None: ...


class Workers(Protocol):
    count: int
    pids: list[int]

    async def call(
        self, command: str, args: Args | Sequence[Args], timeout_s: float
    ) -> list[Any]: ...

    async def close(self) -> None: ...


def _per_worker(args: Args | Sequence[Args], count: int) -> list[Args]:
    if isinstance(args, dict):
        return [args] * count
    if len(args) != count:
        raise ValueError(f"{len(args)} argument sets for {count} workers")
    return list(args)


def _make_worker(module: str, index: int) -> ScenarioWorker:
    worker: ScenarioWorker = importlib.import_module(module).Worker(index)
    return worker


async def _run_command(worker: ScenarioWorker, command: str, args: Args) -> Any:
    method = getattr(worker, "cmd_" + command, None)
    if method is None:
        raise WorkerError(f"{type(worker).__name__} has no command {command!r}")
    return await method(**args)


class InlineWorkers:
    """Workers on the caller's event loop: no processes, for tests and tiny runs."""

    def __init__(self, module: str, count: int) -> None:
        self.count = count
        self.pids: list[int] = []
        self._workers = [_make_worker(module, i) for i in range(count)]

    async def call(
        self, command: str, args: Args | Sequence[Args], timeout_s: float
    ) -> list[Any]:
        per = _per_worker(args, self.count)
        calls = (_run_command(w, command, a) for w, a in zip(self._workers, per, strict=True))
        return list(await asyncio.wait_for(asyncio.gather(*calls), timeout_s))

    async def close(self) -> None:
        for worker in self._workers:
            await worker.close()


class ProcessWorkers:
    """One process per worker (spawned, not forked: the controller has threads and a loop)."""

    def __init__(self, module: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = count
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        for index in range(count):
            parent, child = context.Pipe()
            proc = context.Process(
                target=child_main, args=(child, module, index), name=f"loadgen-{index}", daemon=True
            )
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)
        self.pids = [int(p.pid) for p in self._procs]

    async def _call_one(
        self, pipe: Connection, command: str, args: Args, timeout_s: float
    ) -> Any:
        pipe.send({"cmd": command, "args": args})
        reply = await asyncio.wait_for(asyncio.to_thread(pipe.recv), timeout_s)
        if not reply["ok"]:
            raise WorkerError(f"worker command {command!r} failed:\n{reply['error']}")
        return reply["result"]

    async def call(
        self, command: str, args: Args | Sequence[Args], timeout_s: float
    ) -> list[Any]:
        per = _per_worker(args, self.count)
        calls = (
            self._call_one(p, command, a, timeout_s)
            for p, a in zip(self._pipes, per, strict=True)
        )
        return list(await asyncio.gather(*calls))

    async def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send({"cmd": "_exit", "args": {}})
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 15)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
        for pipe in self._pipes:
            pipe.close()


def open_workers(module: str, count: int, inline: bool = False) -> Workers:
    return InlineWorkers(module, count) if inline else ProcessWorkers(module, count)


# The child side ------------------------------------------------------------------------------
def child_main(pipe: Connection, module: str, index: int) -> None:
    raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_child_loop(pipe, module, index))
    else:
        uvloop.run(_child_loop(pipe, module, index))


async def _child_loop(pipe: Connection, module: str, index: int) -> None:
    worker = _make_worker(module, index)
    try:
        while True:
            try:
                message = await asyncio.to_thread(pipe.recv)
            except EOFError:
                return  # the controller went away
            if message["cmd"] == "_exit":
                return
            try:
                result = await _run_command(worker, message["cmd"], message["args"])
                pipe.send({"ok": True, "result": result})
            except Exception:
                pipe.send({"ok": False, "error": traceback.format_exc()})
    finally:
        await worker.close()
