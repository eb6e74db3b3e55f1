"""What the instances of the fleet remember: the incident timeline and the fleet table.

Both are written off the probe path (``health/timeline.py``, ``health/fleet.py``) and
read by the history, fleet and stream views. The indexes are chosen for those reads
(``bench/`` shows them with ``EXPLAIN`` on a million rows).
"""

from __future__ import annotations

from django.db import models

#: The ``component`` of rows about the instance itself (it started, changes were lost).
INSTANCE = "instance"


class TimelineKind(models.TextChoices):
    CHANGE = "change", "a component changed state"
    START = "start", "a process of the instance started"
    GAP = "gap", "changes were lost (the buffer overflowed while the database was down)"


class TimelineEvent(models.Model):
    """One change of one component's state on one instance (or a start, or a gap).

    ``at`` is when the instance observed the change (written later, with that time, if
    the database was down); ``previous_duration`` is how long the previous state lasted
    on that instance, computed from the timeline itself so it holds across restarts.
    ``reason`` is the scrubbed reason, shown only with the diagnostics token.
    """

    instance_id = models.CharField(max_length=64)
    component = models.CharField(max_length=32)
    kind = models.CharField(max_length=8, choices=TimelineKind.choices, default=TimelineKind.CHANGE)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    at = models.DateTimeField()
    previous_duration = models.FloatField(null=True)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        indexes = [
            # History and availability of one component over a window; the stream's tail.
            models.Index(fields=["component", "at"], name="health_tl_component_at"),
            # The state of one instance's component at a moment (writer, availability seed).
            models.Index(fields=["instance_id", "component", "at"], name="health_tl_instance_at"),
            # Windows over every component, and pruning by age.
            models.Index(fields=["at"], name="health_tl_at"),
        ]

    def __str__(self) -> str:
        return f"{self.instance_id} {self.component} {self.from_status or '?'} -> {self.to_status} at {self.at}"


class FleetInstance(models.Model):
    """One row per instance: its current states, version and last heartbeat.

    No host names: only the configured ``INSTANCE_ID`` (a pod UID, or a hash of the host).
    ``boot_id`` tells a sibling worker of the same running instance from a restart.
    """

    instance_id = models.CharField(max_length=64, primary_key=True)
    status = models.CharField(max_length=16, blank=True)
    states = models.JSONField(default=dict)
    version = models.CharField(max_length=32, blank=True)
    boot_id = models.CharField(max_length=32, blank=True)
    #: Each component's state in the timeline and since when: ``{component: [status, epoch seconds]}``.
    #: Kept by the timeline's writer; the open end of every state, for fleet-wide availability.
    current = models.JSONField(default=dict)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()

    # No index on last_seen: every heartbeat changes it, and without an index on it
    # PostgreSQL updates the row in place (HOT), with no index write per heartbeat. The
    # table has one row per instance; reading it whole is what the fleet view does anyway.

    def __str__(self) -> str:
        return f"{self.instance_id} {self.status} (seen {self.last_seen})"


class TimelineRollup(models.Model):
    """Instance-seconds each component spent in each state, per hour, over the whole fleet.

    Added to by the writer whenever a state ends (a new row closes the previous one), so
    fleet-wide availability over days reads a few hundred of these rows instead of every
    instance's changes; the states still open come from the fleet rows' ``current``.
    Fleet-wide figures are therefore hour-grained at the window's edges.
    """

    hour = models.DateTimeField()
    component = models.CharField(max_length=32)
    status = models.CharField(max_length=16)
    seconds = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "component", "status"], name="health_rollup_hour_component_status")
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.component} {self.status} {self.seconds:.0f} s"
