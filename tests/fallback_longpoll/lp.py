"""A long-polling customer over real HTTP (httpx), the counterpart of tests/helpers/client.py."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from typing import Any

import httpx

Frame = dict[str, Any]
SEND = "/v1/lp/customer/send"
POLL = "/v1/lp/customer/poll"
_refs = itertools.count(1)


class LongPollCustomer:
    def __init__(self, base_url: str, token: str = "", last_seq: int = 0) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=40)
        self.token = token
        self.last_seq = last_seq
        self.received: list[Frame] = []
        self.events: list[Frame] = []

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, frame: Frame, *, token: bool = True) -> tuple[int, list[Frame]]:
        body = dict(frame)
        if token and self.token and frame.get("type") != "hello":
            body.setdefault("token", self.token)
        response = await self.http.post(SEND, json=body)
        return response.status_code, response.json()

    async def request(self, frame: Frame) -> Frame:
        """Send with a fresh ref; return the one reply echoing it."""
        ref = frame.setdefault("ref", f"r{next(_refs)}")
        status, replies = await self.send(frame)
        matching = [f for f in replies if f.get("ref") == ref]
        assert len(matching) == 1, (status, replies)
        return matching[0]

    async def hello(self, tenant: str = "demo", **fields: Any) -> Frame:
        welcome = await self.request({"type": "hello", "tenant": tenant, **fields})
        assert welcome["type"] == "welcome", welcome
        self.token = welcome["token"]
        return welcome

    async def poll(
        self, wait_s: float = 5.0, client: httpx.AsyncClient | None = None
    ) -> list[Frame]:
        """One poll from the last seq seen (the server waits at most wait_s); checks that
        events continue the sequence without gap or duplicate."""
        response = await (client or self.http).get(
            POLL, params={"token": self.token, "after": self.last_seq, "timeout": wait_s}
        )
        assert response.status_code == 200, response.text
        frames: list[Frame] = response.json()["frames"]
        for frame in frames:
            self.received.append(frame)
            if frame.get("type") == "event":
                assert frame["seq"] == self.last_seq + 1, (self.last_seq, frame)
                self.last_seq = frame["seq"]
                self.events.append(frame)
        return frames

    async def poll_until(
        self,
        predicate: Callable[[Frame], bool],
        within_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> Frame:
        """Poll again and again until a frame matches (every poll wakes on new events)."""
        async with asyncio.timeout(within_s):
            while True:
                for frame in await self.poll(wait_s=5.0, client=client):
                    if predicate(frame):
                        return frame


def is_state(to: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("type") == "event" and f.get("kind") == "state" and f.get("to") == to


def is_message_from(role: str) -> Callable[[Frame], bool]:
    return lambda f: (
        f.get("type") == "event"
        and f.get("kind") == "message"
        and f.get("author", {}).get("role") == role
    )


_GAUGE = re.compile(r'^warmline_connections\{role="customer",transport="longpoll"\} (\S+)$', re.M)


async def live_polls(base_url: str) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    match = _GAUGE.search(text)
    return int(float(match.group(1))) if match else 0


async def until_live_polls(base_url: str, count: int, within_s: float = 5.0) -> None:
    """Wait until the node holds `count` waiting polls (it counts one once it is subscribed
    and has read the store, so any later event must wake it).

    The count lives in another process and only /metrics shows it: re-reading it is the one
    way to wait for it, as tests/helpers/server.py's wait_until does for files.
    """
    async with asyncio.timeout(within_s):
        while await live_polls(base_url) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
