"""Where a request comes from: over a private link or not, and the address to count it against."""

from __future__ import annotations

import contextlib
import ipaddress

from aiohttp import web


def private_link(request: web.Request) -> bool:
    """HTTPS, or from this machine (a TLS reverse proxy in front of the gateway)."""
    if request.secure:
        return True
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def client_address(request: web.Request, trust_forwarded_for: bool) -> str:
    """The address failures are counted against: the proxy's last hop when it is trusted.

    What the client wrote before the proxy's own hop in ``X-Forwarded-For`` is the client's
    to forge, so only the last entry counts, and only from a plain-HTTP proxy on this machine.
    """
    remote = request.remote or "unknown"
    forwarded = request.headers.get("X-Forwarded-For", "")
    if trust_forwarded_for and forwarded and not request.secure:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(forwarded.rsplit(",", 1)[-1].strip()))
    return remote
