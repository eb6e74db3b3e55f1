"""Real peers on loopback (Clerk, util gRPC service, raw TCP, Sentry, a fault proxy) for the health tests."""

from __future__ import annotations

from tests.peers.clerk import ClerkMode, FakeClerkAPI
from tests.peers.proxy import FaultProxy, ProxyMode
from tests.peers.sentry import SentryReceiver
from tests.peers.tcp import BlackholeListener, closed_port
from tests.peers.util_service import FakeUtilService, UtilMode

__all__ = [
    "BlackholeListener",
    "ClerkMode",
    "FakeClerkAPI",
    "FakeUtilService",
    "FaultProxy",
    "ProxyMode",
    "SentryReceiver",
    "UtilMode",
    "closed_port",
]
