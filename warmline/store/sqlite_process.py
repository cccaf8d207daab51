"""The SQLite writer process: a node's small writes, committed on another core.

Committing a chat message costs the event loop ~80-110 µs of SQLite work (BENCHMARKS.md,
sixth round), as much as everything else the node does for it. A thread would not help: it
shares the GIL, and its hand-offs cost more than they saved (third round). A process does:
the loop only pickles each batch of writes, sends it down a pipe and reads the outcomes back.

The process is the node's only connection writing chat messages, state changes and the
like, and it runs one batch at a time in the order sent, so the loop sees outcomes in the
order it queued the writes, as with inline writes. Heavy writes (documents, vectors,
administration) stay on the writer thread, which shares the file as another node would.

Frames both ways are a 4-byte big-endian length and a pickle. Down: a list of writes, each
a function of a `sqlite3.Connection` that pickles (a module-level function bound with
`functools.partial`). Up: first `("ready", pid)`, then per batch its outcomes, a list of
(True, result) or (False, error). The process exits when its input closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import signal
import sqlite3
import struct
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

from warmline.errors import Unavailable

log = logging.getLogger("warmline.store.sqlite")

FRAME_HEADER = struct.Struct("!I")
# How long a stopping process may take to finish its batch and close the database.
STOP_TIMEOUT_S = 10.0
Outcome = tuple[bool, Any]


class WriterProcessExited(Unavailable):
    """The writer process went away with a batch in flight: whether it was stored is
    unknown, so the caller resends it (chat messages are idempotent by client id)."""


class WriterProcess:
    """The loop's side: starts the process, sends it batches and matches its answers to
    them, and starts a new process when the last one went away."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._process: asyncio.subprocess.Process | None = None
        self._answers_task: asyncio.Task[None] | None = None
        # Batches sent and not yet answered, oldest first: the process answers in order.
        self._waiting: collections.deque[asyncio.Future[list[Outcome]]] = collections.deque()
        self.pid: int | None = None
        self.starts = 0

    async def start(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "warmline.store.sqlite_process",
            self.path,
            str(self.busy_timeout_ms),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._process = process
        try:
            hello = await _read_frame(process)
        except BaseException:
            await self._kill()
            raise
        if not (isinstance(hello, tuple) and hello[:1] == ("ready",)):
            await self._kill()
            raise Unavailable(f"the store's writer process said {hello!r} instead of ready")
        self.pid = int(hello[1])
        self.starts += 1
        self._answers_task = asyncio.create_task(
            self._read_answers(process), name="sqlite-writer-process-answers"
        )

    async def send(self, ops: Sequence[Any]) -> asyncio.Future[list[Outcome]]:
        """Send a batch; the future is its outcomes, one per write in order, or
        `WriterProcessExited` when the process went away before answering. Raises
        `Unavailable` when no process would start, and pickling errors for writes that do
        not pickle (before anything was sent)."""
        payload = pickle.dumps(list(ops), protocol=pickle.HIGHEST_PROTOCOL)
        if self._process is None or self._answers_task is None or self._answers_task.done():
            await self._kill()
            await self.start()
        process = self._process
        assert process is not None and process.stdin is not None
        answer: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._waiting.append(answer)
        process.stdin.write(FRAME_HEADER.pack(len(payload)) + payload)
        return answer

    async def run(self, ops: Sequence[Any]) -> list[Outcome]:
        return await (await self.send(ops))

    async def _read_answers(self, process: asyncio.subprocess.Process) -> None:
        try:
            while True:
                outcomes = await _read_frame(process)
                answer = self._waiting.popleft()
                if not answer.done():
                    answer.set_result(outcomes)
        except (ConnectionError, asyncio.IncompleteReadError, IndexError) as exc:
            # It exited (or answered what nobody asked): every batch still waiting may or
            # may not have been stored.
            error = WriterProcessExited(
                "the store's writer process exited; whether the write was stored is unknown"
            )
            error.__cause__ = exc
            self._fail_waiting(error)
        except BaseException:
            self._fail_waiting(Unavailable("store is closed"))
            raise

    def _fail_waiting(self, error: Exception) -> None:
        while self._waiting:
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_exception(error)

    async def stop(self) -> None:
        """Let the process answer what it has, then close the database and exit; kill it
        if it will not."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
            with contextlib.suppress(ConnectionError):
                await process.stdin.wait_closed()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("sqlite: the writer process %s did not stop; killing it", process.pid)
            process.kill()
            await process.wait()
        await self._stop_reading_answers()

    async def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        await self._stop_reading_answers()

    async def _stop_reading_answers(self) -> None:
        task, self._answers_task = self._answers_task, None
        if task is not None:
            # It ends by itself at the end of the pipe; cancelling covers a stuck read.
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _read_frame(process: asyncio.subprocess.Process) -> Any:
    assert process.stdout is not None
    (size,) = FRAME_HEADER.unpack(await process.stdout.readexactly(FRAME_HEADER.size))
    return pickle.loads(await process.stdout.readexactly(size))


# The process's side ------------------------------------------------------------------------


def _write_frame(out: BinaryIO, value: Any) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(FRAME_HEADER.pack(len(payload)) + payload)
    out.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    if len(data) < size:
        return None  # the node closed its end
    return data


def _picklable(outcomes: list[Outcome]) -> list[Outcome]:
    """Each outcome as is if it pickles, or as an error its caller can read."""
    checked: list[Outcome] = []
    for ok, value in outcomes:
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            value, ok = Unavailable(f"store write answered what cannot be sent back: {exc}"), False
        checked.append((ok, value))
    return checked


def serve(path: str, busy_timeout_ms: int, inbox: BinaryIO, outbox: BinaryIO) -> None:
    from warmline.store.sqlite import BatchHistory, connect_for_small_writes, run_batch

    db = connect_for_small_writes(path, busy_timeout_ms)
    history = BatchHistory()
    try:
        _write_frame(outbox, ("ready", os.getpid()))
        while (header := _read_exactly(inbox, FRAME_HEADER.size)) is not None:
            (size,) = FRAME_HEADER.unpack(header)
            payload = _read_exactly(inbox, size)
            if payload is None:
                break
            ops = pickle.loads(payload)
            try:
                outcomes = run_batch(db, ops, history, wait=True)
            except Exception as exc:  # the transaction itself failed: nothing was stored
                outcomes = [(False, Unavailable(f"store write failed: {exc}"))] * len(ops)
            try:
                _write_frame(outbox, outcomes)
            except Exception:  # a result or error that does not pickle; nothing was sent yet
                _write_frame(outbox, _picklable(outcomes))
    finally:
        db.close()


def main(argv: Sequence[str]) -> int:
    path, busy_timeout_ms = argv[0], int(argv[1])
    # The node stops this process by closing its input, after its last batch: a Ctrl-C or
    # a SIGTERM sent to the whole process group must not cut a batch short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inbox = os.fdopen(0, "rb", buffering=1 << 16)
    outbox = os.fdopen(1, "wb", buffering=1 << 16)
    # Nothing else may write to the pipe the frames go up.
    sys.stdout = sys.stderr
    try:
        serve(path, busy_timeout_ms, inbox, outbox)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    except sqlite3.Error as exc:
        print(f"warmline sqlite writer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
