"""A real `redis-server` for tests: a free port, no persistence, restartable on the same port.

    with RedisServer() as redis:
        bus = RedisBus(redis.url)
        ...
        redis.stop()      # Redis goes away (SIGTERM; `kill=True` for SIGKILL)
        redis.start()     # and comes back on the same port, empty

`pause()`/`resume()` (SIGSTOP/SIGCONT) make Redis hang without closing any socket, the
failure that only a liveness probe notices. Async tests use the `a*` variants, which run the
blocking parts in a thread so the event loop (and the bus under test) keeps running.

Readiness is event-driven: a thread drains the server's log and flags the "Ready to accept
connections" line, then a PING confirms it; no fixed sleeps anywhere.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from types import TracebackType

READY_LINE = "Ready to accept connections"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """One inline PING over a fresh socket; True only for a +PONG answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: str = "redis-server",
        startup_timeout: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise RedisServerError(f"{binary} is not on PATH")
        self.binary = path
        self.host = host
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(host)
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.log: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None
        self._dir = tempfile.mkdtemp(prefix="warmline-redis-")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", "",
            "--dir", self._dir,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        """Start (or restart, on the same port) and return once it answers PING."""
        if self.running:
            return self
        # A free port picked by us may be taken by someone else before redis binds it;
        # then pick another. A port the test fixed (a restart) is never changed.
        tries = 1 if self._fixed_port or self._proc is not None else 3
        for attempt in range(tries):
            if self._spawn():
                return self
            if attempt + 1 < tries:
                self.port = free_port(self.host)
        raise RedisServerError(
            f"redis-server did not become ready on port {self.port}:\n" + "\n".join(self.log[-20:])
        )

    def _spawn(self) -> bool:
        ready = threading.Event()
        proc = subprocess.Popen(
            self._argv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._proc = proc
        stdout = proc.stdout
        assert stdout is not None

        def drain() -> None:
            # Reading until EOF also keeps the pipe from filling up and blocking redis.
            for line in stdout:
                self.log.append(line.rstrip("\n"))
                if READY_LINE in line:
                    ready.set()
            ready.set()  # EOF: the process is gone; wake the waiter so it can tell

        self._drain = threading.Thread(target=drain, name=f"redis-log-{self.port}", daemon=True)
        self._drain.start()
        deadline = time.monotonic() + self.startup_timeout
        ready.wait(self.startup_timeout)
        # The log line means the listener is bound; the PING proves it answers. The loop is
        # bounded by the deadline, and each PING blocks on the socket rather than sleeping.
        while proc.poll() is None and time.monotonic() < deadline:
            if ping(self.host, self.port, timeout=max(0.05, deadline - time.monotonic())):
                return True
            try:
                proc.wait(timeout=0.01)  # wakes at once if redis dies meanwhile
            except subprocess.TimeoutExpired:
                pass
        self._reap(kill=True)
        return False

    def _reap(self, kill: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            except ProcessLookupError:
                pass
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        if self._drain is not None:
            self._drain.join(timeout=5.0)
            self._drain = None
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) and wait for the process; the port stays reserved for start()."""
        self._reap(kill=kill)

    def pause(self) -> None:
        """SIGSTOP: sockets stay open but nothing is answered (a silent hang)."""
        if self._proc is not None and self.running:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self.running:
            os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self._reap(kill=False)
        shutil.rmtree(self._dir, ignore_errors=True)

    async def astart(self) -> RedisServer:
        return await asyncio.to_thread(self.start)

    async def astop(self, kill: bool = False) -> None:
        await asyncio.to_thread(self.stop, kill)

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
