"""Which peers may set forwarded headers: ``FORWARDED_ALLOW_IPS``, one definition.

gunicorn (``gunicorn.conf.py``: ``forwarded_allow_ips``) and the application
(``letraz.middleware``) read the same list, so the peer whose ``X-Forwarded-Proto``
gunicorn honours is exactly the peer whose ``X-Forwarded-*`` headers Django accepts. The
default is nobody: the scheme is then the connection's own, and a request from any other
peer that carries forwarded headers is refused with a 400. Name the proxy (an ingress
controller's pod range, a sidecar's ``127.0.0.1``) to trust it.
"""

from __future__ import annotations

import ipaddress

from letraz.env import Env, env, shown

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Request headers only a trusted proxy may send (lower-case, as WSGI ``HTTP_`` names).
FORWARDED_HEADERS = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_PROTOCOL",
    "HTTP_X_FORWARDED_SSL",
    "HTTP_X_REAL_IP",
)


def trusted_proxies(source: Env = env) -> tuple[str, ...]:
    """``FORWARDED_ALLOW_IPS``: addresses or CIDR networks; empty (nobody) by default.

    A malformed list is a problem reported like any malformed variable (``letraz.E004``,
    so the server refuses to start) and trusts nobody meanwhile.
    """
    items = source.items("FORWARDED_ALLOW_IPS")
    for item in items:
        if item == "*":
            source.report("FORWARDED_ALLOW_IPS", shown(item), "the proxies' addresses; '*' would trust every client")
            return ()
        try:
            ipaddress.ip_network(item)
        except ValueError:
            source.report("FORWARDED_ALLOW_IPS", shown(item), "IP addresses or networks, such as 10.0.0.0/8")
            return ()
    return items


def is_trusted(address: str, proxies: tuple[str, ...]) -> bool:
    """Whether ``address`` (a peer's IP) is in one of ``proxies``."""
    if not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(proxy) for proxy in proxies)
