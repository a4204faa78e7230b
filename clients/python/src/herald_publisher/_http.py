"""Publishing over Herald's HTTP API (`POST /v1/publish`), with the standard library only."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._errors import HeraldError, Unavailable, error_for

Event = Mapping[str, Any]
"""An event: `{"type": "booking_update", "data": {...}}` (`type` defaults to `message`)."""


def new_id() -> str:
    """A fresh idempotency key for one publish."""
    return uuid.uuid4().hex


def publish_body(
    event: Event,
    *,
    users: Iterable[str] = (),
    channels: Iterable[str] = (),
    broadcast: bool = False,
    durable: bool | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """The JSON body of one publish. Every body carries an `id`, so that a retry is stored once."""
    body: dict[str, Any] = {"type": event.get("type", "message"), "data": event.get("data")}
    if users := list(users):
        body["users"] = users
    if channels := list(channels):
        body["channels"] = channels
    if broadcast:
        body["broadcast"] = True
    if durable is not None:
        body["durable"] = durable
    body["id"] = id or new_id()
    return body


class Publisher:
    """Publishes through a gateway's (or the gateway Service's) `POST /v1/publish`.

    Each call resolves to the ids Herald stored the event under, one per target, in the order
    users, channels, broadcast. A 503, 504 or 408 (or a proxy's 502), a connection that fails,
    or an answer cut off, is retried `retries` times with backoff, with the same `id`: the history
    stores the event once however many attempts reach it, as long as they reach it within its
    duplicate window (the gateways' `--history-dedup-window`, 2 minutes by default). So no
    attempt starts, or lasts, past `retry_for` seconds (90) from the first: a later one could
    store the event again. An ephemeral event (`durable=False`) has no history to store it once:
    it is sent again only when nothing was published (a 503, a 408, or a connection refused).

    A redirect is refused (a `HeraldError` with its 3xx status): the publisher key is sent to
    the URL given, and to no host a `Location` names.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        retry_for: float = 90.0,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/publish"
        self.key = key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retry_for = retry_for

    def publish_to_user(self, user: str, event: Event, **options: Any) -> list[str]:
        return self.publish(event, users=[user], **options)

    def publish_to_channel(self, channel: str, event: Event, **options: Any) -> list[str]:
        return self.publish(event, channels=[channel], **options)

    def broadcast(self, event: Event, **options: Any) -> list[str]:
        return self.publish(event, broadcast=True, **options)

    def publish(
        self,
        event: Event,
        *,
        users: Sequence[str] = (),
        channels: Sequence[str] = (),
        broadcast: bool = False,
        durable: bool | None = None,
        id: str | None = None,
    ) -> list[str]:
        body = publish_body(event, users=users, channels=channels, broadcast=broadcast, durable=durable, id=id)
        payload = json.dumps(body).encode()
        wait = self.backoff
        deadline = time.monotonic() + self.retry_for
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            # Whether the attempt published nothing, surely: only then is an ephemeral event
            # sent again.
            unsent = False
            try:
                return self._post(payload, body["id"], max(0.001, min(self.timeout, left)))
            except Unavailable as e:
                # 503: the gateway published nothing; 408: it did not get the whole body.
                error, unsent = e, e.status in (503, 408)
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
                error = Unavailable(0, "unreachable", f"{self.endpoint}: {getattr(e, 'reason', e)}", body["id"])
                error.__cause__ = e
                unsent = isinstance(getattr(e, "reason", e), ConnectionRefusedError)
            except (http.client.HTTPException, ValueError) as e:
                # An answer cut off, or not the JSON a gateway answers: the event may have been
                # stored, and the ids were lost.
                error = Unavailable(0, "unreadable_answer", f"{self.endpoint}: {e!r}", body["id"])
                error.__cause__ = e
            if durable is False and not unsent:
                raise error
            if attempt == self.retries or time.monotonic() + wait >= deadline:
                raise error
            time.sleep(wait)
            wait = min(wait * 2, 4.0)
        raise AssertionError("unreachable")

    def _post(self, payload: bytes, id: str, timeout: float) -> list[str]:
        request = urllib.request.Request(
            self.endpoint,
            data=payload,
            method="POST",
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                answer = json.loads(response.read())
                ids = answer.get("ids") if isinstance(answer, dict) else None
                if not isinstance(ids, list):
                    raise ValueError(f"an answer without ids: {answer!r}"[:200])
                return [str(i) for i in ids]
        except urllib.error.HTTPError as e:
            raise _refusal(e, id) from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: urllib would follow it with the `Authorization` header, to any
    host. The 3xx comes back as an `HTTPError`, naming where it pointed."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(
            req.full_url, code, f"redirected to {newurl}: publish to the gateways' own URL", headers, fp
        )


_OPENER = urllib.request.build_opener(_NoRedirects)


def _refusal(e: urllib.error.HTTPError, id: str) -> HeraldError:
    try:
        answer = json.loads(e.read())
        code, message = str(answer.get("error", "")), str(answer.get("message", ""))
    except (ValueError, OSError, http.client.HTTPException):
        code, message = "", e.reason if isinstance(e.reason, str) else ""
    return error_for(e.code, code or "error", message, id)


class AsyncPublisher:
    """[`Publisher`] for asyncio code: the same calls, awaited (each runs in a worker thread)."""

    def __init__(self, url: str, key: str, **options: Any) -> None:
        self._sync = Publisher(url, key, **options)

    async def publish_to_user(self, user: str, event: Event, **options: Any) -> list[str]:
        return await asyncio.to_thread(self._sync.publish_to_user, user, event, **options)

    async def publish_to_channel(self, channel: str, event: Event, **options: Any) -> list[str]:
        return await asyncio.to_thread(self._sync.publish_to_channel, channel, event, **options)

    async def broadcast(self, event: Event, **options: Any) -> list[str]:
        return await asyncio.to_thread(self._sync.broadcast, event, **options)

    async def publish(self, event: Event, **options: Any) -> list[str]:
        return await asyncio.to_thread(self._sync.publish, event, **options)
