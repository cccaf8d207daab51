"""Config.from_env: coercion, errors that name the variable, overrides, and $PORT."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

import pytest

from warmline.config import Config


def test_defaults_with_an_empty_environment() -> None:
    assert Config.from_env({}) == Config()


def test_env_values_are_coerced() -> None:
    config = Config.from_env(
        {
            "WARMLINE_PORT": "9001",
            "WARMLINE_HOST": "0.0.0.0",
            "WARMLINE_DEMO": "yes",
            "WARMLINE_LOG_JSON": "0",
            "WARMLINE_HEARTBEAT_S": "2.5",
            "WARMLINE_MAX_FRAME_BYTES": " 1024 ",
            "WARMLINE_REDIS_URL": "redis://x:6379/0",
            "OTHER_PORT": "1",
        }
    )
    assert config.port == 9001
    assert config.host == "0.0.0.0"
    assert config.demo is True
    assert config.log_json is False
    assert config.heartbeat_s == 2.5
    assert config.max_frame_bytes == 1024
    assert config.redis_url == "redis://x:6379/0"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("Yes", True), (" on ", True), ("0", False),
     ("false", False), ("No", False), ("off", False), ("", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert Config.from_env({"WARMLINE_DEMO": raw}).demo is expected


def _valid_raw(kind: Any) -> tuple[str, Any]:
    if kind is bool:
        return "true", True
    if kind is int:
        return "42", 42
    if kind is float:
        return "4.5", 4.5
    return "some-value", "some-value"


def test_every_field_is_settable_from_the_environment() -> None:
    hints = get_type_hints(Config)
    for field in dataclasses.fields(Config):
        raw, value = _valid_raw(hints[field.name])
        config = Config.from_env({f"WARMLINE_{field.name.upper()}": raw})
        assert getattr(config, field.name) == value, field.name


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("WARMLINE_PORT", "eighty"),
        ("WARMLINE_PORT", ""),
        ("WARMLINE_PORT", "80.5"),
        ("WARMLINE_HEARTBEAT_S", "fast"),
        ("WARMLINE_DEMO", "maybe"),
        ("WARMLINE_LOG_JSON", "2"),
        ("WARMLINE_CONFIDENCE_THRESHOLD", "half"),
    ],
)
def test_bad_values_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError) as info:
        Config.from_env({name: raw})
    assert name in str(info.value)


def test_overrides_win_over_the_environment() -> None:
    env = {"WARMLINE_PORT": "9001", "WARMLINE_DB": "env.db", "WARMLINE_DEMO": "1"}
    config = Config.from_env(env, port=7000, db="flag.db", demo=None)
    assert (config.port, config.db, config.demo) == (7000, "flag.db", True)


def test_overrides_without_environment() -> None:
    assert Config.from_env({}, host="::1").host == "::1"


def test_port_from_platform_variable() -> None:
    assert Config.from_env({"PORT": "5555"}).port == 5555
    assert Config.from_env({"PORT": ""}).port == Config().port
    # The explicit WARMLINE_PORT, then a CLI flag, win over $PORT.
    assert Config.from_env({"PORT": "5555", "WARMLINE_PORT": "6666"}).port == 6666
    assert Config.from_env({"PORT": "5555"}, port=7777).port == 7777


def test_a_bad_platform_port_names_port() -> None:
    with pytest.raises(ValueError) as info:
        Config.from_env({"PORT": "http"})
    message = str(info.value)
    assert message.startswith("PORT"), message
    assert "WARMLINE_PORT" not in message, "the user set PORT, not WARMLINE_PORT"


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLINE_NODE_ID", "node-7")
    monkeypatch.delenv("WARMLINE_PORT", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert Config.from_env().node_id == "node-7"


def test_replace_and_llm_enabled() -> None:
    config = Config.from_env({})
    assert not config.llm_enabled
    changed = config.replace(llm_base_url="http://127.0.0.1:11434/v1")
    assert changed.llm_enabled and not config.llm_enabled
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
