"""Origin allow-lists: the pure matching, then a real server refusing other sites' pages on
both transports, for customers and agents, and a list changed from the CLI while it runs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.helpers.client import Client
from tests.helpers.server import ServerProcess, run_cli
from warmline.origins import OriginCache, normalize_origin, origin_allowed, same_origin

SHOP = "https://shop.example"
EVIL = "https://evil.example"


# Pure matching ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://Shop.Example", "https://shop.example"),
        ("https://shop.example:443", "https://shop.example"),
        ("https://shop.example/", "https://shop.example"),
        ("http://shop.example:8080", "http://shop.example:8080"),
        ("http://shop.example.:80", "http://shop.example"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("null", None),
        ("", None),
        ("shop.example", None),
        ("https://shop.example/path", None),
        ("https://shop.example?x=1", None),
        ("https://user:pw@shop.example", None),
        ("https://shop.example:99999", None),
        ("https://shop .example", None),
        ("https://shöp.example", None),
    ],
)
def test_normalize_origin(raw: str, expected: str | None) -> None:
    assert normalize_origin(raw) == expected


ALLOWED = (SHOP, "http://localhost:8080", "https://*.brand.example")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (SHOP, True),
        ("https://SHOP.example:443", True),
        ("http://shop.example", False),  # another scheme is another origin
        ("https://shop.example:8443", False),
        ("https://shop.example.evil.example", False),
        ("https://evilshop.example", False),
        ("http://localhost:8080", True),
        ("http://localhost:8081", False),
        ("https://eu.brand.example", True),
        ("https://a.b.brand.example", True),
        ("https://brand.example", False),  # the wildcard is for subdomains only
        ("https://xbrand.example", False),
        ("null", False),
        ("", False),
        (EVIL, False),
        (None, True),  # not a browser: no Origin at all
    ],
)
def test_origin_allowed(origin: str | None, allowed: bool) -> None:
    assert origin_allowed(ALLOWED, origin) is allowed


def test_no_list_accepts_any_origin_and_star_accepts_all() -> None:
    assert origin_allowed((), EVIL) and origin_allowed((), "null")
    assert origin_allowed(("*",), EVIL) and origin_allowed(("*",), "null")


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://chat.example", "chat.example", True),
        ("https://chat.example", "chat.example:443", True),
        ("http://chat.example", "chat.example:8080", False),
        (EVIL, "chat.example", False),
        ("null", "chat.example", False),
        (None, "chat.example", False),
        ("https://chat.example", None, False),
    ],
)
def test_same_origin(origin: str | None, host: str | None, same: bool) -> None:
    assert same_origin(origin, host) is same


async def test_origin_cache_keeps_lists_for_its_ttl() -> None:
    now = [0.0]
    cache = OriginCache(5.0, clock=lambda: now[0])
    loads: list[str] = []

    async def load(tenant: str) -> tuple[str, ...]:
        loads.append(tenant)
        return (SHOP,)

    assert await cache.get("shop", load) == (SHOP,)
    assert await cache.get("shop", load) == (SHOP,)
    assert loads == ["shop"]
    now[0] = 5.0
    await cache.get("shop", load)
    assert loads == ["shop", "shop"]
    cache.invalidate("shop")
    await cache.get("shop", load)
    assert len(loads) == 3


# A real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("origins") / "warmline.db"
    # Lists are read on every check, so a change from the CLI applies at once.
    with ServerProcess(db, env={"WARMLINE_ORIGIN_CACHE_S": "0"}) as server:
        result = server.cli(
            "tenant", "add", "shop", "--allowed-origin", SHOP,
            "--allowed-origin", "https://*.shop.example",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        yield server


async def test_customer_from_an_allowed_origin_is_welcome(server: ServerProcess) -> None:
    for origin in (SHOP, "https://www.shop.example"):
        client, welcome = await Client.customer(server.ws_url(), tenant="shop", origin=origin)
        assert welcome["state"] == "bot"
        await client.close()


async def test_customer_from_another_origin_is_refused_at_hello_with_1008(
    server: ServerProcess,
) -> None:
    client = await Client.connect(server.ws_url(), origin=EVIL)
    error = await client.request({"type": "hello", "tenant": "shop"})
    assert error["type"] == "error" and error["code"] == "forbidden"
    assert await client.wait_closed() == 1008


async def test_a_resumed_session_from_another_origin_is_refused_too(server: ServerProcess) -> None:
    client, welcome = await Client.customer(server.ws_url(), tenant="shop", origin=SHOP)
    await client.close()
    hijack = await Client.connect(server.ws_url(), origin=EVIL)
    error = await hijack.request(
        {"type": "hello", "tenant": "shop", "token": welcome["token"], "last_seq": 0}
    )
    assert error["code"] == "forbidden"
    assert await hijack.wait_closed() == 1008


async def test_handshake_naming_the_tenant_is_refused_with_403(server: ServerProcess) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await Client.connect(server.ws_url() + "?tenant=shop", origin=EVIL)
    assert refused.value.response.status_code == 403
    client, _ = await Client.customer(server.ws_url() + "?tenant=shop", tenant="shop", origin=SHOP)
    await client.close()


async def test_without_origin_or_without_a_list_anything_goes(server: ServerProcess) -> None:
    # No Origin header: not a browser (curl, a server-side integration).
    client, _ = await Client.customer(server.ws_url(), tenant="shop")
    await client.close()
    # The demo tenant has no list: any origin, as before allow-lists existed.
    client, _ = await Client.customer(server.ws_url(), tenant="demo", origin=EVIL)
    await client.close()


async def test_the_servers_own_pages_are_always_allowed(server: ServerProcess) -> None:
    own = server.url  # http://127.0.0.1:<port>, what the browser sends from our own pages
    client, _ = await Client.customer(server.ws_url(), tenant="shop", origin=own)
    await client.close()


async def test_agents_of_a_listed_tenant_from_another_origin_are_refused(
    server: ServerProcess,
) -> None:
    token = server.add_agent("Shopkeeper", tenant="shop")
    refused = await Client.connect(server.ws_url("agent"), origin=EVIL)
    error = await refused.request({"type": "hello", "token": token})
    assert error["code"] == "forbidden"
    assert await refused.wait_closed() == 1008
    # From the dashboard this server serves, or from the shop's own site: fine.
    for origin in (server.url, SHOP):
        client = await Client.connect(server.ws_url("agent"), origin=origin)
        welcome = await client.request({"type": "hello", "token": token, "status": "away"})
        assert welcome["type"] == "welcome"
        await client.close()


async def test_long_polling_from_another_origin_is_refused_with_403(server: ServerProcess) -> None:
    send, poll = server.url + "/v1/lp/customer/send", server.url + "/v1/lp/customer/poll"
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.post(
            send, json={"type": "hello", "tenant": "shop"}, headers={"Origin": EVIL}
        )
        assert refused.status_code == 403 and refused.json()[0]["code"] == "forbidden"
        welcome = await http.post(
            send, json={"type": "hello", "tenant": "shop"}, headers={"Origin": SHOP}
        )
        assert welcome.status_code == 200
        token = welcome.json()[0]["token"]
        # The session token does not open the door from another site either.
        for request in (
            http.post(send, json={"type": "ping", "token": token}, headers={"Origin": EVIL}),
            http.post(
                send,
                json={"type": "message", "id": "m1", "text": "hi", "token": token},
                headers={"Origin": EVIL},
            ),
            http.get(poll, params={"token": token, "timeout": "0"}, headers={"Origin": EVIL}),
        ):
            response = await request
            if response.json() == [{"type": "pong"}]:
                continue  # ping needs no session: it names no tenant
            assert response.status_code == 403, response.text
        ok = await http.get(poll, params={"token": token, "timeout": "0"}, headers={"Origin": SHOP})
        assert ok.status_code == 200


async def test_set_origins_on_an_existing_tenant_applies_to_a_running_server(
    server: ServerProcess,
) -> None:
    result = server.cli("tenant", "add", "late")
    assert result.returncode == 0, result.stderr
    client, _ = await Client.customer(server.ws_url(), tenant="late", origin=EVIL)
    await client.close()
    result = server.cli("tenant", "set-origins", "late", "--allowed-origin", SHOP)
    assert result.returncode == 0, result.stderr
    refused = await Client.connect(server.ws_url(), origin=EVIL)
    assert (await refused.request({"type": "hello", "tenant": "late"}))["code"] == "forbidden"
    client, _ = await Client.customer(server.ws_url(), tenant="late", origin=SHOP)
    await client.close()
    # No origins: any again.
    assert server.cli("tenant", "set-origins", "late").returncode == 0
    client, _ = await Client.customer(server.ws_url(), tenant="late", origin=EVIL)
    await client.close()
    listed = run_cli("tenant", "list", "--db", server.db)
    assert "late\tlate\torigins=*" in listed.stdout
