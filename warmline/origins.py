"""Per-tenant Origin allow-lists, against cross-site WebSocket hijacking and its long-poll twin.

A browser always sends `Origin` on a WebSocket handshake and on cross-origin requests, and a
page cannot forge it, so checking it stops another site's page from driving a chat in the
visitor's name. Clients that are not browsers send no Origin; they are not the threat here
(they hold their tokens themselves) and are let through. With no list set, any origin is
accepted. The server's own origin (the dashboards and the demo page it serves) always is.

Allow-list entries are origins (`https://shop.example`, `http://localhost:8080`), a subdomain
wildcard (`https://*.shop.example`: any subdomain, not the apex) or `*` (anything).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_CACHED_TENANTS = 10_000


def _host_port(netloc_host: str | None, port: int | None, scheme: str) -> str | None:
    if not netloc_host:
        return None
    host = netloc_host.lower().rstrip(".")
    if not host:
        return None
    if ":" in host:  # IPv6 literal: urlsplit strips the brackets
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        return f"{host}:{port}"
    return host


def normalize_origin(value: str) -> str | None:
    """`scheme://host[:port]`, lowercased, default port dropped; None when not an origin.

    `null` (sandboxed frames, file: pages) and anything with a path, query, fragment or
    credentials is not an origin.
    """
    value = value.strip()
    if not value or value.lower() == "null" or any(ord(c) < 33 or ord(c) > 126 for c in value):
        return None
    try:
        parsed = urlsplit(value)
        port = parsed.port
    except ValueError:
        return None
    scheme = parsed.scheme.lower()
    if not scheme or parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        return None
    if parsed.username is not None or parsed.password is not None:
        return None
    host = _host_port(parsed.hostname, port, scheme)
    return f"{scheme}://{host}" if host else None


def _entry_matches(entry: str, origin: str) -> bool:
    entry = entry.strip()
    if entry == "*":
        return True
    if "://*." in entry:
        scheme, _, rest = entry.partition("://*.")
        suffix = normalize_origin(f"{scheme}://{rest}")
        if suffix is None:
            return False
        suffix_scheme, _, suffix_host = suffix.partition("://")
        origin_scheme, _, origin_host = origin.partition("://")
        return origin_scheme == suffix_scheme and origin_host.endswith("." + suffix_host)
    return normalize_origin(entry) == origin


def origin_allowed(tenant_origins: Sequence[str], origin_header: str | None) -> bool:
    """May a request carrying `origin_header` act for a tenant with this allow-list?"""
    if not tenant_origins or origin_header is None:
        return True
    origin = normalize_origin(origin_header)
    if origin is None:
        return any(entry.strip() == "*" for entry in tenant_origins)
    return any(_entry_matches(entry, origin) for entry in tenant_origins)


def same_origin(origin_header: str | None, host_header: str | None) -> bool:
    """Does the page come from this server itself (its dashboards, its demo page)?

    The browser sets both headers; a page elsewhere cannot make its Origin match our Host.
    """
    if not origin_header or not host_header:
        return False
    origin = normalize_origin(origin_header)
    if origin is None:
        return False
    scheme, _, origin_host = origin.partition("://")
    try:
        parsed = urlsplit(f"{scheme}://{host_header.strip()}")
        host = _host_port(parsed.hostname, parsed.port, scheme)
    except ValueError:
        return False
    return host is not None and host == origin_host


Loader = Callable[[str], Awaitable[Sequence[str]]]


class OriginCache:
    """Allow-lists by tenant for `ttl_s`: the CLI changes them from another process, and a
    lookup per long-poll request would cost a store read each."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, tuple[str, ...]]] = {}

    async def get(self, tenant: str, load: Loader) -> tuple[str, ...]:
        now = self._clock()
        cached = self._entries.get(tenant)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        origins = tuple(await load(tenant))
        if self.ttl_s > 0:
            if len(self._entries) >= MAX_CACHED_TENANTS:
                self._entries.clear()  # rare: cheaper than tracking recency on every hit
            self._entries[tenant] = (now, origins)
        return origins

    def invalidate(self, tenant: str | None = None) -> None:
        if tenant is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant, None)
