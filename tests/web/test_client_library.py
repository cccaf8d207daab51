"""The browser client library's reconnect logic, driven in Chromium with a scripted fake
WebSocket (timings are tiny, so every branch runs in well under a second)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.web.conftest import Pages

SCRIPT = (Path(__file__).parent / "client_library_check.js").read_text()


def test_client_reconnect_logic(pages: Pages, server: Any) -> None:
    page = pages.open(server.url + "/healthz", "lib")
    out = page.evaluate(SCRIPT)

    # full jitter: never above min(cap, base * 2^n), and can be 0
    assert out["backoffMax"] == [499, 999, 1999, 3999, 7999, 9999, 9999, 9999]
    assert out["backoffMin"] == 0

    assert out["hello1"] == {"type": "hello", "tenant": "acme"}
    assert out["msg1"]["text"] == "hello there" and len(out["msg1"]["id"]) == 36
    assert out["hello2"] == {"type": "hello", "tenant": "acme", "token": "T1", "last_seq": 1}
    assert [f["id"] for f in out["resent"]] == [out["msg1"]["id"]]  # same id, once
    assert out["outboxAfterAck"] == 0
    assert out["seen"] == [1, 2]  # deduped by seq

    assert 350 <= out["deadAfterMs"] < 2000  # 2 x 0.2 s of silence
    assert out["pings"] >= 1
    assert 140 <= out["reconnectAfterMs"] < 1000  # after_ms honoured
    assert out["hello4"] == {"type": "hello", "tenant": "acme", "token": "T1", "last_seq": 2}
    assert out["stored"] == {"token": "T1", "last": "2", "conversation": "c1"}
    assert out["reloadHello"] == {"type": "hello", "tenant": "acme", "token": "T1", "last_seq": 2}

    assert out["transports"] == ["websocket", "longpoll"]
    assert out["wsAttemptsBeforeFallback"] == 3
    pages.assert_clean(allow_network_errors=True)
