"""The contract's ``HealthCheck`` and ``HealthDetails`` bodies, and the liveness body."""

from __future__ import annotations

from rest_framework import serializers

from health.status import ClerkStatus, DatabaseStatus, OverallStatus, SentryStatus, UtilServiceStatus, choices


class HealthDetailsSerializer(serializers.Serializer[dict[str, str]]):
    sentry = serializers.ChoiceField(
        choices=choices(SentryStatus),
        help_text=(
            "The status of the sentry integration. If False, the sentry is not initialized, possibly due to "
            "absense of environment variables, which is expected or misconfigured initialization."
        ),
    )
    clerk = serializers.ChoiceField(
        choices=choices(ClerkStatus),
        help_text="The health status of Clerk integration. The status can be OPERATIONAL or DOWN.",
    )
    db = serializers.ChoiceField(
        choices=choices(DatabaseStatus),
        help_text="The health status of the database connection. The status can be OPERATIONAL, DEGRADED or FATAL.",
    )
    util_service = serializers.ChoiceField(
        choices=choices(UtilServiceStatus),
        help_text=("The health status of gRPC:util connection. The status can be OPERATIONAL, DISCONNECTED or FAILED."),
    )


class HealthCheckSerializer(serializers.Serializer[dict[str, object]]):
    instance_id = serializers.CharField(
        help_text="The id of the instance from which the health check response has been received.",
    )
    status = serializers.ChoiceField(
        choices=choices(OverallStatus),
        help_text="The health status of the server. The status can be OPERATIONAL or DEGRADED.",
    )
    details = HealthDetailsSerializer()


class LivenessSerializer(serializers.Serializer[dict[str, object]]):
    instance_id = serializers.CharField(
        help_text="The id of the instance from which the health check response has been received.",
    )
    status = serializers.ChoiceField(
        choices=[(OverallStatus.OPERATIONAL.value, OverallStatus.OPERATIONAL.value)],
        help_text="Always OPERATIONAL: an instance that can answer is alive.",
    )
