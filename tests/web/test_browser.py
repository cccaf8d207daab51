"""End-to-end browser tests: real headless Chromium against real Warmline server processes.

No sleeps: every wait is on a DOM condition (Playwright's expect / wait_for_function).
Screenshots of the three pages land in the test's tmp dir; WARMLINE_SCREENSHOTS=DIR also
copies them there (how docs/screenshots/ was made).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import Pages

expect = pytest.importorskip("playwright.sync_api").expect
expect.set_options(timeout=10_000)

EVIL = "<img src=x onerror=alert(1)>"
QUESTION = "How long does delivery take?"


def widget(page: Any) -> Any:
    return page.locator("#warmline-widget")


def open_agent(pages: Pages, server: Any, presence: str = "away") -> Any:
    agent = pages.open(f"{server.url}/agent?token={server.agent_token}", "agent")
    expect(agent.locator("#conn")).to_have_attribute("data-status", "connected")
    agent.select_option("#presence", presence)
    return agent


def open_supervisor(pages: Pages, server: Any) -> Any:
    sup = pages.open(f"{server.url}/supervisor?token={server.supervisor_token}", "supervisor")
    expect(sup.locator("#conn")).to_have_attribute("data-status", "connected")
    return sup


def open_customer(pages: Pages, server: Any, **kwargs: Any) -> Any:
    page = pages.open(server.url + "/", kwargs.pop("name", "customer"), **kwargs)
    page.click("#open-chat")
    expect(widget(page).locator("textarea")).to_be_focused()
    return page


def say(page: Any, text: str) -> None:
    box = widget(page).locator("textarea")
    box.fill(text)
    box.press("Enter")


def ask_bot(page: Any) -> Any:
    """Ask the demo KB a question; wait for the streamed answer's final event and its sources."""
    say(page, QUESTION)
    w = widget(page)
    try:
        expect(w.locator(".wl-msg.customer:not(.pending)").filter(has_text=QUESTION)).to_have_count(
            1
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nclient: {client_state(page)}") from None
    answer = w.locator(".wl-msg.bot:not(.streaming)").last
    expect(answer.locator(".wl-sources a").first).to_have_attribute(
        "href", re.compile(r"^https?://")
    )
    return answer


def client_state(page: Any) -> Any:
    """The widget client's connection state, for failure messages."""
    return page.evaluate(
        """() => { const c = window.__warmlineClient; if (!c) return null;
        return {status: c.status, transport: c.transport, lpWelcomed: c._lpWelcomed,
                outbox: c.outbox.size, probing: c._probing, socket: c._sock && c._sock.status,
                failures: c._sock && c._sock.failuresInARow, lastSeq: c.lastSeq}; }"""
    )


def bubbles(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_text_contents()]


def save_shots(tmp_path: Path, shots: dict[str, Any]) -> None:
    out = tmp_path / "screenshots"
    out.mkdir(exist_ok=True)
    for name, page in shots.items():
        page.screenshot(path=str(out / name))
    target = os.environ.get("WARMLINE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for name in shots:
            shutil.copy(out / name, Path(target) / name)


def test_customer_agent_and_supervisor_together(pages: Pages, server: Any, tmp_path: Path) -> None:
    sup = open_supervisor(pages, server)
    agent = open_agent(pages, server, presence="away")  # away: nothing is auto-assigned
    expect(sup.locator('[data-k="agents_hint"]')).to_contain_text("1 away")
    points_before = int(sup.locator("#chart-depth").get_attribute("data-points") or "0")

    customer = open_customer(pages, server)
    w = widget(customer)
    ask_bot(customer)

    # ask for a person: place in line and an estimated wait
    w.get_by_role("button", name="Talk to a person").click()
    banner = w.locator(".wl-banner")
    expect(banner).to_contain_text("Connecting you to a person")
    expect(banner).to_contain_text(re.compile(r"number 1 in line .* estimated wait"))

    # the supervisor's numbers and chart move
    expect(sup.locator('[data-k="queue_depth"]')).to_have_text("1")
    expect(sup.locator("#chart-depth")).to_have_attribute("data-last", "1")
    expect(sup.locator('.bar[data-state="queued"] .n')).to_have_text("1")
    assert int(sup.locator("#chart-depth").get_attribute("data-points") or "0") > points_before

    # the agent sees it in the queue, waiting time ticking, and claims it
    item = agent.locator("#queue .qitem")
    expect(item).to_have_count(1)
    expect(item.locator(".preview")).to_contain_text(QUESTION)
    first = item.locator(".wait").text_content()
    expect(item.locator(".wait")).not_to_have_text(first or "")
    item.get_by_role("button", name=re.compile("^Claim")).click()

    expect(banner).to_contain_text("Alex joined")
    expect(agent.locator("#convo-title")).to_be_visible()
    expect(agent.locator("#context .handoff")).to_contain_text("Request human")
    expect(agent.locator("#transcript .msg.bot")).to_have_count(1)
    expect(agent.locator("#mine .citem")).to_have_count(1)
    expect(sup.locator('[data-k="queue_depth"]')).to_have_text("0")
    expect(sup.locator("#chart-depth")).to_have_attribute("data-last", "0")
    expect(sup.locator('.bar[data-state="human"] .n')).to_have_text("1")

    # both chat, with typing indicators
    agent.locator("#reply").fill("Hi, this is Alex. Let me check your order.")
    expect(w.locator(".wl-typing")).to_contain_text("Alex is typing")
    agent.locator("#reply").press("Enter")
    expect(w.locator(".wl-msg.agent .wl-bubble")).to_have_text(
        ["Hi, this is Alex. Let me check your order."]
    )
    expect(w.locator(".wl-typing")).to_have_text("")

    w.locator("textarea").fill("Thanks! It is order 1042.")
    expect(agent.locator("#typing")).to_contain_text("is typing")
    w.locator("textarea").press("Enter")
    expect(agent.locator("#transcript .msg.customer .bubble").last).to_have_text(
        "Thanks! It is order 1042."
    )
    expect(agent.locator("#typing")).to_have_text("")
    agent.locator("#reply").fill("It ships tomorrow morning.")
    agent.locator("#reply").press("Enter")
    expect(w.locator(".wl-msg.agent .wl-bubble").last).to_have_text("It ships tomorrow morning.")
    expect(agent.locator("#transcript .msg.agent.pending")).to_have_count(0)

    save_shots(
        tmp_path,
        {
            "customer-widget.png": customer,
            "agent-dashboard.png": agent,
            "supervisor-dashboard.png": sup,
        },
    )

    # the agent resolves, the customer rates
    agent.get_by_role("button", name="Resolve").click()
    expect(agent.locator("#convo-state")).to_have_text("Resolved")
    rate = w.locator(".wl-rate")
    expect(rate).to_be_visible()
    expect(sup.locator('.bar[data-state="resolved"] .n')).to_have_text("1")
    rate.get_by_role("radio", name="5 stars").click()
    expect(rate).to_be_hidden()
    expect(w.locator(".wl-note").last).to_contain_text("Thanks for your feedback")
    expect(sup.locator('[data-k="rating_avg"]')).to_have_text("5.0")

    # every persistent event is on the customer's page once
    seqs = w.locator(".wl-msg[data-seq]").evaluate_all("ns => ns.map(n => Number(n.dataset.seq))")
    assert len(seqs) == len(set(seqs)) == 5, seqs  # question, answer, agent, customer, agent
    pages.assert_clean()


def test_markup_in_messages_and_names_stays_text(pages: Pages, server: Any) -> None:
    server.add_agent(EVIL)  # a hostile agent name: the supervisor's table and the transfer list
    sup = open_supervisor(pages, server)
    expect(sup.locator("#agents td").filter(has_text=EVIL)).to_have_count(1)
    agent = open_agent(pages, server, presence="away")
    expect(sup.locator('[data-k="agents_hint"]')).to_contain_text("1 away")

    customer = open_customer(pages, server)
    w = widget(customer)
    say(customer, EVIL)
    expect(w.locator(".wl-msg.customer:not(.pending) .wl-bubble")).to_have_text([EVIL])
    expect(w.locator(".wl-msg.bot:not(.streaming)")).to_have_count(1)
    w.get_by_role("button", name="Talk to a person").click()

    item = agent.locator("#queue .qitem")
    expect(item.locator(".preview")).to_have_text(EVIL)
    item.get_by_role("button", name=re.compile("^Claim")).click()
    expect(agent.locator("#transcript .msg.customer .bubble").first).to_have_text(EVIL)
    expect(agent.locator("#context")).to_contain_text(EVIL)  # the handoff summary quotes it
    agent.locator("#reply").fill(EVIL)
    agent.locator("#reply").press("Enter")
    expect(w.locator(".wl-msg.agent .wl-bubble")).to_have_text([EVIL])
    expect(agent.locator("#mine .citem .last")).to_have_text(f"You: {EVIL}")
    agent.locator("#btn-transfer").click()
    expect(agent.locator("#transfer-select option").filter(has_text=EVIL)).to_have_count(1)
    agent.keyboard.press("Escape")

    for page, scope in ((customer, "#warmline-widget"), (agent, "body"), (sup, "body")):
        assert page.locator(f"{scope} img").count() == 0
    pages.assert_clean()


def test_widget_works_over_long_polling(pages: Pages, server: Any) -> None:
    agent = open_agent(pages, server, presence="online")
    customer = open_customer(pages, server, init_script="delete window.WebSocket;")
    w = widget(customer)
    ask_bot(customer)
    expect(w).to_have_attribute("data-transport", "longpoll")
    w.get_by_role("button", name="Talk to a person").click()
    # the agent is online with capacity: the dispatcher assigns it straight away
    expect(agent.locator("#mine .citem")).to_have_count(1)
    expect(w.locator(".wl-banner")).to_contain_text("Alex joined")
    agent.locator("#reply").fill("Hello over long polling")
    expect(w.locator(".wl-typing")).to_contain_text("is typing")
    agent.locator("#reply").press("Enter")
    expect(w.locator(".wl-msg.agent .wl-bubble")).to_have_text(["Hello over long polling"])
    say(customer, "Got it")
    expect(agent.locator("#transcript .msg.customer .bubble").last).to_have_text("Got it")
    # The agent can see it before the widget's own long poll brings the ack back.
    expect(w.locator(".wl-msg.customer:not(.pending)")).to_have_count(2)
    seqs = w.locator(".wl-msg[data-seq]").evaluate_all("ns => ns.map(n => Number(n.dataset.seq))")
    assert len(seqs) == len(set(seqs)) == 4, seqs
    pages.assert_clean()


def test_long_polling_switches_back_to_websocket(pages: Pages, server: Any) -> None:
    """WebSockets refused at first: long polling; once they work, back to the WebSocket with
    nothing lost or repeated."""
    context = pages.browser.new_context(viewport={"width": 1280, "height": 800})
    pages.contexts.append(context)
    context.set_default_timeout(15_000)
    context.add_init_script("window.WarmlineConfig = {wsRetryMs: 500};")
    blocked = {"on": True}

    def route(ws: Any) -> None:
        if blocked["on"]:
            ws.close()
        else:
            ws.connect_to_server()

    context.route_web_socket(re.compile(r".*/v1/ws/customer$"), route)
    customer = pages.open(server.url + "/", "customer", context=context)
    customer.click("#open-chat")
    w = widget(customer)
    ask_bot(customer)
    expect(w).to_have_attribute("data-transport", "longpoll")
    blocked["on"] = False
    expect(w).to_have_attribute("data-transport", "websocket")
    expect(w).to_have_attribute("data-status", "connected")
    say(customer, "Still there?")
    expect(w.locator(".wl-msg.customer:not(.pending)")).to_have_count(2)
    expect(w.locator(".wl-msg.bot:not(.streaming)")).to_have_count(2)
    seqs = w.locator(".wl-msg[data-seq]").evaluate_all("ns => ns.map(n => Number(n.dataset.seq))")
    assert len(seqs) == len(set(seqs)) == 4, seqs
    pages.assert_clean(allow_network_errors=True)


def test_server_restart_and_page_reload_lose_and_repeat_nothing(pages: Pages, server: Any) -> None:
    agent = open_agent(pages, server, presence="online")
    customer = open_customer(pages, server)
    w = widget(customer)
    ask_bot(customer)
    w.get_by_role("button", name="Talk to a person").click()
    expect(w.locator(".wl-banner")).to_contain_text("Alex joined")
    agent.locator("#reply").fill("Before the restart")
    agent.locator("#reply").press("Enter")
    expect(w.locator(".wl-msg.agent .wl-bubble")).to_have_text(["Before the restart"])

    server.restart()  # SIGTERM: drain (reconnect frames, close 1012), then a new process

    # both pages come back on their own and carry on
    expect(w).to_have_attribute("data-status", "connected", timeout=30_000)
    expect(agent.locator("#conn")).to_have_attribute("data-status", "connected", timeout=30_000)
    say(customer, "After the restart")
    expect(agent.locator("#transcript .msg.customer .bubble").last).to_have_text(
        "After the restart"
    )
    agent.locator("#reply").fill("Still here")
    agent.locator("#reply").press("Enter")
    expect(w.locator(".wl-msg.agent .wl-bubble")).to_have_text(["Before the restart", "Still here"])
    expected_customer = [QUESTION, "After the restart"]
    expect(w.locator(".wl-msg.customer .wl-bubble")).to_have_text(expected_customer)
    expect(agent.locator("#transcript .msg.customer .bubble")).to_have_text(expected_customer)
    expect(agent.locator("#transcript .msg.agent .bubble")).to_have_text(
        ["Before the restart", "Still here"]
    )
    before = w.locator(".wl-msg[data-seq]").evaluate_all("ns => ns.map(n => Number(n.dataset.seq))")
    assert len(before) == len(set(before)) == 5, before

    # a crash this time (no drain, no close frame): the same, through the dead-socket path
    server.kill()
    expect(w).not_to_have_attribute("data-status", "connected")
    say(customer, "Written while offline")  # waits in the outbox
    expect(w.locator(".wl-msg.customer.pending")).to_have_count(1)
    server.start()
    expect(w).to_have_attribute("data-status", "connected", timeout=30_000)
    expect(agent.locator("#conn")).to_have_attribute("data-status", "connected", timeout=30_000)
    expected_customer.append("Written while offline")
    expect(agent.locator("#transcript .msg.customer .bubble")).to_have_text(expected_customer)
    expect(w.locator(".wl-msg.customer:not(.pending) .wl-bubble")).to_have_text(expected_customer)
    before = w.locator(".wl-msg[data-seq]").evaluate_all("ns => ns.map(n => Number(n.dataset.seq))")
    assert len(before) == len(set(before)) == 6, before

    # a reload resumes the same conversation with its whole transcript, once
    customer.reload()
    w = widget(customer)
    expect(w.locator(".wl-msg.agent .wl-bubble")).to_have_text(["Before the restart", "Still here"])
    expect(w.locator(".wl-msg.customer .wl-bubble")).to_have_text(expected_customer)
    expect(w.locator(".wl-banner")).to_contain_text("Alex joined")
    after = w.locator(".wl-msg[data-seq]").evaluate_all("ns => ns.map(n => Number(n.dataset.seq))")
    assert after == before
    say(customer, "And after the reload")
    expect(agent.locator("#transcript .msg.customer .bubble").last).to_have_text(
        "And after the reload"
    )
    expect(agent.locator("#transcript .msg.customer .bubble")).to_have_count(4)
    pages.assert_clean(allow_network_errors=True)


def test_widget_at_360px_and_keyboard(pages: Pages, server: Any, tmp_path: Path) -> None:
    page = pages.open(server.url + "/", "mobile", viewport=(360, 740))
    launcher = widget(page).locator(".wl-launcher")
    launcher.focus()
    page.keyboard.press("Enter")
    w = widget(page)
    expect(w.locator("textarea")).to_be_focused()
    panel = w.locator(".wl-panel")
    box = panel.bounding_box()
    assert box is not None and box["width"] <= 360 and box["x"] >= 0
    ask_bot(page)
    page.screenshot(path=str(tmp_path / "customer-widget-360.png"))
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(launcher).to_be_focused()
    pages.assert_clean()


def test_widget_embedded_on_another_site(pages: Pages, server: Any) -> None:
    """The one-tag embed on a page of another origin: the widget loads its client module from
    the Warmline server and chats from there."""
    shop = f"http://localhost:{server.port}"  # another origin than the server's 127.0.0.1
    cors = server.get("/static/warmline-client.js", headers={"Origin": shop}).headers.get(
        "access-control-allow-origin"
    )
    if not cors:
        pytest.xfail("no CORS header on /static/*.js: browsers refuse the cross-origin import")
    context = pages.browser.new_context(viewport={"width": 1000, "height": 760})
    pages.contexts.append(context)
    context.set_default_timeout(15_000)
    host_page = (
        "<!doctype html><html><head><title>Shop</title></head><body><h1>A shop</h1>"
        f'<script src="{server.url}/widget.js" data-tenant="demo" defer></script></body></html>'
    )
    context.route(
        f"{shop}/shop.html",
        lambda route: route.fulfill(status=200, content_type="text/html", body=host_page),
    )
    page = pages.open(f"{shop}/shop.html", "shop", context=context)
    launcher = widget(page).locator(".wl-launcher")
    expect(launcher).to_be_visible()
    launcher.click()
    answer = ask_bot(page)
    expect(answer.locator(".wl-sources a").first).to_have_attribute(
        "href", re.compile(r"^https?://")
    )
    pages.assert_clean()
