"""TaskOwner and Coalescer: owned tasks, awaited on close; coalesced reruns that never lose
the last trigger. Every wait is on an event, never on the clock."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest

from warmline.tasks import Coalescer, TaskOwner


async def test_close_awaits_running_tasks() -> None:
    owner = TaskOwner("t")
    release = asyncio.Event()
    finished: list[str] = []

    async def work(name: str) -> None:
        await release.wait()
        finished.append(name)

    for name in ("a", "b"):
        assert owner.spawn(work(name), name=name) is not None
    assert len(owner) == 2
    closing = asyncio.create_task(owner.close(timeout_s=30))
    await asyncio.sleep(0)  # let close start waiting
    assert not closing.done()
    release.set()
    await closing
    assert sorted(finished) == ["a", "b"]
    assert len(owner) == 0


async def test_close_cancels_what_does_not_finish_in_time_and_awaits_it() -> None:
    owner = TaskOwner("t")
    started = asyncio.Event()
    cleaned_up: list[bool] = []

    async def stuck() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(True)

    task = owner.spawn(stuck())
    assert task is not None
    await started.wait()
    await owner.close(timeout_s=0)
    # Awaited, not just cancelled: its finally block has run by the time close returns.
    assert task.cancelled()
    assert cleaned_up == [True]
    assert len(owner) == 0


async def test_close_with_nothing_running() -> None:
    owner = TaskOwner("t")
    await owner.close()
    await owner.close()


async def test_spawn_after_close_is_refused_without_leaking_the_coroutine() -> None:
    owner = TaskOwner("t")
    await owner.close()
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    coro = work()
    assert owner.spawn(coro) is None
    # Closed, so no "never awaited" warning.
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert ran == []


async def test_finished_tasks_are_forgotten_and_failures_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = TaskOwner("t")

    async def boom() -> None:
        raise RuntimeError("kaboom")

    async def fine() -> int:
        return 1

    failing = owner.spawn(boom(), name="boomer")
    ok = owner.spawn(fine())
    assert failing is not None and ok is not None
    with caplog.at_level(logging.ERROR, logger="warmline.tasks"):
        await asyncio.gather(failing, ok, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert len(owner) == 0
    assert any("boomer" in r.getMessage() for r in caplog.records)
    await owner.close()


class Gate:
    """A function for the Coalescer whose every run waits for a release."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.entered = asyncio.Queue[str]()
        self.release: dict[str, asyncio.Event] = {}
        self.version: dict[str, int] = {}
        self.fail_next = False
        self.finished = asyncio.Queue[str]()

    async def __call__(self, key: str) -> None:
        # What the run sees when it starts: the state of the world it acts on.
        self.calls.append((key, self.version.get(key, 0)))
        event = self.release[key] = asyncio.Event()
        await self.entered.put(key)
        await event.wait()
        # Nothing awaits between fn returning and the Coalescer's bookkeeping, so a waiter on
        # this queue resumes only after the run is completely over.
        self.finished.put_nowait(key)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("run failed")

    def open(self, key: str) -> None:
        self.release[key].set()


async def test_coalescer_collapses_triggers_and_keeps_the_last() -> None:
    owner = TaskOwner("t")
    gate = Gate()
    co = Coalescer(owner, gate, "dispatch")
    co.trigger("k")
    assert await gate.entered.get() == "k"
    for version in range(1, 11):  # ten changes while the first run is busy
        gate.version["k"] = version
        co.trigger("k")
    gate.open("k")
    assert await gate.entered.get() == "k"  # exactly one rerun ...
    gate.open("k")
    await owner.close(timeout_s=30)
    # ... and it saw the last change.
    assert gate.calls == [("k", 0), ("k", 10)]


async def test_coalescer_trigger_after_a_run_starts_a_new_one() -> None:
    owner = TaskOwner("t")
    gate = Gate()
    co = Coalescer(owner, gate, "dispatch")
    co.trigger("k")
    await gate.entered.get()
    gate.open("k")
    await owner.close(timeout_s=30)
    owner2 = TaskOwner("t2")
    co2 = Coalescer(owner2, gate, "dispatch")
    co2.trigger("k")
    await gate.entered.get()
    gate.open("k")
    await owner2.close(timeout_s=30)
    assert len(gate.calls) == 2


async def test_coalescer_runs_again_when_idle() -> None:
    owner = TaskOwner("t")
    gate = Gate()
    co = Coalescer(owner, gate, "dispatch")
    for round_ in range(3):
        gate.version["k"] = round_
        co.trigger("k")
        await gate.entered.get()
        gate.open("k")
        assert await gate.finished.get() == "k"  # the run is over before the next trigger
    await owner.close()
    assert gate.calls == [("k", 0), ("k", 1), ("k", 2)]


async def test_coalescer_keys_are_independent() -> None:
    owner = TaskOwner("t")
    gate = Gate()
    co = Coalescer(owner, gate, "dispatch")
    co.trigger("a")
    co.trigger("b")
    assert {await gate.entered.get(), await gate.entered.get()} == {"a", "b"}  # concurrently
    co.trigger("a")
    gate.open("b")
    gate.open("a")
    assert await gate.entered.get() == "a"
    gate.open("a")
    await owner.close(timeout_s=30)
    assert sorted(k for k, _ in gate.calls) == ["a", "a", "b"]


async def test_coalescer_survives_a_failing_run(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("t")
    gate = Gate()
    co = Coalescer(owner, gate, "dispatch")
    gate.fail_next = True
    with caplog.at_level(logging.ERROR, logger="warmline.tasks"):
        co.trigger("k")
        await gate.entered.get()
        co.trigger("k")  # arrives during the failing run: still honoured
        gate.open("k")
        assert await gate.entered.get() == "k"
        gate.open("k")
        await owner.close(timeout_s=30)
    assert len(gate.calls) == 2
    assert any("failed" in r.getMessage() for r in caplog.records)


async def test_coalescer_run_is_cancelled_on_close() -> None:
    owner = TaskOwner("t")
    gate = Gate()
    co = Coalescer(owner, gate, "dispatch")
    co.trigger("k")
    await gate.entered.get()
    co.trigger("k")
    await owner.close(timeout_s=0)
    assert len(gate.calls) == 1  # cancelled: no rerun after close
    assert len(owner) == 0
