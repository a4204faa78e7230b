"""Client tokens: the JWT a browser opens its stream with, carrying exactly the claims the
gateway checks (`sub`, `exp`, `channels`, and optionally `publish`, `presence`, `iss`, `aud`).
HS256 with the standard library; ES256 and EdDSA with `cryptography` (`herald-publisher[keys]`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint_token(
    *,
    user: str,
    channels: Sequence[str] = (),
    ttl: int = 3600,
    publish: Sequence[str] | None = None,
    presence: dict[str, Any] | None = None,
    secret: str | bytes | None = None,
    private_key: str | bytes | None = None,
    kid: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    now: int | None = None,
) -> str:
    """A client token for `user`, valid `ttl` seconds, allowing `channels` (exact names, or
    prefixes ending in `*`). Signed with `secret` (HS256: the gateways' `--jwt-secret-file`)
    or with `private_key` (a PEM: ES256 for a P-256 key, EdDSA for Ed25519; the gateways hold
    the public half, its file name or JWKS `kid` matching `kid`)."""
    if (secret is None) == (private_key is None):
        raise ValueError("give exactly one of secret (HS256) or private_key (ES256, EdDSA)")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = {"sub": user, "iat": issued, "exp": issued + ttl, "channels": list(channels)}
    if publish is not None:
        claims["publish"] = list(publish)
    if presence is not None:
        claims["presence"] = presence
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    if secret is not None:
        key = secret.encode() if isinstance(secret, str) else secret
        return _signed({"alg": "HS256", "typ": "JWT"}, claims, kid, lambda m: hmac.new(key, m, hashlib.sha256).digest())
    assert private_key is not None
    return _signed_with_key(private_key, claims, kid)


def _signed(header: dict[str, Any], claims: dict[str, Any], kid: str | None, sign: Any) -> str:
    if kid is not None:
        header["kid"] = kid
    head = _b64(json.dumps(header, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    message = f"{head}.{body}".encode()
    return f"{head}.{body}.{_b64(sign(message))}"


def _signed_with_key(pem: str | bytes, claims: dict[str, Any], kid: str | None) -> str:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise RuntimeError("tokens signed with a private key need `pip install herald-publisher[keys]`") from e
    key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise ValueError(f"ES256 needs a P-256 key, not {key.curve.name}")
        ec_key = key

        def sign_es256(message: bytes) -> bytes:
            r, s = decode_dss_signature(ec_key.sign(message, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return _signed({"alg": "ES256", "typ": "JWT"}, claims, kid, sign_es256)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _signed({"alg": "EdDSA", "typ": "JWT"}, claims, kid, key.sign)
    raise ValueError("private_key must be a P-256 (ES256) or Ed25519 (EdDSA) key")
