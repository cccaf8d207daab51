"""The one typed configuration object, read from `WARMLINE_*` variables and CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

ENV_PREFIX = "WARMLINE_"


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "warmline.db"
    redis_url: str = ""
    demo: bool = False
    node_id: str = ""

    # Realtime
    heartbeat_s: float = 15.0
    max_frame_bytes: int = 64 * 1024
    max_text_chars: int = 8000
    send_queue_frames: int = 512
    drain_reconnect_ms: int = 250
    drain_timeout_s: float = 10.0

    # Dispatch and handoff
    agent_grace_s: float = 30.0
    reply_sla_s: float = 120.0
    dispatch_tick_s: float = 1.0
    default_handle_time_s: float = 180.0
    presence_ttl_s: float = 45.0
    queue_frame_interval_s: float = 0.25  # queue frames of a tenant at most this often

    # Bot and retrieval
    confidence_threshold: float = 0.5
    bot_name: str = "Warmline Bot"
    retriever: str = "hybrid"  # hybrid (BM25 + dense embeddings) | bm25
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"

    # LLM (optional; with no base URL the extractive answerer is used)
    llm_base_url: str = ""
    llm_api_key: str = ""
    llm_model_small: str = ""
    llm_model_large: str = ""
    llm_timeout_s: float = 20.0
    llm_first_token_timeout_s: float = 8.0
    llm_max_attempts: int = 3
    llm_breaker_failures: int = 5
    llm_breaker_reset_s: float = 30.0

    # Sessions and security
    token_ttl_s: float = 30 * 24 * 3600.0
    secret_key: str = ""  # empty: a key is generated once and kept in the store

    # Operations
    log_json: bool = False
    log_level: str = "info"

    # Rate limits: token buckets, sustained per second and burst; a rate <= 0 disables one.
    # Per connection (a long-polling customer: per conversation).
    rate_message_per_s: float = 5.0
    rate_message_burst: float = 20.0
    rate_typing_per_s: float = 4.0
    rate_typing_burst: float = 8.0
    # Every frame of one WebSocket: past it the server stops reading that socket for a
    # while, so one flooding client costs the others nothing (TCP pushes back on it).
    rate_frame_per_s: float = 50.0
    rate_frame_burst: float = 200.0
    # Per tenant: stored messages and new conversations, over every node.
    rate_tenant_message_per_s: float = 200.0
    rate_tenant_message_burst: float = 1000.0
    rate_tenant_conversation_per_s: float = 50.0
    rate_tenant_conversation_burst: float = 500.0
    # Per client address: new connections (WebSocket handshakes, long-poll hellos) and polls.
    rate_ip_connect_per_s: float = 20.0
    rate_ip_connect_burst: float = 200.0
    rate_ip_poll_per_s: float = 50.0
    rate_ip_poll_burst: float = 500.0
    # How long a tenant's origin allow-list is cached (the CLI changes it from outside).
    origin_cache_s: float = 5.0
    # Addresses whose X-Forwarded-For is trusted (the load balancer), for per-IP limits.
    forwarded_allow_ips: str = "127.0.0.1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Environment first, then explicit overrides (CLI flags) that are not None."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _coerce(ENV_PREFIX + f.name.upper(), hints[f.name], raw)
        if "port" not in values and environ.get("PORT"):
            values["port"] = _coerce("PORT", int, environ["PORT"])
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def llm_enabled(self) -> bool:
        return bool(self.llm_base_url)


def _coerce(variable: str, kind: Any, raw: str) -> Any:
    try:
        if kind is bool:
            return _parse_bool(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{variable}: {exc}") from exc
