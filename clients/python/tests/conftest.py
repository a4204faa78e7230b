"""A real nats-server and a real `herald-gateway serve` per test module, and a raw SSE client
that reads the wire format itself."""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "clients" / "python" / "src"))

SECRET = "python-test-secret-0123456789abcdef"
PUBLISH_KEY = "python-test-publisher-key-0123456789"
KEYS = REPO / "gateway" / "tests" / "fixtures" / "keys"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, cond: Any, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Nats:
    def __init__(self, directory: pathlib.Path) -> None:
        binary = os.environ.get("HERALD_TEST_NATS_SERVER") or str(REPO / ".venv" / "bin" / "nats-server")
        for _ in range(5):
            self.port = free_port()
            log = open(directory / "nats.log", "ab")
            self.process = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(directory)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            try:
                wait_for("nats-server", lambda: connects(self.port) or self.process.poll() is not None)
            except TimeoutError:
                self.process.kill()
                raise
            if self.process.poll() is None:
                return
        raise RuntimeError((directory / "nats.log").read_text())

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class Gateway:
    def __init__(self, nats: Nats, directory: pathlib.Path) -> None:
        binary = os.environ.get("HERALD_GATEWAY_BIN") or str(REPO / "target" / "debug" / "herald-gateway")
        (directory / "jwt.secret").write_text(SECRET)
        (directory / "publish.keys").write_text(f"python:{PUBLISH_KEY}\n")
        keys = directory / "keys"
        keys.mkdir()
        # The EC test key's public half, as key id `ec`.
        (keys / "ec.pem").write_bytes((KEYS / "ec.pem").read_bytes())
        self.process = subprocess.Popen(
            [
                binary, "serve", "--listen", "127.0.0.1:0", "--nats-url", nats.url,
                "--jwt-secret-file", str(directory / "jwt.secret"),
                "--jwt-public-key-file", str(keys / "ec.pem"),
                "--publish-keys-file", str(directory / "publish.keys"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "RUST_LOG": "info"},
        )
        self.log: list[str] = []
        found: list[str] = []

        def read() -> None:
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode(errors="replace")
                self.log.append(line)
                if m := re.search(r"listening on (http://[0-9.]+:\d+)", line):
                    found.append(m.group(1))

        threading.Thread(target=read, daemon=True).start()
        wait_for("the gateway to listen", lambda: bool(found))
        self.url = found[0]
        wait_for("the gateway to be ready", self.ready)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class Stream:
    """An SSE stream read from a raw socket: events as dicts of `event`, `id`, `data`."""

    def __init__(self, url: str, token: str, channels: list[str]) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        target = "/events" + (f"?channels={','.join(channels)}" if channels else "")
        self.sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        self.raw = b""
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ")[1])
        self.head = head.decode()
        self.chunked = "transfer-encoding: chunked" in self.head.lower()
        self.buffer = b""

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed: {self.raw!r}")
        self.raw += chunk

    def _dechunk(self) -> None:
        """Moves every complete chunk of the body from `raw` to `buffer`."""
        if not self.chunked:
            self.buffer, self.raw = self.buffer + self.raw, b""
            return
        while b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self.buffer += rest[:size]
            self.raw = rest[size + 2 :]

    def _until(self, marker: bytes) -> bytes:
        self._dechunk()
        while marker not in self.buffer:
            self._recv()
            self._dechunk()
        part, self.buffer = self.buffer.split(marker, 1)
        return part

    def next(self) -> dict[str, Any]:
        """The next event (heartbeat comments and chunk framing skipped)."""
        while True:
            block = self._until(b"\n\n").decode(errors="replace")
            event: dict[str, Any] = {"event": "message", "id": None, "data": None}
            data = []
            for line in block.splitlines():
                if line.startswith("event: "):
                    event["event"] = line[7:]
                elif line.startswith("id: "):
                    event["id"] = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            if data:
                # Herald's envelope: {"channel": …, "target": …, "data": <the published data>}.
                envelope = json.loads("\n".join(data))
                event["envelope"] = envelope
                event["data"] = envelope.get("data") if isinstance(envelope, dict) else envelope
                return event

    def until(self, marker_type: str) -> list[dict[str, Any]]:
        """Every event up to the first of type `marker_type` (not included)."""
        seen = []
        while (event := self.next())["event"] != marker_type:
            seen.append(event)
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def herald() -> Iterator[tuple[Nats, Gateway]]:
    with tempfile.TemporaryDirectory() as d:
        directory = pathlib.Path(d)
        (directory / "nats").mkdir()
        (directory / "gateway").mkdir()
        nats = Nats(directory / "nats")
        gateway = Gateway(nats, directory / "gateway")
        try:
            yield nats, gateway
        finally:
            gateway.stop()
            nats.stop()
