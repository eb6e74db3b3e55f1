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


# -- The timeline, the fleet and the stream (issue 11) -----------------------------------


class TimelineEventSerializer(serializers.Serializer[dict[str, object]]):
    id = serializers.IntegerField(help_text="The row's id; also the stream's event id (`Last-Event-ID`).")
    instance_id = serializers.CharField(help_text="The instance that saw the change.")
    component = serializers.CharField(help_text="A component name, or `instance` for starts and gaps.")
    kind = serializers.ChoiceField(choices=[("change", "change"), ("start", "start"), ("gap", "gap")])
    from_status = serializers.CharField(help_text="The state before; empty when it was not known.")
    to_status = serializers.CharField(help_text="The new state (`STARTED` for a start, `LOST` for a gap).")
    at = serializers.DateTimeField(help_text="When the instance observed the change.")
    previous_duration = serializers.FloatField(
        allow_null=True, help_text="Seconds the previous state lasted on that instance (a gap: how long it spanned)."
    )
    reason = serializers.CharField(required=False, help_text="Why, in words: only with the diagnostics token.")


class ComponentAvailabilitySerializer(serializers.Serializer[dict[str, object]]):
    seconds = serializers.DictField(
        child=serializers.FloatField(), help_text="Instance-seconds spent in each state within the window."
    )
    availability = serializers.FloatField(
        allow_null=True, help_text="The share of observed time spent OPERATIONAL (null: nothing observed)."
    )
    buckets = serializers.ListField(
        child=serializers.FloatField(allow_null=True),
        help_text="Availability in each of `buckets` equal slices of the window, oldest first.",
    )


class HistorySerializer(serializers.Serializer[dict[str, object]]):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    changes = TimelineEventSerializer(many=True, help_text="The window's rows, newest first, one page.")
    next = serializers.CharField(allow_null=True, help_text="The next page's URL, or null.")
    components = serializers.DictField(child=ComponentAvailabilitySerializer())


class FleetMemberSerializer(serializers.Serializer[dict[str, object]]):
    instance_id = serializers.CharField()
    status = serializers.CharField(help_text="The instance's overall status at its last heartbeat.")
    states = serializers.DictField(child=serializers.CharField(), help_text="Each component's state then.")
    version = serializers.CharField()
    started_at = serializers.DateTimeField()
    last_seen = serializers.DateTimeField(help_text="The last heartbeat.")
    gone = serializers.BooleanField(help_text="Not heard from for longer than HEALTH_FLEET_GONE_AFTER.")


class FleetSerializer(serializers.Serializer[dict[str, object]]):
    instances = FleetMemberSerializer(many=True)


class ProblemSerializer(serializers.Serializer[dict[str, object]]):
    detail = serializers.CharField()
