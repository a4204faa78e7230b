"""herald-publisher against a real gateway and nats-server: publishing to a user, a channel and
everyone over HTTP and over NATS, each event received once by a raw SSE client with the id the
call answered; a retry after a lost answer stored once; tokens minted with HS256 and ES256
granting exactly their channels; refusals as typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.request
from typing import Any

import pytest
from conftest import KEYS, PUBLISH_KEY, SECRET, Gateway, Nats, Stream

from herald_publisher import (
    AsyncPublisher,
    BadRequest,
    HeraldError,
    NatsPublisher,
    Publisher,
    Unauthorized,
    Unavailable,
    mint_token,
)


def stream(gateway: Gateway, user: str, channels: list[str], **claims: Any) -> Stream:
    token = mint_token(user=user, channels=channels, secret=SECRET, **claims)
    s = Stream(gateway.url, token, channels)
    assert s.status == 200, s.head
    assert s.next()["event"] == "connected"
    return s


def test_publishing_over_http_reaches_each_target_once_with_its_id(herald: tuple[Nats, Gateway]) -> None:
    _, gateway = herald
    s = stream(gateway, "ana", ["booking:42"])
    publisher = Publisher(gateway.url, PUBLISH_KEY)
    to_user = publisher.publish_to_user("ana", {"type": "notice", "data": {"n": 1}})
    to_channel = publisher.publish_to_channel("booking:42", {"type": "booking_update", "data": {"status": "confirmed"}})
    to_all = publisher.broadcast({"type": "maintenance", "data": {"at": "02:00"}})
    both = publisher.publish({"type": "both", "data": 4}, users=["ana"], channels=["booking:42"])
    publisher.publish_to_user("ana", {"type": "marker", "data": None})
    got = [(e["event"], e["id"], e["data"]) for e in s.until("marker")]
    assert got == [
        ("notice", to_user[0], {"n": 1}),
        ("booking_update", to_channel[0], {"status": "confirmed"}),
        ("maintenance", to_all[0], {"at": "02:00"}),
        ("both", both[0], 4),
        ("both", both[1], 4),
    ]
    s.close()


def test_the_async_publisher_does_the_same(herald: tuple[Nats, Gateway]) -> None:
    _, gateway = herald
    s = stream(gateway, "bo", [])
    ids = asyncio.run(AsyncPublisher(gateway.url, PUBLISH_KEY).publish_to_user("bo", {"type": "hi", "data": 1}))
    assert [(e["event"], e["id"]) for e in [s.next()]] == [("hi", ids[0])]
    s.close()


def test_publishing_over_nats_reaches_each_target_once_with_its_id(herald: tuple[Nats, Gateway]) -> None:
    import nats as nats_py

    server, gateway = herald
    s = stream(gateway, "cy", ["room:1"])

    async def publish() -> list[list[str]]:
        nc = await nats_py.connect(server.url)
        try:
            publisher = NatsPublisher(nc)
            return [
                await publisher.publish_to_user("cy", {"type": "notice", "data": {"n": 1}}),
                await publisher.publish_to_channel("room:1", {"type": "said", "data": "hello"}),
                await publisher.broadcast({"type": "everyone", "data": True}),
                await publisher.publish_to_user("cy", {"type": "marker", "data": None}),
            ]
        finally:
            await nc.close()

    user, channel, everyone, _ = asyncio.run(publish())
    got = [(e["event"], e["id"], e["data"]) for e in s.until("marker")]
    assert got == [("notice", user[0], {"n": 1}), ("said", channel[0], "hello"), ("everyone", everyone[0], True)]
    s.close()


class DropFirstAnswer:
    """A proxy to the gateway that forwards each request whole but, for the first one, closes the
    connection as soon as the answer starts instead of passing it back: the publish is stored,
    the publisher never hears so. Bytes are relayed as they come, however the client or the
    gateway splits its writes."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.requests += 1
            threading.Thread(target=self.relay, args=(client, self.requests > 1), daemon=True).start()

    def relay(self, client: socket.socket, answer: bool) -> None:
        with client, socket.create_connection(self.target) as upstream:
            threading.Thread(target=copy, args=(client, upstream), daemon=True).start()
            try:
                while chunk := upstream.recv(65536):
                    if not answer:
                        break  # the answer started: the request was read and stored
                    client.sendall(chunk)
            finally:
                # shutdown, not only close: the copying thread's recv holds the socket open
                for each in (client, upstream):
                    with contextlib.suppress(OSError):  # already gone
                        each.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def copy(source: socket.socket, to: socket.socket) -> None:
    with contextlib.suppress(OSError):  # either side closed
        while chunk := source.recv(65536):
            to.sendall(chunk)


