"""Serving with uvicorn, with Warmline's drain in front of uvicorn's own shutdown."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from realtime.wire import FramedWebSocketProtocol
from warmline.config import Config

log = logging.getLogger("warmline.server")

# Every chat message allocates frames, futures and handles that die young. At CPython's
# default thresholds (700, 10, 10) the cycle collector took ~14 % of the loop's time at
# 2,500 msgs/s; with these it does not run at all in steady chat (what a message allocates
# is freed before 10,000 pile up). It runs while many connections are being set up, and
# then a generation-1 pass can take 50-70 ms (bench/experiments, WL_EXP_STALLS).
GC_THRESHOLDS = (10_000, 20, 20)


class DrainingServer(uvicorn.Server):
    """On SIGTERM: tell every client to reconnect elsewhere (close 1012) and finish their
    writes, then let uvicorn stop listening, wait for requests and run the lifespan end."""

    def __init__(
        self,
        config: uvicorn.Config,
        app: Starlette,
        on_listening: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._app = app
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # What startup built (modules, the store, the demo, indexes) lives as long as the
            # process: out of the collector's way, so full collections walk only what
            # connections allocate.
            gc.collect()
            gc.freeze()
        if self.started and self._on_listening is not None:
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    self._on_listening(host, port)
                    return

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        runtime = getattr(self._app.state, "runtime", None)
        if runtime is not None:
            try:
                await runtime.drain()
            except Exception:
                log.exception("drain failed; shutting down anyway")
        await super().shutdown(sockets)


def uvicorn_config(app: Starlette, config: Config) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        # uvicorn refuses larger frames with 1009 before they reach the app; the app's own,
        # smaller limit answers `too_large` first for frames in between.
        # uvicorn's sans-I/O WebSocket protocol with a synchronous path for frames.
        ws=FramedWebSocketProtocol,
        ws_max_size=config.max_frame_bytes * 4,
        ws_ping_interval=config.heartbeat_s,
        # Browsers always offer permessage-deflate; accepting it doubles the memory of every
        # idle connection for little gain on short chat frames.
        ws_per_message_deflate=False,
        ws_ping_timeout=config.heartbeat_s,
        timeout_graceful_shutdown=int(config.drain_timeout_s) + 5,
        log_level=config.log_level,
        # warmline.logs configures every logger, uvicorn's too (JSON lines when asked).
        log_config=None,
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=config.forwarded_allow_ips,
    )


def serve(config: Config, on_listening: Callable[[str, int], None] | None = None) -> None:
    from warmline.app import create_app

    app = create_app(config)
    gc.set_threshold(*GC_THRESHOLDS)
    DrainingServer(uvicorn_config(app, config), app, on_listening).run()
