"""The states of each component and of the whole instance, written once.

The values and their order are the published contract
(``shared/contract/health-openapi.yaml``): the checks return them, the serializers
offer them as choices and drf-spectacular documents them from here.
"""

from __future__ import annotations

from enum import StrEnum


class Component(StrEnum):
    """A dependency the instance reports on; the value is its key in ``details``."""

    SENTRY = "sentry"
    CLERK = "clerk"
    DB = "db"
    UTIL_SERVICE = "util_service"


class OverallStatus(StrEnum):
    OPERATIONAL = "OPERATIONAL"
    DEGRADED = "DEGRADED"


class SentryStatus(StrEnum):
    OPERATIONAL = "OPERATIONAL"
    UNINITIALIZED = "UNINITIALIZED"
    FAILED = "FAILED"


class ClerkStatus(StrEnum):
    OPERATIONAL = "OPERATIONAL"
    DOWN = "DOWN"


class DatabaseStatus(StrEnum):
    OPERATIONAL = "OPERATIONAL"
    DEGRADED = "DEGRADED"
    FATAL = "FATAL"


class UtilServiceStatus(StrEnum):
    OPERATIONAL = "OPERATIONAL"
    DISCONNECTED = "DISCONNECTED"
    FAILED = "FAILED"


ComponentStatus = SentryStatus | ClerkStatus | DatabaseStatus | UtilServiceStatus

#: Each component's enum, in the contract's field order.
STATUS_TYPES: dict[Component, type[ComponentStatus]] = {
    Component.SENTRY: SentryStatus,
    Component.CLERK: ClerkStatus,
    Component.DB: DatabaseStatus,
    Component.UTIL_SERVICE: UtilServiceStatus,
}

#: The contract's word for "fine" is the same for every component.
OPERATIONAL = "OPERATIONAL"


def choices(status_type: type[StrEnum]) -> list[tuple[str, str]]:
    """Serializer choices whose label is the value, as the contract documents them."""
    return [(member.value, member.value) for member in status_type]


#: The worst state of each component: what a report says when it could not be made.
FAILURE_STATUS: dict[Component, ComponentStatus] = {
    Component.SENTRY: SentryStatus.FAILED,
    Component.CLERK: ClerkStatus.DOWN,
    Component.DB: DatabaseStatus.FATAL,
    Component.UTIL_SERVICE: UtilServiceStatus.FAILED,
}