def test_a_publish_whose_answer_is_lost_is_stored_once(herald: tuple[Nats, Gateway]) -> None:
    _, gateway = herald
    s = stream(gateway, "di", [])
    proxy = DropFirstAnswer(gateway.url)
    ids = Publisher(proxy.url, PUBLISH_KEY, backoff=0.05).publish_to_user("di", {"type": "once", "data": 1})
    assert proxy.requests == 2, "retried after the lost answer"
    Publisher(gateway.url, PUBLISH_KEY).publish_to_user("di", {"type": "marker", "data": None})
    assert [(e["event"], e["id"]) for e in s.until("marker")] == [("once", ids[0])], "stored once, the first ids"
    proxy.close()
    s.close()


def test_tokens_grant_exactly_their_channels_and_expire(herald: tuple[Nats, Gateway]) -> None:
    _, gateway = herald
    pem = (KEYS / "ec-private.pem").read_bytes()
    for token in (
        mint_token(user="ed", channels=["doc:*"], secret=SECRET),
        mint_token(user="ed", channels=["doc:*"], private_key=pem, kid="ec"),
    ):
        ok = Stream(gateway.url, token, ["doc:1"])
        assert ok.status == 200, ok.head
        ok.close()
        outside = Stream(gateway.url, token, ["chat:1"])
        assert outside.status == 403, outside.head
        outside.close()
    expired = mint_token(user="ed", channels=["doc:*"], secret=SECRET, ttl=1, now=int(time.time()) - 3600)
    refused = Stream(gateway.url, expired, ["doc:1"])
    assert refused.status == 401, refused.head


def test_refusals_are_typed_errors(herald: tuple[Nats, Gateway]) -> None:
    _, gateway = herald
    with pytest.raises(Unauthorized):
        Publisher(gateway.url, "not-a-publisher-key-0123456789").broadcast({"type": "x", "data": 1})
    with pytest.raises(BadRequest) as bad:
        Publisher(gateway.url, PUBLISH_KEY).publish_to_channel("bad channel", {"type": "x", "data": 1})
    assert bad.value.code == "invalid_channel"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(Unavailable):
        Publisher(f"http://127.0.0.1:{port}", PUBLISH_KEY, retries=1, backoff=0.01).broadcast({"type": "x", "data": 1})


def test_the_nats_publisher_refuses_what_no_gateway_would_deliver(herald: tuple[Nats, Gateway]) -> None:
    """A reserved or malformed type, or a name the gateways refuse, was stored and acknowledged
    with an id, then dropped by every gateway (or, for a name NATS itself refuses, part stored
    and reported as retryable): now a `BadRequest` before anything is stored."""
    import nats as nats_py

    server, _ = herald

    async def run() -> tuple[list[str], int, int]:
        nc = await nats_py.connect(server.url)
        try:
            js = nc.jetstream()
            before = (await js.stream_info("HERALD")).state.messages
            publisher = NatsPublisher(nc)
            codes = []
            for publish in (
                lambda: publisher.publish_to_user("cy", {"type": "connected", "data": 1}),
                lambda: publisher.publish_to_user("cy", {"type": "bad type", "data": 1}),
                lambda: publisher.publish({"type": "ok", "data": 1}, users=["cy", "not valid"]),
                lambda: publisher.publish_to_channel("room 1", {"type": "ok", "data": 1}),
                lambda: publisher.publish_to_user("cy", {"type": "ok", "data": 1}, id="order 1"),
            ):
                with pytest.raises(BadRequest) as bad:
                    await publish()
                codes.append(bad.value.code)
            after = (await js.stream_info("HERALD")).state.messages
            return codes, before, after
        finally:
            await nc.close()

    codes, before, after = asyncio.run(run())
    assert codes == ["invalid_type", "invalid_type", "invalid_user", "invalid_channel", "invalid_id"]
    assert after == before, "nothing stored"


def test_an_error_carries_the_publish_id_to_publish_again_with() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    publisher = Publisher(f"http://127.0.0.1:{port}", PUBLISH_KEY, retries=1, backoff=0.01)
    with pytest.raises(Unavailable) as yours:
        publisher.broadcast({"type": "x", "data": 1}, id="order-9")
    assert yours.value.id == "order-9"
    with pytest.raises(Unavailable) as made_up:
        publisher.broadcast({"type": "x", "data": 1})
    assert isinstance(made_up.value.id, str) and len(made_up.value.id) == 32


