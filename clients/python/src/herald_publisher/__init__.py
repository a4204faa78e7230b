"""Publish events to Herald over HTTP or NATS, and mint its client tokens.

- [`Publisher`] / [`AsyncPublisher`]: `POST /v1/publish` with a publisher key.
- [`NatsPublisher`]: a JetStream publish into the history stream (`herald-publisher[nats]`).
- [`mint_token`]: the JWT a browser opens its stream with.

Every publish carries an idempotency `id` (yours, or a fresh one), so a retry never stores an
event twice; each call answers the ids the event was stored under.
"""

from ._errors import BadRequest, HeraldError, PayloadTooLarge, Unauthorized, Unavailable
from ._http import AsyncPublisher, Event, Publisher
from ._nats import NatsPublisher
from ._tokens import mint_token

__all__ = [
    "AsyncPublisher",
    "BadRequest",
    "Event",
    "HeraldError",
    "NatsPublisher",
    "PayloadTooLarge",
    "Publisher",
    "Unauthorized",
    "Unavailable",
    "mint_token",
]
