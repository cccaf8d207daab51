"""The SQLite writer process: small writes committed in a process of their own.

The store contract suite runs against this mode too (the `sqlite-process` backend in
conftest.py); these tests cover what only it has: another process doing the writes, one
that dies mid-batch, writes or answers that cannot cross the pipe, and stopping cleanly.
A whole customer journey runs in this mode in tests/realtime/test_journey.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess
from warmline.config import Config
from warmline.errors import NotFound, Unavailable
from warmline.store import open_store
from warmline.store.base import MessageRequest
from warmline.store.sqlite import SQLiteStore
from warmline.store.sqlite_process import WriterProcessExited

CUSTOMER = {"role": "customer", "id": "cust-1", "name": "Customer"}


def _die_mid_batch(db: sqlite3.Connection) -> None:
    """A write that takes the writer process down with the transaction still open."""
    os._exit(3)


def _answer_with_a_function(db: sqlite3.Connection) -> object:
    return lambda: None  # stored nothing, and its answer does not pickle


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "warmline.db"), writer_process=True)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def message(conversation_id: str, client_id: str, text: str = "hello") -> MessageRequest:
    return MessageRequest(conversation_id, client_id, CUSTOMER, text)


async def test_small_writes_commit_in_another_process(store: SQLiteStore) -> None:
    await store.add_tenant("t1")  # administration: the writer thread, as in the loop mode
    conversation = await store.create_conversation("t1")
    appended = await asyncio.gather(
        *(store.append_message(message(conversation.id, f"m{i}", str(i))) for i in range(10))
    )
    assert [a.event.seq for a in appended] == list(range(1, 11))
    assert store._process is not None and store._process.pid not in (None, os.getpid())
    # One batch for the conversation, one for the ten messages that queued up together;
    # nothing committed on the loop.
    assert store.process_batches == 2 and store.inline_batches == 0
    stored = await store.events_after(conversation.id, 0)
    assert [e.data["text"] for e in stored] == [str(i) for i in range(10)]


async def test_refusals_and_resends_come_back_from_the_process(store: SQLiteStore) -> None:
    await store.add_tenant("t1")
    conversation = await store.create_conversation("t1")
    first = await store.append_message(message(conversation.id, "same", "once"))
    results = await asyncio.gather(
        store.append_message(message(conversation.id, "same", "resent")),
        store.append_message(message("c_missing", "x")),
        store.append_message(message(conversation.id, "new", "twice")),
        return_exceptions=True,
    )
    resent, missing, new = results
    assert not isinstance(resent, BaseException) and not resent.created
    assert resent.event == first.event
    assert isinstance(missing, NotFound)
    assert not isinstance(new, BaseException) and new.created and new.event.seq == 2


async def test_a_process_that_dies_mid_batch_is_replaced(store: SQLiteStore) -> None:
    await store.add_tenant("t1")
    conversation = await store.create_conversation("t1")
    await store.append_message(message(conversation.id, "before"))
    assert store._process is not None
    first_pid = store._process.pid
    # The message and the write that kills the process share one batch: its outcome is
    # unknown to the node, so both callers hear so.
    lost, died = await asyncio.gather(
        store.append_message(message(conversation.id, "during")),
        store._write(_die_mid_batch, inline=True),
        return_exceptions=True,
    )
    assert isinstance(lost, WriterProcessExited) and isinstance(died, WriterProcessExited)
    # The client resends with the same id: a new process stores it, once.
    resent = await store.append_message(message(conversation.id, "during"))
    assert resent.created and resent.event.seq == 2
    assert store._process.starts == 2 and store._process.pid != first_pid
    stored = await store.events_after(conversation.id, 0)
    assert [e.data["client_id"] for e in stored] == ["before", "during"]


async def test_what_cannot_cross_the_pipe_fails_alone(store: SQLiteStore) -> None:
    await store.add_tenant("t1")
    conversation = await store.create_conversation("t1")
    # A write that does not pickle fails its own batch, in this node, before it is sent.
    with pytest.raises(Unavailable, match="store write failed"):
        await store._write(lambda db: None, inline=True)
    # An answer that does not pickle fails its own write; its neighbour is stored.
    answered, stored = await asyncio.gather(
        store._write(_answer_with_a_function, inline=True),
        store.append_message(message(conversation.id, "neighbour")),
        return_exceptions=True,
    )
    assert isinstance(answered, Unavailable) and "cannot be sent back" in answered.message
    assert not isinstance(stored, BaseException) and stored.event.seq == 1
    assert store._process is not None and store._process.starts == 1


async def test_closing_the_store_stops_the_process(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "warmline.db"), writer_process=True)
    await store.open()
    await store.add_tenant("t1")
    pending = [asyncio.ensure_future(store.create_conversation("t1")) for _ in range(20)]
    await asyncio.sleep(0)  # one turn of the loop: they are queued, not yet answered
    process = store._process
    assert process is not None and process._process is not None
    child = process._process
    await store.close()
    # Writes queued before close were still committed, and the process exited by itself.
    assert all(task.done() and not task.cancelled() for task in pending)
    assert len({task.result().id for task in pending}) == 20
    assert child.returncode == 0
    reopened = SQLiteStore(str(tmp_path / "warmline.db"))
    await reopened.open()
    try:
        for task in pending:
            assert (await reopened.get_conversation(task.result().id)).state == "bot"
    finally:
        await reopened.close()


async def test_a_loop_node_and_a_process_node_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "warmline.db")
    loop_node, process_node = SQLiteStore(path), SQLiteStore(path, writer_process=True)
    await loop_node.open()
    await process_node.open()
    try:
        await loop_node.add_tenant("t1")
        conversation = await loop_node.create_conversation("t1")
        appended = await asyncio.gather(
            *(
                node.append_message(message(conversation.id, f"{name}{i}"))
                for i in range(30)
                for name, node in (("loop", loop_node), ("process", process_node))
            )
        )
        assert sorted(a.event.seq for a in appended) == list(range(1, 61))
    finally:
        await process_node.close()
        await loop_node.close()


def test_the_writer_is_chosen_by_configuration() -> None:
    config = Config.from_env({"WARMLINE_SQLITE_WRITER": "process", "WARMLINE_DB": "x.db"})
    store = open_store(config.db, config.sqlite_writer)
    assert isinstance(store, SQLiteStore) and store.writer_process
    assert not SQLiteStore("x.db").writer_process
    with pytest.raises(ValueError, match="unknown SQLite writer 'thread'"):
        open_store("x.db", "thread")
    with pytest.raises(ValueError, match="in-memory"):
        SQLiteStore(":memory:", writer_process=True)


def _children(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(p) for p in (task / "children").read_text().split())
    return children


async def test_a_server_stops_its_writer_process_when_it_stops(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "warmline.db", env={"WARMLINE_SQLITE_WRITER": "process"})
    with server:
        customer, _ = await Client.customer(server.ws_url())
        ack = await customer.request({"type": "message", "id": "m1", "text": "hello"})
        assert ack["type"] == "ack" and ack["seq"] == 1
        await customer.close()
        assert server.proc is not None
        writers = _children(server.proc.pid)
        assert len(writers) == 1  # the writer process, and nothing else
        # SIGTERM goes to the whole process group: the writer ignores it and exits once the
        # node has drained and closed its store (uvicorn then re-raises the signal).
        assert server.stop() == -signal.SIGTERM
    assert all(_gone(pid) for pid in writers)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
