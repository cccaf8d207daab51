"""Structured logging: JSON lines with `WARMLINE_LOG_JSON=1`, readable text otherwise.

Every record carries the ids of what it is about (conversation, connection, request), taken
from context variables: the transports bind them once per connection or request, and every
log call beneath (the store, the bot turn spawned from that context, ...) inherits them
without passing them around. A task copies the context when it is created, so background
work started on behalf of a conversation logs that conversation's id.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import IO, Any

from warmline.config import Config
from warmline.store.ids import new_id

CONTEXT_FIELDS = ("conversation_id", "connection_id", "request_id")
_VARS: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"warmline_{name}", default=None) for name in CONTEXT_FIELDS
}
# Attributes every LogRecord has: anything else on a record came from `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HANDLER_NAME = "warmline"


def bind(**fields: str | None) -> dict[str, Token[str | None]]:
    """Set context ids for the rest of this task (and tasks it creates from now on)."""
    tokens = {}
    for name, value in fields.items():
        var = _VARS.get(name)
        if var is None:
            raise ValueError(f"unknown log context field {name!r}")
        tokens[name] = var.set(value)
    return tokens


def unbind(tokens: dict[str, Token[str | None]]) -> None:
    for name, token in tokens.items():
        _VARS[name].reset(token)


@contextmanager
def context(**fields: str | None) -> Iterator[None]:
    tokens = bind(**fields)
    try:
        yield
    finally:
        unbind(tokens)


def current() -> dict[str, str]:
    """The context ids that are set right now."""
    return {name: value for name, var in _VARS.items() if (value := var.get()) is not None}


def request_id(header: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token (it ties our lines to a proxy's),
    else a fresh one."""
    if header and _SAFE_ID.match(header):
        return header
    return new_id("req")


class ContextFilter(logging.Filter):
    """Copies the context ids onto each record. Filters run synchronously in the thread and
    context of the logging call, so the values are the caller's."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; context ids only when set, `extra=` fields included."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in CONTEXT_FIELDS and key not in entry:
                entry[key] = _jsonable(value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # ensure_ascii: a lone surrogate from hostile input must not break the log line.
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [conversation_id=… connection_id=…]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        if not ids:
            return line
        head, newline, rest = line.partition("\n")  # keep ids on the first line of a traceback
        return f"{head} [{ids}]{newline}{rest}"


def configure_logging(config: Config, stream: IO[str] | None = None) -> logging.Handler:
    """Install one handler on the root logger (replacing a previous one of ours).

    uvicorn's own loggers are pointed at the root too, so its lines share the format, as long
    as uvicorn is not given a logging config of its own afterwards.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if config.log_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    level = logging.getLevelName(config.log_level.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
