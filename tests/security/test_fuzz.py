"""Hostile input, property-based: every frame type of every role, over real connections to one
real server, and the long-poll and HTTP API bodies.

Every generated input is invalid by construction (a random JSON value, a known frame with one
field broken, bytes, an unknown type, ...) or well-formed but aimed at things that do not
exist. Each must get exactly one `error` frame (or a 4xx) with a meaningful code, the
connection must still answer a ping, and at the end of every test the process is the same one,
healthy, and nothing stored has changed. Hypothesis runs derandomized (fixed examples, stable
in CI) with a modest number of examples.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from realtime import protocol
from tests.helpers.server import ServerProcess
from tests.security.support import rss_kib, snapshot

EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # `unharmed` is meant to run once per test, around all of its examples.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
# An error, and a reason that is not "something broke inside".
EXPECTED_CODES = {
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "invalid_transition",
    "too_large",
}
MAX_FRAME = 64 * 1024


# The server and one connection per role ----------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("fuzz") / "warmline.db"
    # Hostile input, not floods, is under test here: frame pacing and per-address limits off.
    env = {"WARMLINE_RATE_FRAME_PER_S": "0", "WARMLINE_RATE_IP_CONNECT_PER_S": "0"}
    with ServerProcess(db, env=env) as server:
        yield server


class Peer:
    """A blocking WebSocket client (hypothesis drives synchronous tests) that reconnects when
    the server closes it (a refused hello closes with 1008, by design)."""

    def __init__(self, url: str, hello: dict[str, Any] | None, binary: bool = False) -> None:
        self.url = url
        self.hello = hello
        self.binary = binary
        self.counter = 0
        self.closes: list[int | None] = []
        self.ws = self._open()

    def _open(self) -> ClientConnection:
        ws = connect(
            self.url,
            subprotocols=[protocol.MSGPACK_SUBPROTOCOL] if self.binary else None,  # type: ignore[list-item]
            max_size=None,
            proxy=None,
            open_timeout=10,
            close_timeout=2,
        )
        self.ws = ws
        if self.hello is not None:
            welcome = self.call(dict(self.hello))
            assert welcome["type"] == "welcome", welcome
        return ws

    def _encode(self, frame: dict[str, Any]) -> str | bytes:
        return msgpack.packb(frame, use_bin_type=True) if self.binary else json.dumps(frame)

    def _recv(self) -> dict[str, Any]:
        raw = self.ws.recv(timeout=10)
        frame: dict[str, Any] = (
            msgpack.unpackb(raw, raw=False) if isinstance(raw, bytes) else json.loads(raw)
        )
        return frame

    def call(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.counter += 1
        ref = frame["ref"] = f"call-{self.counter}"
        self.ws.send(self._encode(frame))
        while True:
            reply = self._recv()
            if reply.get("ref") == ref:
                return reply

    def exchange(self, payload: str | bytes) -> list[dict[str, Any]]:
        """Send one raw frame, then a ping: everything the server said in between."""
        self.counter += 1
        sentinel = f"sentinel-{self.counter}"
        frames: list[dict[str, Any]] = []
        try:
            self.ws.send(payload)
            self.ws.send(self._encode({"type": "ping", "ref": sentinel}))
            while True:
                frame = self._recv()
                if frame.get("type") == "pong" and frame.get("ref") == sentinel:
                    return frames
                frames.append(frame)
        except ConnectionClosed as closed:
            self.closes.append(closed.rcvd.code if closed.rcvd is not None else None)
        # Closed (maybe while the ping was being sent): what arrived before the close counts.
        try:
            while True:
                frames.append(self._recv())
        except ConnectionClosed:
            pass
        self._open()
        return frames

    def alive(self) -> bool:
        return self.call({"type": "ping"})["type"] == "pong"

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def peers(server: ServerProcess) -> Iterator[dict[str, Peer]]:
    made = {
        "customer": Peer(server.ws_url(), {"type": "hello", "tenant": "demo"}),
        "customer-msgpack": Peer(server.ws_url(), {"type": "hello", "tenant": "demo"}, True),
        "customer-anon": Peer(server.ws_url(), None),
        "agent": Peer(
            server.ws_url("agent"), {"type": "hello", "token": server.agent_token, "status": "away"}
        ),
        "supervisor": Peer(
            server.ws_url("supervisor"), {"type": "hello", "token": server.supervisor_token}
        ),
    }
    yield made
    for peer in made.values():
        peer.close()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def lp_token(http: httpx.Client) -> str:
    return str(
        http.post("/v1/lp/customer/send", json={"type": "hello", "tenant": "demo"}).json()[0][
            "token"
        ]
    )


@pytest.fixture(scope="module")
def baseline(server: ServerProcess, peers: dict[str, Peer], lp_token: str) -> dict[str, Any]:
    """The process and the store as they were before any hostile input (and after the
    legitimate setup: the peers' and the long-poll customer's conversations)."""
    assert server.proc is not None
    return {"pid": server.proc.pid, "stored": snapshot(server.db)}


@pytest.fixture
def unharmed(
    server: ServerProcess, peers: dict[str, Peer], baseline: dict[str, Any]
) -> Iterator[None]:
    yield
    assert server.proc is not None and server.proc.poll() is None
    assert server.proc.pid == baseline["pid"]
    assert server.get("/healthz").status_code == 200
    for peer in peers.values():
        assert peer.alive()
    assert snapshot(server.db) == baseline["stored"]


def one_error(frames: list[dict[str, Any]], what: object) -> dict[str, Any]:
    errors = [f for f in frames if f.get("type") == "error"]
    accepted = [f for f in frames if f.get("type") in ("ack", "welcome")]
    assert len(errors) == 1 and not accepted, (repr(what)[:300], frames)
    assert errors[0]["code"] in EXPECTED_CODES, (repr(what)[:300], errors[0])
    return errors[0]


# Strategies ---------------------------------------------------------------------------------------
# Text with everything in it: control characters, astral planes, lone surrogates (which JSON
# escapes as \ud800 and the server must refuse before they reach the store or a reply).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
huge_text = st.builds(
    lambda char, n: char * n,
    st.characters(codec=None, max_codepoint=0xFFFF, exclude_categories=()),
    st.integers(min_value=8_001, max_value=9_000),
)
deep = st.builds(
    lambda depth, brackets: brackets[0] * depth + brackets[1] * depth,
    st.integers(min_value=protocol.MAX_DEPTH + 1, max_value=3_000),
    st.sampled_from([("[", "]"), ('{"a":' * 1, "}")]),
)


def valid_value(spec: protocol.Field) -> Any:
    if spec.choices is not None:
        return spec.choices[0]
    if spec.kind is bool:
        return True
    if spec.kind is int:
        return spec.min_value if spec.min_value is not None else 1
    return "x1"


def wrong_type(spec: protocol.Field) -> st.SearchStrategy[Any]:
    def mismatched(value: Any) -> bool:
        if value is None:
            return False  # a null optional field counts as absent, which is valid
        if isinstance(value, bool):
            return spec.kind is not bool
        return not isinstance(value, spec.kind)

    return json_values.filter(mismatched)


def broken_frame(schema: dict[str, dict[str, protocol.Field]]) -> st.SearchStrategy[dict]:
    """A known frame type with exactly one thing wrong with it."""

    def breakages(kind: str) -> st.SearchStrategy[dict]:
        fields = schema[kind]
        base = {"type": kind, **{n: valid_value(s) for n, s in fields.items() if s.required}}
        options: list[st.SearchStrategy[dict]] = [
            # A ref that is not a short string.
            st.one_of(
                wrong_type(protocol.Field(str)),
                st.text(min_size=protocol.MAX_REF_CHARS + 1, max_size=200),
            ).map(lambda ref: {**base, "ref": ref}),
        ]
        for name, spec in fields.items():
            options.append(wrong_type(spec).map(lambda v, n=name: {**base, n: v}))
            if spec.required:
                options.append(st.just({k: v for k, v in base.items() if k != name}))
            if spec.kind is str:
                limit = spec.max_len or 8_000
                options.append(
                    st.integers(limit + 1, limit + 500).map(
                        lambda size, n=name: {**base, n: "y" * size}
                    )
                )
                if spec.choices is not None:
                    options.append(
                        any_text.filter(lambda t, c=spec.choices: t not in c).map(
                            lambda v, n=name: {**base, n: v}
                        )
                    )
                if name in ("id", "conversation_id", "tenant", "to_agent_id", "text"):
                    options.append(
                        st.sampled_from(["", " ", "\t\n"]).map(lambda v, n=name: {**base, n: v})
                    )
            if spec.kind is int:
                low = (
                    st.integers(max_value=spec.min_value - 1)
                    if spec.min_value is not None
                    else None
                )
                high = (
                    st.integers(min_value=spec.max_value + 1)
                    if spec.max_value is not None
                    else st.integers(min_value=protocol.MAX_SAFE_INT + 1, max_value=2**80)
                )
                for bad in (low, high):
                    if bad is not None:
                        options.append(bad.map(lambda v, n=name: {**base, n: v}))
        return st.one_of(options)

    return st.sampled_from(sorted(schema)).flatmap(breakages)


lone_surrogate = st.builds(
    lambda head, surrogate, tail: (head + surrogate + tail)[:60],
    st.text(max_size=20),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=20),
)


def with_surrogate(schema: dict[str, dict[str, protocol.Field]]) -> st.SearchStrategy[dict]:
    """A frame that would be valid but for a lone surrogate in one of its strings: it must be
    refused before it reaches the store (which cannot encode it) or a reply (which could not
    be written)."""

    def spoil(kind: str) -> st.SearchStrategy[dict]:
        fields = schema[kind]
        base = {"type": kind, **{n: valid_value(s) for n, s in fields.items() if s.required}}
        names = [n for n, spec in fields.items() if spec.kind is str and spec.choices is None]
        return st.sampled_from([*names, "ref"]).flatmap(
            lambda name: lone_surrogate.map(lambda text: {**base, name: text})
        )

    return st.sampled_from(sorted(schema)).flatmap(spoil)


def unknown_type(schema: dict[str, dict[str, protocol.Field]]) -> st.SearchStrategy[dict]:
    return st.builds(
        lambda kind, extra: {**extra, "type": kind},
        any_text.filter(lambda t: t not in schema),
        st.dictionaries(any_text, json_values, max_size=3),
    )


def not_a_frame(schema: dict[str, dict[str, protocol.Field]]) -> st.SearchStrategy[Any]:
    """Any JSON that is not an object with a known type."""
    return json_values.filter(lambda v: not (isinstance(v, dict) and v.get("type") in schema))


def as_json(value: Any) -> str:
    return json.dumps(value)  # ensure_ascii: lone surrogates travel as \\ud800 escapes


def hostile_json(schema: dict[str, dict[str, protocol.Field]]) -> st.SearchStrategy[str]:
    return st.one_of(
        broken_frame(schema).map(as_json),
        with_surrogate(schema).map(as_json),
        unknown_type(schema).map(as_json),
        not_a_frame(schema).map(as_json),
        st.text(max_size=200).filter(lambda t: not _parses_as_frame(t, schema)),
        huge_text.map(lambda t: as_json({"type": t})),
        huge_text.map(lambda t: as_json({"type": "ping", "ref": t})),
        deep.map(lambda nested: '{"type": "ping", "deep": ' + nested + "}"),
    )


def _parses_as_frame(text: str, schema: dict[str, dict[str, protocol.Field]]) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("type") in schema


# WebSocket roles --------------------------------------------------------------------------------
def fuzz_role(peer: Peer, payload: str | bytes) -> None:
    assert len(payload) < MAX_FRAME
    frames = peer.exchange(payload)
    one_error(frames, payload)


@FUZZ
@given(payload=hostile_json(protocol.CUSTOMER_FRAMES) | st.binary(max_size=300))
def test_customer_frames(peers: dict[str, Peer], unharmed: None, payload: str | bytes) -> None:
    fuzz_role(peers["customer"], payload)


def packed(frame: dict[str, Any]) -> bytes:
    """MessagePack of the frame, or b"" when it has what MessagePack cannot carry (integers
    past 64 bits, lone surrogates)."""
    try:
        return bytes(msgpack.packb(frame, use_bin_type=True))
    except (OverflowError, UnicodeEncodeError, ValueError):
        return b""


@FUZZ
@given(
    payload=st.one_of(
        broken_frame(protocol.CUSTOMER_FRAMES).map(packed).filter(bool),
        unknown_type(protocol.CUSTOMER_FRAMES).map(packed).filter(bool),
        st.binary(max_size=300),
        st.text(max_size=100).filter(bool),  # text frames on a MessagePack connection
    )
)
def test_customer_msgpack_frames(
    peers: dict[str, Peer], unharmed: None, payload: str | bytes
) -> None:
    fuzz_role(peers["customer-msgpack"], payload)


hello_for_nobody = st.fixed_dictionaries(
    {"type": st.just("hello"), "tenant": any_text.filter(lambda t: t.strip() and t != "demo")},
    optional={"token": st.text(min_size=1, max_size=200), "last_seq": st.integers(0, 2**40)},
)


@FUZZ
@given(
    payload=st.one_of(
        hostile_json(protocol.CUSTOMER_FRAMES),
        hello_for_nobody.map(as_json),
        st.fixed_dictionaries(
            {"type": st.just("hello"), "tenant": st.just("demo"), "token": any_text.filter(bool)}
        ).map(as_json),
        st.sampled_from(["message", "typing", "rate", "request_human"]).map(
            lambda kind: as_json({"type": kind, "id": "x", "text": "t", "on": True, "score": 3})
        ),
    )
)
def test_customer_before_hello(peers: dict[str, Peer], unharmed: None, payload: str) -> None:
    fuzz_role(peers["customer-anon"], payload)


ids = st.text(min_size=1, max_size=protocol.MAX_ID_CHARS).filter(str.strip)


@FUZZ
@given(
    payload=st.one_of(
        hostile_json(protocol.AGENT_FRAMES),
        st.binary(max_size=300),
        # Well formed, aimed at conversations and agents that do not exist.
        st.builds(
            lambda kind, conversation_id, other: as_json(
                {
                    "type": kind,
                    "conversation_id": conversation_id,
                    "id": "m1",
                    "text": "hello",
                    "on": True,
                    "to_agent_id": other,
                }
            ),
            st.sampled_from(
                ["claim", "subscribe", "message", "typing", "resolve", "requeue", "transfer"]
            ),
            ids,
            ids,
        ),
        st.just(as_json({"type": "hello", "token": "x"})),  # once is enough
    )
)
def test_agent_frames(peers: dict[str, Peer], unharmed: None, payload: str | bytes) -> None:
    fuzz_role(peers["agent"], payload)


@FUZZ
@given(
    payload=st.one_of(
        hostile_json(protocol.SUPERVISOR_FRAMES),
        hostile_json(protocol.AGENT_FRAMES),  # other roles' frames are unknown types here
        st.binary(max_size=300),
        st.builds(lambda token: as_json({"type": "hello", "token": token}), any_text),
    )
)
def test_supervisor_frames(peers: dict[str, Peer], unharmed: None, payload: str | bytes) -> None:
    fuzz_role(peers["supervisor"], payload)


def test_invalid_utf8_in_a_text_frame_fails_only_that_connection(
    server: ServerProcess, peers: dict[str, Peer], unharmed: None
) -> None:
    victim = Peer(server.ws_url(), None)  # no hello: this test must not store anything
    for raw in (b"\xff\xfe{}", b'{"type": "ping", "ref": "\xed\xa0\x80"}', b"\xc0\xaf"):
        # RFC 6455: invalid UTF-8 in a text frame fails the connection (1007).
        victim.ws.send(raw, text=True)
        with pytest.raises(ConnectionClosed) as closed:
            victim.ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        victim._open()
    victim.close()


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 5 * MAX_FRAME])
def test_oversized_frames_close_with_1009(server: ServerProcess, unharmed: None, size: int) -> None:
    for binary in (False, True):
        peer = Peer(server.ws_url(), None, binary)  # the size is checked before anything else
        frame = {"type": "message", "id": "big", "text": "x" * size}
        with pytest.raises(ConnectionClosed) as closed:
            peer.ws.send(peer._encode(frame))
            while True:
                peer._recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_memory_stays_bounded_under_a_big_hostile_batch(
    server: ServerProcess, peers: dict[str, Peer], unharmed: None
) -> None:
    assert server.proc is not None
    pad = "z" * 7_000
    batch = [
        as_json({"type": "message", "id": "m{i}", "text": pad + "x" * 2_000}),  # text too long
        as_json({"type": "nope-{i}", "pad": pad}),
        '{"type": "ping", "deep": ' + "[" * 2_000 + "]" * 2_000 + "}",
        "{" * 50_000,
    ]

    def run(rounds: int) -> None:
        for i in range(rounds):
            for payload in batch:
                one_error(peers["customer"].exchange(payload.replace("{i}", str(i))), "batch")

    run(100)  # warm up: allocator pools, caches
    before = rss_kib(server.proc.pid)
    run(600)  # 2 400 frames, about 40 MB of hostile input
    grown_mib = (rss_kib(server.proc.pid) - before) / 1024
    print(f"RSS {before / 1024:.1f} MiB, grew {grown_mib:.1f} MiB over 2 400 hostile frames")
    assert grown_mib < 24, f"RSS grew by {grown_mib:.1f} MiB"


# Long polling and the HTTP API --------------------------------------------------------------------
def lp_refused(response: httpx.Response, what: object) -> None:
    assert 400 <= response.status_code < 500, (
        repr(what)[:300],
        response.status_code,
        response.text,
    )
    frames = response.json()
    frames = frames if isinstance(frames, list) else frames["frames"]
    one_error(frames, what)


@FUZZ
@given(
    body=st.one_of(
        hostile_json(protocol.CUSTOMER_FRAMES).map(str.encode),
        st.binary(max_size=300),
        hello_for_nobody.map(lambda f: as_json(f).encode()),
    ),
    with_token=st.booleans(),
)
def test_long_poll_send_bodies(
    http: httpx.Client, lp_token: str, unharmed: None, body: bytes, with_token: bool
) -> None:
    headers = {"Content-Type": "application/json"}
    if with_token:
        headers["Authorization"] = f"Bearer {lp_token}"
    lp_refused(http.post("/v1/lp/customer/send", content=body, headers=headers), body)


query_text = st.text(st.characters(codec="utf-8"), max_size=80)
# What an HTTP header can carry at all (anything else the HTTP parser refuses before the app).
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["token", "after", "timeout", "tenant", "x"]), query_text, max_size=4
    ),
    authorization=st.none() | header_text.map(lambda t: "Bearer " + t),
)
def test_long_poll_queries(
    http: httpx.Client, unharmed: None, params: dict[str, str], authorization: str | None
) -> None:
    headers = {"Authorization": authorization.strip()} if authorization else {}
    lp_refused(http.get("/v1/lp/customer/poll", params=params, headers=headers), params)


@FUZZ
@given(
    tenant=st.none() | query_text,
    authorization=st.none() | header_text,
)
def test_stats_api_requests(
    http: httpx.Client,
    server: ServerProcess,
    unharmed: None,
    tenant: str | None,
    authorization: str | None,
) -> None:
    headers = (
        {"Authorization": authorization.strip()} if authorization and authorization.strip() else {}
    )
    params = {"tenant": tenant} if tenant is not None else {}
    response = http.get("/v1/api/stats", params=params, headers=headers)
    assert response.status_code in (401, 403), (tenant, authorization, response.text)
    assert response.json()["type"] == "error"


def test_oversized_and_odd_http_bodies(
    server: ServerProcess, http: httpx.Client, unharmed: None
) -> None:
    big = json.dumps({"type": "message", "id": "m", "text": "x" * (MAX_FRAME + 10)})
    response = http.post("/v1/lp/customer/send", content=big)
    assert response.status_code == 413 and response.json()[0]["code"] == "too_large"
    # A declared length past the limit is refused without waiting for (or reading) the body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/lp/customer/send HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{"
        )
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"413", status_line
    for content in (b"", b"\x00" * 100, b'{"type": "ping"'):
        lp_refused(http.post("/v1/lp/customer/send", content=content), content)
    assert http.post("/v1/api/stats").status_code == 405
