"""docs/protocol.md names everything the code puts on the wire.

Pure: it reads the schemas, error codes, state machine and route table from the code and the
document from disk; no server runs. A failure lists exactly what the document lacks.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from starlette.routing import BaseRoute, Mount

from realtime import connection, protocol
from statemachine.machine import STATES, TRANSITIONS
from warmline.app import create_app
from warmline.config import Config
from warmline.errors import ERROR_CODES

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

ROLE_SECTIONS = {
    "Customer frames": protocol.CUSTOMER_FRAMES,
    "Agent frames": protocol.AGENT_FRAMES,
    "Supervisor frames": protocol.SUPERVISOR_FRAMES,
}


@functools.cache
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text under `## title` up to the next level-2 heading (subsections included)."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", doc(), re.M | re.S)
    assert match is not None, f"docs/protocol.md has no '## {title}' section"
    return match.group(1)


def missing_code_spans(text: str, names: Iterable[str]) -> list[str]:
    """Names that never appear as a `code span` in text."""
    return sorted({name for name in names if f"`{name}`" not in text})


def route_paths(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[str]:
    for route in routes:
        path = prefix + getattr(route, "path", "")
        if isinstance(route, Mount):
            if path == "/static":
                continue  # static assets: documented as one row, not file by file
            yield from route_paths(route.routes, path)
        else:
            yield path or "/"


@pytest.mark.parametrize("title", list(ROLE_SECTIONS))
def test_every_frame_type_of_each_role_is_documented_in_its_section(title: str) -> None:
    assert missing_code_spans(section(title), ROLE_SECTIONS[title]) == []


@pytest.mark.parametrize("title", list(ROLE_SECTIONS))
def test_every_client_field_of_each_role_is_documented_in_its_section(title: str) -> None:
    fields = {name for spec in ROLE_SECTIONS[title].values() for name in spec}
    assert missing_code_spans(section(title), fields) == []


def test_every_error_code_is_documented() -> None:
    assert missing_code_spans(section("Errors"), ERROR_CODES) == []


def test_every_close_code_is_documented() -> None:
    codes = {
        str(value)
        for name, value in vars(connection).items()
        if name.startswith("CLOSE_") and isinstance(value, int)
    }
    assert codes, "realtime.connection defines no CLOSE_* codes"
    text = section("Errors")
    assert sorted(c for c in codes if not re.search(rf"^\| {c} \|", text, re.M)) == []


def test_every_state_and_transition_reason_is_documented() -> None:
    names = set(STATES)
    for spec in TRANSITIONS:
        names |= {spec.trigger, spec.source, spec.dest, *spec.reasons}
    assert missing_code_spans(section("States and reasons"), names) == []


def test_subprotocols_are_documented() -> None:
    names = (protocol.JSON_SUBPROTOCOL, protocol.MSGPACK_SUBPROTOCOL)
    assert missing_code_spans(section("Encoding and subprotocols"), names) == []


def test_every_route_is_documented() -> None:
    paths = set(route_paths(create_app(Config()).routes))
    assert {"/healthz", "/v1/ws/customer"} <= paths  # the walk itself works
    endpoints = section("Endpoints")
    missing = sorted(
        path
        for path in paths
        # The whole path, not a prefix of a longer one (`/agent` is not `/v1/ws/agent`).
        if not re.search(rf"(?<![\w/.{{}}-]){re.escape(path)}(?![\w/.{{}}-])", endpoints)
    )
    assert missing == []


def test_every_configuration_variable_named_exists_with_the_default_shown() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Config)}
    # `WARMLINE_RATE_…` (a prefix, spelled out in the rate-limit table) ends with `_`.
    named = {m for m in re.findall(r"WARMLINE_([A-Z0-9_]+)", doc()) if not m.endswith("_")}
    assert sorted(n for n in named if n.lower() not in fields) == []
    shown = re.findall(r"`WARMLINE_([A-Z0-9_]+)` = ([0-9][0-9.]*)( days)?", doc())
    assert shown, "no `WARMLINE_X` = default found"
    wrong = []
    for name, value, days in shown:
        documented = float(value.rstrip(".")) * (86400 if days else 1)
        if documented != fields[name.lower()]:
            wrong.append(f"{name} = {value}{days} (code: {fields[name.lower()]})")
    assert wrong == []


def test_every_rate_limit_and_its_defaults_are_documented() -> None:
    config = Config()
    row = r"^\| `([A-Z_]+)_PER_S`, `\1_BURST` \| ([0-9.]+), ([0-9.]+) \|"
    rows = re.findall(row, section("Rate limits"), re.M)
    documented = {kind.lower(): (float(rate), float(burst)) for kind, rate, burst in rows}
    expected = {
        f.name[len("rate_") : -len("_per_s")]: (
            getattr(config, f.name),
            getattr(config, f.name.replace("_per_s", "_burst")),
        )
        for f in dataclasses.fields(Config)
        if f.name.startswith("rate_") and f.name.endswith("_per_s")
    }
    assert expected, "Config defines no rate_*_per_s fields"
    assert documented == expected


def test_the_section_finder_and_the_route_walk_are_strict() -> None:
    # Guards against the guard: a name absent from the document is reported.
    assert missing_code_spans(section("Errors"), ["no_such_code"]) == ["no_such_code"]
    with pytest.raises(AssertionError):
        section("No such section")