def test_no_attempt_outlasts_the_retry_window() -> None:
    """A gateway that takes requests and never answers (overloaded, or storing and then stuck):
    each attempt waited its full 30 s timeout, so the five attempts could reach the history
    150 s after the first, past the 120 s duplicate window, and store the event twice. Attempts
    stop, and are cut short, at `retry_for` from the first."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        publisher = Publisher(
            f"http://127.0.0.1:{silent.getsockname()[1]}", PUBLISH_KEY, timeout=30, retries=100, retry_for=1.0
        )
        started = time.monotonic()
        with pytest.raises(Unavailable) as gave_up:
            publisher.broadcast({"type": "x", "data": 1}, id="order-7")
        assert time.monotonic() - started < 10, "gave up within its window, not after 100 attempts of 30 s"
        assert gave_up.value.id == "order-7"
    finally:
        silent.close()


def test_the_built_wheel_installs_and_publishes(herald: tuple[Nats, Gateway], tmp_path: Any) -> None:
    import subprocess
    import sys

    from conftest import REPO

    _, gateway = herald
    import shutil

    # Built from a copy: the build leaves its own files beside the sources.
    package = tmp_path / "package"
    shutil.copytree(REPO / "clients" / "python", package, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", dist, package],
        check=True,
    )
    (wheel,) = dist.glob("herald_publisher-0.1.0-*.whl")
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], check=True)
    s = stream(gateway, "fe", [])
    script = (
        "import herald_publisher, sys; "
        "assert 'site-packages' in herald_publisher.__file__, herald_publisher.__file__; "
        f"print(herald_publisher.Publisher({gateway.url!r}, {PUBLISH_KEY!r})"
        ".publish_to_user('fe', {'type': 'installed', 'data': 1})[0])"
    )
    out = subprocess.run([python, "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True)
    event = s.next()
    assert (event["event"], event["id"]) == ("installed", out.stdout.strip())
    s.close()


class Scripted:
    """An HTTP server on loopback that answers each request, one per connection, with the next
    of `answers` (raw bytes, sent as they are, then the connection closed), and keeps what each
    request said: its head and the publish's `id`."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.heads: list[str] = []
        self.ids: list[str | None] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import json

        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
                    0,
                )
                while len(body) < length and (chunk := conn.recv(65536)):
                    body += chunk
                self.heads.append(head.decode())
                self.ids.append(json.loads(body).get("id") if body else None)
                conn.sendall(self.answers.pop(0))

    def close(self) -> None:
        self.listener.close()


