"""Publishing straight into NATS (`herald-publisher[nats]`): a JetStream publish to each
target's `<prefix>.events.…` subject, as the gateways' own `POST /v1/publish` does, so the
stream stores the event and republishes it to every gateway. Ids are the ones HTTP would answer
(`<epoch>-<sequence>`), and the same message ids (`<id>/<target>`) make a retry a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from ._errors import BadRequest, Unavailable
from ._http import Event, new_id

STREAM = "HERALD"
# Longest a NatsPublisher names ids by an epoch it read, in seconds.
EPOCH_TTL = 10.0

# What the gateways accept, as `POST /v1/publish` checks it: an event stored with another name
# or type would be acknowledged here and then dropped by every gateway.
_NAME = re.compile(r"[A-Za-z0-9_\-:@=+~]+(?:\.[A-Za-z0-9_\-:@=+~]+)*")
_TYPE = re.compile(r"[A-Za-z0-9_\-:.]{1,64}")
_RESERVED_TYPES = frozenset({"connected", "reset", "token_expired", "presence", "error"})
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def _check(event_type: str, users: Sequence[str], channels: Sequence[str], id: str | None) -> None:
    """Raises `BadRequest` (the gateway's codes) for a type or name no gateway would deliver, or
    an `id` the gateways would refuse."""
    if id is not None and not (isinstance(id, str) and _ID.fullmatch(id)):
        raise BadRequest(400, "invalid_id", f"{id!r}: 1-128 of A-Z a-z 0-9 _ . : -")
    if not (isinstance(event_type, str) and _TYPE.fullmatch(event_type)) or event_type in _RESERVED_TYPES:
        raise BadRequest(400, "invalid_type", f"{event_type!r}: 1-64 of A-Z a-z 0-9 _ - : ., not a reserved type")
    for kind, names in (("user", users), ("channel", channels)):
        for name in names:
            if not (isinstance(name, str) and len(name) <= 128 and _NAME.fullmatch(name)):
                raise BadRequest(400, f"invalid_{kind}", f"{name!r}: 1-128 of A-Z a-z 0-9 _ - : @ = + ~, dot-separated")


class NatsPublisher:
    """Publishes through a connected nats-py client (`await nats.connect(...)`)."""

    def __init__(self, nc: Any, *, prefix: str = "herald", timeout: float = 10.0, retries: int = 4) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self.prefix = prefix
        self.timeout = timeout
        self.retries = retries
        # The history's epoch names every id. Read again when it may have changed: an
        # acknowledgement (not of a repeat) whose sequence is below one seen before comes from a
        # stream made anew, and one made anew since the last read may not have caught up yet
        # (so no read is older than EPOCH_TTL seconds).
        self._epoch: str | None = None
        self._read_at = 0.0
        self._highest = 0

    async def publish_to_user(self, user: str, event: Event, **options: Any) -> list[str]:
        return await self.publish(event, users=[user], **options)

    async def publish_to_channel(self, channel: str, event: Event, **options: Any) -> list[str]:
        return await self.publish(event, channels=[channel], **options)

    async def broadcast(self, event: Event, **options: Any) -> list[str]:
        return await self.publish(event, broadcast=True, **options)

    async def publish(
        self,
        event: Event,
        *,
        users: Sequence[str] = (),
        channels: Sequence[str] = (),
        broadcast: bool = False,
        id: str | None = None,
    ) -> list[str]:
        """Stores the event for every target (durable: over NATS, events are always stored;
        publish to `<prefix>.live.…` yourself for ephemeral ones). A type or name the gateways
        would refuse raises `BadRequest` before anything is stored; an `Unavailable` carries
        the publish's `id`, to publish again with."""
        event_type = event.get("type", "message")
        _check(event_type, users, channels, id)
        targets = [f"user.{u}" for u in users] + [f"channel.{c}" for c in channels] + (["broadcast"] if broadcast else [])
        if not targets:
            raise BadRequest(400, "no_targets", "name at least one user, channel or broadcast")
        key = id or new_id()
        payload = json.dumps(event.get("data")).encode()
        epoch = await self.epoch()
        seqs = []
        started_over = False
        for target in targets:
            headers = {"Herald-Type": event_type, "Nats-Msg-Id": f"{key}/{target}"}
            seq, duplicate = await self._store(f"{self.prefix}.events.{target}", payload, headers, key)
            seqs.append(seq)
            if not duplicate:
                started_over = started_over or seq <= self._highest
                self._highest = max(self._highest, seq)
        if started_over:
            self._highest = max(seqs)
        # The events are stored: a read that fails now names them by the epoch read before.
        epoch = await self.epoch(again=started_over)
        return [f"{epoch}-{seq}" for seq in seqs]

    async def _store(self, subject: str, payload: bytes, headers: dict[str, str], key: str) -> tuple[int, bool]:
        wait = 0.25
        for attempt in range(self.retries + 1):
            try:
                ack = await self._js.publish(subject, payload, headers=headers, timeout=self.timeout)
                return int(ack.seq), bool(getattr(ack, "duplicate", False))
            except Exception as e:  # nats-py's timeouts, no responders, lost connections
                if attempt == self.retries:
                    raise Unavailable(503, "unavailable", f"{subject}: {e!r}", key) from e
            await asyncio.sleep(wait)
            wait = min(wait * 2, 4.0)
        raise AssertionError("unreachable")

    async def epoch(self, *, again: bool = False) -> str:
        """The history's epoch (the first part of every id), read from the stream when not read
        for `EPOCH_TTL` seconds, or `again`. Once one was read, a read that fails answers it."""
        cached = self._epoch
        if cached is None:
            return await self._read_epoch()
        if again or time.monotonic() - self._read_at > EPOCH_TTL:
            with contextlib.suppress(Exception):
                return await self._read_epoch()
        return cached

    async def _read_epoch(self) -> str:
        self._read_at = time.monotonic()
        reply = await self._nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=self.timeout)
        info = json.loads(reply.data)
        if "error" in info:
            raise Unavailable(503, "unavailable", f"stream {STREAM}: {info['error'].get('description')}")
        epoch = info.get("config", {}).get("metadata", {}).get("herald.epoch")
        if not (isinstance(epoch, str) and 0 < len(epoch) <= 32 and epoch.isalnum() and epoch == epoch.lower()):
            raise Unavailable(503, "unavailable", f"stream {STREAM} has no herald.epoch: start a gateway first")
        self._epoch = epoch
        return epoch
