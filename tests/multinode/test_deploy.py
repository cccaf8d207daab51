"""deploy/run-local.sh and deploy/nginx.conf for real: two nodes, Redis and nginx, all driven
through the balancer. Skipped where nginx or redis-server is not installed (CI installs both).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.client import Client
from tests.helpers.redis_server import free_port
from tests.multinode.support import assert_exact, events_of, transcript, wait_for_seq

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "run-local.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("redis-server") is None,
    reason="needs nginx and redis-server",
)


class LocalCluster:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.port = free_port()
        self.node_ports = [free_port(), free_port()]
        self.lines: list[str] = []
        self._ready = threading.Event()
        env = {
            **os.environ,
            "PORT": str(self.port),
            "NODE_PORTS": " ".join(map(str, self.node_ports)),
            "REDIS_PORT": str(free_port()),
            "RUN_DIR": str(run_dir),
            "WARMLINE_BIN": f"{sys.executable} -m warmline.cli",
            "WARMLINE_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(
            ["bash", str(SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Cluster ready" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 90.0) -> None:
        assert self._ready.wait(timeout), "cluster did not come up"
        assert self.proc.poll() is None, "".join(self.lines)

    def token(self, who: str) -> str:
        line = next(line for line in self.lines if f"{who} token:" in line)
        return line.split(":", 1)[1].strip()

    def pid(self, name: str) -> int:
        return int((self.run_dir / f"{name}.pid").read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws/customer"

    def stop(self) -> int:
        """SIGTERM to the script only: it must take everything down itself."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self._reader.join(5)

    def kill_everything(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "run")
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()
        cluster.kill_everything()


async def connections_per_node(cluster: LocalCluster) -> list[float]:
    counts = []
    async with httpx.AsyncClient(timeout=5) as http:
        for port in cluster.node_ports:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            counts.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith('warmline_connections{role="customer"')
                )
            )
    return counts


async def test_run_local_behind_nginx_survives_a_node_kill(local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(cluster.url + "/lb-healthz")).status_code == 200
        ready = await http.get(cluster.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["bus"] == "ok"
        assert (await http.get(cluster.url + "/metrics")).status_code == 404

    # WebSockets through nginx, spread over both nodes by least_conn.
    customers = [await Client.customer(cluster.ws) for _ in range(4)]
    assert await connections_per_node(cluster) == [2.0, 2.0]
    for client, welcome in customers:
        ack = await client.request({"type": "message", "id": "m1", "text": "How do refunds work?"})
        assert ack["type"] == "ack"
        await wait_for_seq(client, welcome["conversation_id"], ack["seq"])

    # Node 1 dies. Its customers reconnect through nginx, which skips the dead node, and
    # resume by token and seq; everyone goes on without a lost or doubled event.
    os.kill(cluster.pid("node-1"), signal.SIGKILL)
    resumed = []
    for client, welcome in customers:
        cid = welcome["conversation_id"]
        try:
            ack = await client.request({"type": "message", "id": "m2", "text": "Thanks!"})
            assert ack["type"] == "ack"
            resumed.append((client, client, welcome, ack["seq"]))
            continue
        except Exception:
            pass  # this one was on node 1
        last = events_of(client, cid)[-1]["seq"]
        again, _ = await Client.resume(cluster.ws, welcome["token"], last)
        ack = await again.request({"type": "message", "id": "m2", "text": "Thanks!"})
        assert ack["type"] == "ack"
        resumed.append((client, again, welcome, ack["seq"]))
    assert sum(1 for old, new, _, _ in resumed if old is not new) == 2
    for old, new, welcome, seq in resumed:
        cid = welcome["conversation_id"]
        await wait_for_seq(new, cid, seq)
        # The bot may still be answering: compare with the transcript as it is now, once
        # the client has caught up with it.
        stored = await transcript(cluster.ws, welcome["token"])
        await wait_for_seq(new, cid, stored[-1]["seq"])
        seen = events_of(old, cid) + (events_of(new, cid) if new is not old else [])
        assert_exact([e for e in seen if e["seq"] <= stored[-1]["seq"]], stored)
        await new.close()
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(4):  # whichever node nginx tries first, the answer comes from node 2
            assert (await http.get(cluster.url + "/readyz")).status_code == 200

    # SIGTERM to the script stops every process it started.
    pids = [cluster.pid("node-2"), cluster.pid("redis"), cluster.pid("nginx")]
    started = time.monotonic()
    await asyncio.to_thread(cluster.stop)
    assert time.monotonic() - started < 30
    assert not any(alive(pid) for pid in pids)