def answer(status: str, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode() + body


STORED = answer("200 OK", b'{"ids":["e-1"]}')


def test_a_redirect_is_refused_and_the_key_goes_to_no_other_host() -> None:
    """urllib follows a redirect, as a GET, with every header but the body's: the publisher key
    went to whatever host the `Location` named (a misconfigured ingress, an open redirect).
    A publish endpoint is never redirected: the 3xx is an error, and the key stays here."""
    elsewhere = Scripted([answer("200 OK", b"{}")])
    redirecting = Scripted([f"HTTP/1.1 302 Found\r\nLocation: {elsewhere.url}/steal\r\nContent-Length: 0\r\n\r\n".encode()])
    try:
        with pytest.raises(HeraldError) as refused:
            Publisher(redirecting.url, PUBLISH_KEY, retries=0).broadcast({"type": "x", "data": 1}, id="order-3")
        assert refused.value.status == 302 and refused.value.id == "order-3"
        assert elsewhere.url in str(refused.value), "the error names where it was sent"
        urllib.request.urlopen(urllib.request.Request(elsewhere.url + "/marker", data=b"{}", method="POST"))
        assert [h.split("\r\n")[0] for h in elsewhere.heads] == ["POST /marker HTTP/1.1"]
        assert all(PUBLISH_KEY not in h for h in elsewhere.heads)
    finally:
        elsewhere.close()
        redirecting.close()


def test_an_answer_cut_off_is_retried_with_the_same_id() -> None:
    """A 200 whose body breaks off: the event was stored, and the answer is lost. The error
    that escaped carried no `id` and was not retried, so the caller's own retry stored the
    event a second time. It is an answer lost, retried with the same `id`."""
    server = Scripted([answer("200 OK", b'{"ids":["e-', length=40), answer("200 OK", b"not json"), STORED])
    try:
        ids = Publisher(server.url, PUBLISH_KEY, backoff=0.01).broadcast({"type": "x", "data": 1})
        assert ids == ["e-1"]
        assert len(server.ids) == 3 and len(set(server.ids)) == 1, server.ids
    finally:
        server.close()


def test_a_proxy_with_no_gateway_behind_it_is_retried() -> None:
    """502 and 504 come from a proxy in front of the gateways (one killed by a rollout): as
    unsure as a 503, and retried with the same `id`; so is a 408 (a body that did not arrive
    whole: nothing was stored)."""
    server = Scripted(
        [
            answer("502 Bad Gateway", b"<html>"),
            answer("504 Gateway Timeout", b""),
            answer("408 Request Timeout", b'{"error":"request_timeout"}'),
            STORED,
        ]
    )
    try:
        assert Publisher(server.url, PUBLISH_KEY, backoff=0.01).broadcast({"type": "x", "data": 1}) == ["e-1"]
        assert len(server.ids) == 4 and len(set(server.ids)) == 1, server.ids
    finally:
        server.close()


def test_an_ephemeral_publish_is_not_sent_twice() -> None:
    """An ephemeral event has no history to store it once: an attempt whose answer is lost may
    have been delivered, so it is not sent again, nor after the gateway's 504 `unconfirmed`
    (NATS did not take it in time). A 503, where the gateway published nothing, and a 408,
    where it did not get the whole body, are retried."""
    server = Scripted(
        [
            answer("503 Service Unavailable", b'{"error":"unavailable"}'),
            answer("408 Request Timeout", b'{"error":"request_timeout"}'),
            answer("504 Gateway Timeout", b'{"error":"unconfirmed"}'),
        ]
    )
    try:
        with pytest.raises(Unavailable) as lost:
            Publisher(server.url, PUBLISH_KEY, backoff=0.01).broadcast({"type": "x", "data": 1}, durable=False)
        assert (lost.value.status, lost.value.code, lost.value.id) == (504, "unconfirmed", server.ids[0])
        assert len(server.ids) == 3, "the 503 and the 408 retried, the 504 not"
    finally:
        server.close()


def test_the_nats_publisher_names_its_ids_by_the_history_it_stored_them_in(tmp_path: Any) -> None:
    """It read the epoch once, for good: after the stream was deleted and made again (by the
    gateway), every id it answered named the old history, where no such event is."""
    import nats as nats_py

    from conftest import Gateway, Nats

    (tmp_path / "nats").mkdir()
    (tmp_path / "gateway").mkdir()
    server = Nats(tmp_path / "nats")
    gateway = Gateway(server, tmp_path / "gateway")

    def epoch_of(id: str) -> str:
        return id.rsplit("-", 1)[0]

    async def run() -> tuple[str, str, str]:
        nc = await nats_py.connect(server.url)
        try:
            publisher = NatsPublisher(nc)
            (before,) = await publisher.publish_to_user("dee", {"type": "notice", "data": 1})
            js = nc.jetstream()
            await js.delete_stream("HERALD")
            deadline = time.monotonic() + 10
            remade = None
            while remade is None:
                assert time.monotonic() < deadline, "the gateway makes the stream again"
                try:
                    remade = (await js.stream_info("HERALD")).config.metadata.get("herald.epoch")
                except Exception:
                    await asyncio.sleep(0.05)
            (after,) = await publisher.publish_to_user("dee", {"type": "notice", "data": 2})
            return epoch_of(before), remade, epoch_of(after)
        finally:
            await nc.close()

    try:
        before, remade, after = asyncio.run(run())
        assert remade != before
        assert after == remade
    finally:
        gateway.stop()
        server.stop()


def test_a_nats_publisher_whose_epoch_cannot_be_read_again_names_its_ids_by_the_one_it_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read of the epoch that fails, before a publish or after it, fails no publish: the one
    read before names its ids."""
    import json as json_
    import types

    from herald_publisher import _nats

    clock = [1000.0]
    monkeypatch.setattr(_nats.time, "monotonic", lambda: clock[0])
    acks = [5, 6, 1]
    reads = []

    class Js:
        async def publish(self, *args: Any, **kwargs: Any) -> Any:
            return types.SimpleNamespace(seq=acks.pop(0), duplicate=False)

    class Nc:
        def jetstream(self, **kwargs: Any) -> Js:
            return Js()

        async def request(self, *args: Any, **kwargs: Any) -> Any:
            reads.append(1)
            if len(reads) > 1:
                raise TimeoutError("timeout")
            return types.SimpleNamespace(data=json_.dumps({"config": {"metadata": {"herald.epoch": "e1"}}}).encode())

    async def run() -> list[list[str]]:
        publisher = NatsPublisher(Nc())
        first = await publisher.publish_to_user("u", {"type": "n", "data": 1})
        clock[0] += 11  # read again once 10 s old: the read fails
        second = await publisher.publish_to_user("u", {"type": "n", "data": 2})
        third = await publisher.publish_to_user("u", {"type": "n", "data": 3})  # a sequence going back
        return [first, second, third]

    assert asyncio.run(run()) == [["e1-5"], ["e1-6"], ["e1-1"]]
    assert len(reads) == 3
