"""What a publish can fail with: each HTTP answer Herald gives, as its own exception."""

from __future__ import annotations


class HeraldError(Exception):
    """A publish Herald refused or could not take. `code` is Herald's `error` field; `id` the
    publish's idempotency key (yours, or the one made up for it): publish again with it, and
    the event is stored once however many attempts reached the history."""

    def __init__(self, status: int, code: str, message: str, id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.id = id


class BadRequest(HeraldError):
    """400: the event or its targets are malformed (the message says which field)."""


class Unauthorized(HeraldError):
    """401: no publisher key, or one the gateways do not know."""


class PayloadTooLarge(HeraldError):
    """413: the event is larger than the gateways accept."""


class Unavailable(HeraldError):
    """503, 504 or 408 (or a proxy's 502), no answer, or one cut off, after every retry: the
    event may not be stored. Retrying later with the same `id` stores it once."""


def error_for(status: int, code: str, message: str, id: str | None = None) -> HeraldError:
    kinds = {
        400: BadRequest,
        401: Unauthorized,
        408: Unavailable,
        413: PayloadTooLarge,
        502: Unavailable,
        503: Unavailable,
        504: Unavailable,
    }
    kind = kinds.get(status, HeraldError)
    return kind(status, code, message, id)
