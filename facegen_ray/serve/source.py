"""The source of an opinion: a keyed hash of the network it came from, stored with every
feedback record (data/feedback.py "source") so the retrain can count approvals per network
rather than per session (sessions are cheap; networks are not).

    network   IPv4 -> its /24, IPv6 -> its /56 (an IPv4-mapped IPv6 address counts as IPv4);
              anything else (no address, a name) -> the string itself
    source    HMAC-SHA256(secret, "source|" + network)[:16 hex]   (domain-separated from the
              session cookies signed with the same secret, serve/identity.py)

Behind the authenticating proxy (serve.rater_header) every request comes from the proxy's
address, so there the source is the rater identity itself: "source|rater|" + rater id (one
account = one source). The raw address is never stored; once the secret rotates the stored
hashes can no longer be linked to new ones.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

SOURCE_CHARS = 16


def network_of(address: str | None) -> str:
    """The network an address belongs to: "a.b.c.0/24", "xxxx::/56", else the value as given."""
    value = (address or "unknown").strip()
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return value
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 56
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def source_id(secret: bytes, address: str | None = None, rater: str | None = None) -> str:
    """The keyed source hash of a network (`address`), or of a proxy rater when `rater` is given."""
    material = f"source|rater|{rater}" if rater is not None else f"source|{network_of(address)}"
    return hmac.new(secret, material.encode("utf-8"), hashlib.sha256).hexdigest()[:SOURCE_CHARS]


__all__ = ["SOURCE_CHARS", "network_of", "source_id"]
