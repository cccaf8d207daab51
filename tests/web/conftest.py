"""Browser-test fixtures: one headless Chromium per module, a real Warmline server per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.server import ServerProcess

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
    # the cross-origin embed test serves its host page through Playwright, which Chromium
    # would otherwise treat as a public page reaching into loopback
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
    "PrivateNetworkAccessSendPreflights",
]


def _chromium_path() -> str | None:
    for candidate in (
        os.environ.get("WARMLINE_CHROMIUM"),
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = _chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "warmline.db", demo=True)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(timeout=15)
        proc.kill()


@dataclass
class Watched:
    """A page plus what it said: page errors, dialogs, console errors."""

    page: Any
    name: str
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


class Pages:
    """Opens pages in their own browser contexts (own storage), and closes them all."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.watched: list[Watched] = []

    def open(
        self,
        url: str,
        name: str,
        *,
        viewport: tuple[int, int] = (1280, 800),
        init_script: str | None = None,
        context: Any = None,
    ) -> Any:
        if context is None:
            context = self.browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}
            )
            context.set_default_timeout(15_000)
            self.contexts.append(context)
            if init_script:
                context.add_init_script(init_script)
        page = context.new_page()
        w = Watched(page, name)
        page.on("pageerror", lambda err: w.page_errors.append(str(err)))
        page.on(
            "console",
            lambda msg: w.console_errors.append(msg.text) if msg.type == "error" else None,
        )

        def on_dialog(dialog: Any) -> None:
            w.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        self.watched.append(w)
        page.goto(url)
        return page

    def assert_clean(self, allow_network_errors: bool = False) -> None:
        for w in self.watched:
            assert not w.dialogs, f"{w.name}: a dialog fired: {w.dialogs}"
            assert not w.page_errors, f"{w.name}: uncaught errors: {w.page_errors}"
            errors = w.console_errors
            if allow_network_errors:
                errors = [
                    e
                    for e in errors
                    if "WebSocket" not in e
                    and "Failed to load resource" not in e
                    and "ERR_CONNECTION_REFUSED" not in e
                ]
            assert not errors, f"{w.name}: console errors: {errors}"

    def close(self) -> None:
        for c in self.contexts:
            try:
                c.close()
            except Exception:
                pass


@pytest.fixture()
def pages(browser: Any) -> Iterator[Pages]:
    p = Pages(browser)
    try:
        yield p
    finally:
        p.close()
