"""Who is rating: the rater identity that feedback, comparison pairs and votes carry.

Two sources, in this order:
  - `serve.rater_header` (e.g. X-Forwarded-User): set by an authenticating proxy in front of the
    app. When configured it is the only identity (cookies are ignored): the proxy must strip the
    header from client requests. Rater id "h-" + sha256(value)[:32].
  - a session cookie the app issues (GET /session, and the / and /compare pages on load):
    `v1.<session id: 32 hex>.<issued: unix s>.<HMAC-SHA256(secret, "v1.<sid>.<issued>")>`,
    HttpOnly, SameSite=Strict. Rater id "s-" + session id; the signed issue time is when the
    rater was first seen (the merge's quarantine reads it).

The HMAC secret comes from FACEGEN_SESSION_SECRET (>= 32 characters; never from storage or a
config file) in the process that verifies; without it the app's guard actor draws a random one
at start (serve/ratelimit.py), shared by every ingress replica, and sessions end when that
actor restarts. A session is cheap to get, so it limits nothing by itself: what it buys is a
key for the per-rater rate limits, one vote per rater per pair, one opinion per rater per image,
and the quarantine of new raters; sessions per client address are rate limited.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from facegen_ray.errors import UserError
from facegen_ray.serve.source import source_id as _source_id

SECRET_ENV = "FACEGEN_SESSION_SECRET"
MIN_SECRET_CHARS = 32
SESSION_COOKIE = "facegen_session"
_COOKIE_RE = re.compile(r"^v1\.([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{64})$")
_HEADER_VALUE_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,255}$")  # printable ASCII, no leading space
CLOCK_SKEW_S = 300.0  # a cookie issued this far "in the future" (replica clocks differ) still counts


@dataclass(frozen=True)
class Rater:
    """A rater: `rater_id` ("s-..." session, "h-..." proxy header) and `since` (unix seconds the
    identity was issued; None for a proxy identity, whose first record marks it)."""

    rater_id: str
    since: float | None


def secret_from_env() -> bytes | None:
    """FACEGEN_SESSION_SECRET as bytes; None when unset; UserError when shorter than 32 chars."""
    value = os.environ.get(SECRET_ENV)
    if not value:
        return None
    if len(value) < MIN_SECRET_CHARS:
        raise UserError(
            f"{SECRET_ENV} is {len(value)} characters: use at least {MIN_SECRET_CHARS} random characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return value.encode("utf-8")


def new_secret() -> bytes:
    return secrets.token_hex(32).encode("ascii")


class SessionSigner:
    """Issues and verifies session cookies with one HMAC-SHA256 secret; `clock` (unix seconds,
    default the wall clock) is the time when a call passes no `now`."""

    def __init__(self, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"session secret shorter than {MIN_SECRET_CHARS} bytes")
        self._secret = secret
        self.ttl_s = float(ttl_s)
        self.clock = clock

    def _sig(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).hexdigest()

    def source_id(self, address: str | None = None, rater: str | None = None) -> str:
        """The keyed id of an opinion's source (serve/source.py: the client's network, or the
        rater behind an authenticating proxy) under this signer's secret, which stays here."""
        return _source_id(self._secret, address, rater)

    def issue(self, now: float | None = None) -> tuple[str, Rater]:
        """A new session: (cookie value, its rater)."""
        issued = int(self.clock() if now is None else now)
        sid = secrets.token_hex(16)
        payload = f"v1.{sid}.{issued}"
        return f"{payload}.{self._sig(payload)}", Rater(f"s-{sid}", float(issued))

    def verify(self, value: str | None, now: float | None = None) -> Rater | None:
        """The rater of a cookie value; None when absent, malformed, forged or expired."""
        if not value or len(value) > 200:
            return None
        m = _COOKIE_RE.match(value)
        if m is None:
            return None
        sid, issued = m.group(1), int(m.group(2))
        if not hmac.compare_digest(self._sig(f"v1.{sid}.{issued}"), m.group(3)):
            return None
        t = self.clock() if now is None else now
        if issued > t + CLOCK_SKEW_S or t - issued > self.ttl_s:
            return None
        return Rater(f"s-{sid}", float(issued))


def header_rater(value: str | None) -> Rater | None:
    """The rater of a trusted proxy header value (None when absent or not printable ASCII)."""
    if not value or not _HEADER_VALUE_RE.match(value):
        return None
    return Rater("h-" + hashlib.sha256(value.encode("ascii")).hexdigest()[:32], None)


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: list[str]) -> str:
    """The client address rate limits key on: the peer, or -- when the peer is a trusted proxy
    -- the right-most X-Forwarded-For entry that is not one (entries to its left are the
    client's own claims)."""
    addr = peer or "unknown"
    if addr in trusted_proxies and forwarded_for:
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            addr = hop[:64]
            if hop not in trusted_proxies:
                break
    return addr


def cookie_header(value: str, max_age_s: float, secure: bool) -> str:
    """The Set-Cookie header value of a session."""
    parts = [f"{SESSION_COOKIE}={value}", "Path=/", f"Max-Age={int(max_age_s)}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


__all__ = [
    "MIN_SECRET_CHARS",
    "SECRET_ENV",
    "SESSION_COOKIE",
    "Rater",
    "SessionSigner",
    "client_address",
    "cookie_header",
    "header_rater",
    "new_secret",
    "secret_from_env",
]
