"""A real Warmline server in its own process, on a port the OS picks, for tests.

Readiness is read from the server's own log ("Warmline listening on …"), not guessed with
sleeps; the demo tokens come from what `warmline serve --demo` prints.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

# Servers still running when the test process exits (an interrupted run skips fixture
# teardown) are killed rather than left behind holding ports and CPU.
_LIVE: set[ServerProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


READY = re.compile(r"Warmline listening on http://[\d.]+:(\d+)")
START_TIMEOUT_S = 60.0


class ServerProcess:
    def __init__(
        self,
        db: str | Path,
        *,
        demo: bool = True,
        port: int = 0,
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
        node_id: str = "",
    ) -> None:
        self.db = str(db)
        self.demo = demo
        self.port = port
        self.redis_url = redis_url
        self.extra_env = dict(env or {})
        self.node_id = node_id
        self.proc: subprocess.Popen[str] | None = None
        self.agent_token = ""
        self.supervisor_token = ""
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    # Addresses -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, role: str = "customer") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws/{role}"

    # Lifecycle -------------------------------------------------------------------------------
    def start(self) -> ServerProcess:
        command = [
            sys.executable,
            "-m",
            "warmline.cli",
            "serve",
            "--db",
            self.db,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.demo:
            command.append("--demo")
        if self.redis_url:
            command += ["--redis-url", self.redis_url]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "WARMLINE_LOG_LEVEL": "warning",
            **self.extra_env,
        }
        env.pop("PORT", None)
        if self.node_id:
            env["WARMLINE_NODE_ID"] = self.node_id
        self._ready.clear()
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        _LIVE.add(self)
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-40:]))
        if self.proc.poll() is not None:
            raise RuntimeError("server exited:\n" + "".join(self.lines[-40:]))
        return self

    def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Agent token:" in line:
                self.agent_token = line.split(":", 1)[1].strip()
            elif "Supervisor token:" in line:
                self.supervisor_token = line.split(":", 1)[1].strip()
            match = READY.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # exited: let start() notice instead of waiting out the timeout

    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain) and wait; SIGKILL if it does not stop in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _LIVE.discard(self)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
        _LIVE.discard(self)

    def restart(self) -> ServerProcess:
        """Stop gracefully and start again on the same port and database."""
        self.stop()
        return self.start()

    # Convenience -----------------------------------------------------------------------------
    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kwargs)

    def client_delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.delete(self.url + path, timeout=30, **kwargs)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `warmline ARGS --db <this db>` and return the completed process."""
        return run_cli(*args, "--db", self.db, env=self.extra_env)

    def add_agent(self, name: str, tenant: str = "demo", role: str = "agent") -> str:
        result = self.cli("agent", "add", "--tenant", tenant, "--name", name, "--role", role)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(timeout=15)
        self.kill()


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmline.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def running_server(
    tmp_path: Path, name: str = "warmline.db", **kwargs: Any
) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / name, **kwargs)
    with server:
        yield server


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll a cheap condition until true (for state outside this process, e.g. a file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
