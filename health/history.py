"""Reading the timeline: time in each state, availability, the fleet.

These are the queries behind ``/api/v1/health/history/``, ``/fleet/``, the status page
and ``manage.py health --history``; ``bench/`` runs them on a million rows with
``EXPLAIN``. Time is counted in instance-seconds: each instance's state lasts from its
row until its next row, the end of the window, or its last heartbeat once it is gone.
Time before an instance's first row is unknown and not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from health.models import FleetInstance, TimelineEvent, TimelineKind, TimelineRollup
from health.status import OPERATIONAL, Component

ALL_COMPONENTS: tuple[str, ...] = tuple(component.value for component in Component)


@dataclass(frozen=True)
class ComponentHistory:
    """One component over a window: seconds per state, availability, and per bucket."""

    component: str
    seconds: dict[str, float]
    buckets: list[float | None] = field(default_factory=list)  # availability per bucket, None if unknown

    @property
    def observed(self) -> float:
        return sum(self.seconds.values())

    @property
    def availability(self) -> float | None:
        """The share of observed time spent OPERATIONAL; None when nothing was observed."""
        observed = self.observed
        return self.seconds.get(OPERATIONAL, 0.0) / observed if observed else None


@dataclass(frozen=True)
class FleetMember:
    instance_id: str
    status: str
    states: dict[str, str]
    version: str
    started_at: datetime
    last_seen: datetime
    gone: bool


def changes(
    *,
    component: str | None = None,
    instance: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[TimelineEvent]:
    """Timeline rows, newest first, filtered as the history API's query says."""
    rows = TimelineEvent.objects.all()
    if component:
        rows = rows.filter(component=component)
    if instance:
        rows = rows.filter(instance_id=instance)
    if since is not None:
        rows = rows.filter(at__gte=since)
    if until is not None:
        rows = rows.filter(at__lt=until)
    return rows.order_by("-at", "-id")


def fleet(now: datetime, gone_after: float) -> list[FleetMember]:
    """Every instance that heartbeat within the retention, gone or not, by instance id."""
    gone_before = now - timedelta(seconds=gone_after)
    fields = ("instance_id", "status", "states", "version", "started_at", "last_seen")
    return [
        FleetMember(instance_id, status, states, version, started_at, last_seen, last_seen < gone_before)
        for instance_id, status, states, version, started_at, last_seen in FleetInstance.objects.order_by(
            "instance_id"
        ).values_list(*fields)
    ]


def fleet_json(now: datetime, gone_after: float) -> str:
    """The fleet API's ``instances`` list as JSON text made by PostgreSQL (no row objects in Python).

    A thousand instances are one string from the database straight into the response.
    """
    table = FleetInstance._meta.db_table
    gone_before = connection.ops.adapt_datetimefield_value(now - timedelta(seconds=gone_after))
    sql = f"""
        SELECT COALESCE(json_agg(json_build_object(
            'instance_id', instance_id, 'status', status, 'states', states, 'version', version,
            'started_at', started_at, 'last_seen', last_seen, 'gone', last_seen < %s
        ) ORDER BY instance_id), '[]')::text
        FROM {table}
    """  # noqa: S608 (the model's table, values as parameters)
    with connection.cursor() as cursor:
        cursor.execute(sql, [gone_before])
        row = cursor.fetchone()
    return str(row[0]) if row else "[]"


def _sql_dialect() -> dict[str, str]:
    if connection.vendor == "postgresql":
        return {"epoch": "EXTRACT(EPOCH FROM {})::float8", "greatest": "GREATEST", "least": "LEAST"}
    # SQLite (development): julianday parses the text Django stores.
    return {"epoch": "((julianday({}) - 2440587.5) * 86400.0)", "greatest": "MAX", "least": "MIN"}


def component_history(
    since: datetime,
    until: datetime,
    *,
    now: datetime,
    gone_after: float,
    components: Sequence[str] = ALL_COMPONENTS,
    instance: str | None = None,
    buckets: int = 1,
) -> dict[str, ComponentHistory]:
    """Seconds in each state per component over ``[since, until)``, and ``buckets`` availabilities.

    For one instance, exact, from its rows (:func:`instance_history`); for the whole
    fleet, from the hourly rollup plus the states still open (:func:`fleet_history`).
    """
    if instance:
        return instance_history(
            since, until, now=now, gone_after=gone_after, components=components, instance=instance, buckets=buckets
        )
    return fleet_history(since, until, now=now, gone_after=gone_after, components=components, buckets=buckets)


def fleet_history(
    since: datetime,
    until: datetime,
    *,
    now: datetime,
    gone_after: float,
    components: Sequence[str] = ALL_COMPONENTS,
    buckets: int = 1,
) -> dict[str, ComponentHistory]:
    """The fleet's instance-seconds per state: closed states from the hourly rollup, open ones from the fleet.

    Reads the rollup rows of the window's hours (at most 24 x days x components x states)
    and one row per instance, whatever the number of changes. Hour-grained: the hours at
    the window's edges count whole, and a closed state's hour counts in the bucket where
    the hour starts.
    """
    start, stop = since.timestamp(), until.timestamp()
    width = (stop - start) / buckets
    names = list(components)
    per_bucket: dict[str, list[dict[str, float]]] = {name: [{} for _ in range(buckets)] for name in names}

    def add(name: str, index: int, status: str, seconds: float) -> None:
        bucket = per_bucket[name][min(buckets - 1, max(0, index))]
        bucket[status] = bucket.get(status, 0.0) + seconds

    on_postgresql = connection.vendor == "postgresql"
    closed_states = _closed_states_by_bucket if on_postgresql else _closed_states_in_python
    for name, index, status, spent in closed_states(names, start, until, width):
        add(name, int(index), status, float(spent))
    gone_before = (now - timedelta(seconds=gone_after)).timestamp()
    open_states = _open_states_by_bucket if on_postgresql else _open_states_in_python
    for name, index, status, spent in open_states(names, start, stop, width, buckets, now, gone_before):
        add(name, int(index), status, float(spent))
    return _summed(names, per_bucket)


def _first_hour(start: float, until: datetime) -> datetime:
    """The rollup hour the window starts in: the fleet's figures are hour-grained at the edges."""
    return datetime.fromtimestamp(start - start % 3600, tz=until.tzinfo)


def _closed_states_by_bucket(
    names: list[str], start: float, until: datetime, width: float
) -> list[tuple[str, int, str, float]]:
    """The rollup's hours summed per bucket by PostgreSQL: a row per bucket and state.

    A week's hours are ~1,000 rows; turning each one's timestamp into a Python datetime
    cost more than the query itself (12 ms of the status page's 43, bench --fleet).
    """
    sql = f"""
        SELECT component, floor((EXTRACT(EPOCH FROM hour)::float8 - %(start)s) / %(width)s)::int AS i, status,
               SUM(seconds)
        FROM {TimelineRollup._meta.db_table}
        WHERE hour >= %(first)s AND hour < %(until)s AND component = ANY(%(names)s) AND seconds > 0
        GROUP BY component, i, status
    """  # noqa: S608 (the model's table, values as parameters)
    first = _first_hour(start, until)
    params: dict[str, Any] = {"start": start, "width": width, "first": first, "until": until, "names": names}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(name, index, status, float(spent)) for name, index, status, spent in cursor.fetchall()]


def _closed_states_in_python(
    names: list[str], start: float, until: datetime, width: float
) -> list[tuple[str, int, str, float]]:
    """What :func:`_closed_states_by_bucket` answers, hour by hour (SQLite; and its test)."""
    rollup = TimelineRollup.objects.filter(
        hour__gte=_first_hour(start, until), hour__lt=until, component__in=names, seconds__gt=0
    )
    rows = rollup.values_list("hour", "component", "status", "seconds")
    return [(name, int((hour.timestamp() - start) // width), status, spent) for hour, name, status, spent in rows]


def _open_states_in_python(
    names: list[str], start: float, stop: float, width: float, buckets: int, now: datetime, gone_before: float
) -> list[tuple[str, int, str, float]]:
    """What :func:`_open_states_by_bucket` answers, from every fleet row (SQLite; and its test)."""
    pieces = []
    for current, last_seen in FleetInstance.objects.values_list("current", "last_seen"):
        seen = last_seen.timestamp()
        end = min(stop, seen if seen < gone_before else now.timestamp())
        for name in names:
            if name not in current:
                continue
            status, opened = current[name]
            moment = max(float(opened), start)
            while moment < end:  # spread the open state over the buckets it covers
                index = min(buckets - 1, int((moment - start) // width))
                piece_end = min(end, start + (index + 1) * width)
                pieces.append((name, index, status, piece_end - moment))
                moment = piece_end
    return pieces


def _open_states_by_bucket(
    names: list[str], start: float, stop: float, width: float, buckets: int, now: datetime, gone_before: float
) -> list[tuple[str, int, str, float]]:
    """PostgreSQL sums the open states per bucket: one row per bucket and state, not one per instance.

    No row per (instance, bucket): an open state from ``s`` to ``e`` covers bucket ``b0``
    from ``s``, bucket ``b1`` up to ``e`` and every bucket between whole. So PostgreSQL
    returns, per component and state, the sums of the first and last pieces by bucket and
    the number of states whose whole buckets start and stop at each bucket; the whole
    buckets are counted here from those starts and stops. A statement expanding every
    state into its buckets made 12,000 rows to aggregate at 1,000 instances; with this and
    the rollup summed by PostgreSQL, the status page's p99 went from 66 to 41 ms (24 h) and
    55 to 37 ms (7 d), bench --fleet. The keys are read one by one
    (``current -> name``), which PostgreSQL does faster than ``jsonb_each``.
    """
    table = FleetInstance._meta.db_table
    sql = f"""
        WITH open AS MATERIALIZED (
            SELECT k.name AS component, f.current -> k.name ->> 0 AS status,
                   GREATEST((f.current -> k.name ->> 1)::float8, %(start)s) AS s,
                   LEAST(%(stop)s, CASE WHEN EXTRACT(EPOCH FROM f.last_seen) < %(gone)s
                                        THEN EXTRACT(EPOCH FROM f.last_seen)::float8 ELSE %(now)s END) AS e
            FROM {table} f CROSS JOIN unnest(%(names)s::text[]) AS k(name)
            WHERE f.current ? k.name
        ), b AS MATERIALIZED (
            SELECT component, status, s, e,
                   floor((s - %(start)s) / %(width)s)::int AS b0,
                   LEAST(%(last)s, floor((e - %(start)s) / %(width)s)::int) AS b1
            FROM open WHERE e > s
        )
        SELECT component, status, 'first', b0, SUM(LEAST(e, %(start)s + (b0 + 1) * %(width)s) - s)
        FROM b GROUP BY component, status, b0
        UNION ALL
        SELECT component, status, 'last', b1, SUM(e - (%(start)s + b1 * %(width)s))
        FROM b WHERE b1 > b0 GROUP BY component, status, b1
        UNION ALL
        SELECT component, status, 'from', b0 + 1, COUNT(*) FROM b WHERE b1 > b0 + 1 GROUP BY component, status, b0
        UNION ALL
        SELECT component, status, 'to', b1, COUNT(*) FROM b WHERE b1 > b0 + 1 GROUP BY component, status, b1
    """  # noqa: S608 (the model's table, values as parameters)
    params: dict[str, Any] = {
        "start": start,
        "stop": stop,
        "gone": gone_before,
        "now": now.timestamp(),
        "names": names,
        "width": width,
        "last": buckets - 1,
    }
    pieces: list[tuple[str, int, str, float]] = []
    whole: dict[tuple[str, str], list[int]] = {}  # +starts / -stops of whole buckets, by bucket
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for name, status, kind, index, value in cursor.fetchall():
            if kind in ("first", "last"):
                pieces.append((name, index, status, float(value)))
            else:
                changes = whole.setdefault((name, status), [0] * (buckets + 1))
                changes[index] += value if kind == "from" else -value
    for (name, status), changes in whole.items():
        covering = 0
        for index in range(buckets):
            covering += changes[index]
            if covering:
                pieces.append((name, index, status, covering * width))
    return pieces


def _summed(names: list[str], per_bucket: dict[str, list[dict[str, float]]]) -> dict[str, ComponentHistory]:
    result = {}
    for name in names:
        seconds: dict[str, float] = {}
        for bucket in per_bucket[name]:
            for status, value in bucket.items():
                seconds[status] = seconds.get(status, 0.0) + value
        result[name] = ComponentHistory(
            name,
            seconds,
            [(b.get(OPERATIONAL, 0.0) / sum(b.values())) if sum(b.values()) else None for b in per_bucket[name]],
        )
    return result


def instance_history(
    since: datetime,
    until: datetime,
    *,
    now: datetime,
    gone_after: float,
    components: Sequence[str] = ALL_COMPONENTS,
    instance: str | None = None,
    buckets: int = 1,
) -> dict[str, ComponentHistory]:
    """Exact seconds in each state, from the rows themselves (meant for one instance).

    One statement: for each instance and component, its last row before ``since`` (found
    through the fleet table and the ``(instance_id, component, at)`` index) and the rows
    in the window become segments, cut to the window and, for a gone instance, to its
    last heartbeat; the segments are summed per bucket. Over the whole fleet this reads
    every change in the window, which is why the fleet uses the rollup instead.
    """
    dialect = _sql_dialect()

    def epoch(column: str) -> str:
        return dialect["epoch"].format(column)

    greatest, least = dialect["greatest"], dialect["least"]
    start, stop = since.timestamp(), until.timestamp()
    width = (stop - start) / buckets
    adapt = connection.ops.adapt_datetimefield_value
    names = list(components)
    placeholders = ", ".join(["%s"] * len(names))
    comps = " UNION ALL ".join(["SELECT %s AS name"] * len(names))
    instance_filter = "AND f.instance_id = %s" if instance else ""
    window_instance = "AND instance_id = %s" if instance else ""
    event, fleet_table = TimelineEvent._meta.db_table, FleetInstance._meta.db_table
    sql = f"""
        WITH RECURSIVE b(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM b WHERE i + 1 < %s),
        comps AS ({comps}),
        seed AS (
            SELECT e.instance_id, e.component, e.to_status, e.at, e.id
            FROM {fleet_table} f CROSS JOIN comps c
            JOIN {event} e ON e.id = (
                SELECT x.id FROM {event} x
                WHERE x.instance_id = f.instance_id AND x.component = c.name AND x.kind = %s AND x.at < %s
                ORDER BY x.at DESC, x.id DESC LIMIT 1
            )
            WHERE 1 = 1 {instance_filter}
        ),
        win AS (
            SELECT instance_id, component, to_status, at, id FROM {event}
            WHERE component IN ({placeholders}) AND kind = %s AND at >= %s AND at < %s {window_instance}
        ),
        seg AS (
            SELECT r.instance_id, r.component, r.to_status AS status,
                   {greatest}({epoch("r.at")}, %s) AS s,
                   COALESCE({epoch("LEAD(r.at) OVER (PARTITION BY r.instance_id, r.component ORDER BY r.at, r.id)")},
                            %s) AS e
            FROM (SELECT * FROM seed UNION ALL SELECT * FROM win) r
        ),
        cut AS (
            SELECT seg.component, seg.status, seg.s,
                   {least}(seg.e, %s, CASE WHEN f.last_seen < %s THEN {epoch("f.last_seen")} ELSE %s END) AS e
            FROM seg LEFT JOIN {fleet_table} f ON f.instance_id = seg.instance_id
        )
        SELECT cut.component, b.i, cut.status,
               SUM({least}(cut.e, %s + (b.i + 1) * %s) - {greatest}(cut.s, %s + b.i * %s))
        FROM cut JOIN b ON cut.s < %s + (b.i + 1) * %s AND cut.e > %s + b.i * %s
        WHERE cut.e > cut.s
        GROUP BY cut.component, b.i, cut.status
    """  # noqa: S608 (table names from the models, values as parameters)
    params: list[Any] = [buckets, *names, TimelineKind.CHANGE.value, adapt(since)]
    if instance:
        params.append(instance)
    params += [*names, TimelineKind.CHANGE.value, adapt(since), adapt(until)]
    if instance:
        params.append(instance)
    gone_before = now - timedelta(seconds=gone_after)
    params += [start, stop, stop, adapt(gone_before), stop]
    params += [start, width, start, width, start, width, start, width]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    seconds: dict[str, dict[str, float]] = {name: {} for name in names}
    per_bucket: dict[str, list[dict[str, float]]] = {name: [{} for _ in range(buckets)] for name in names}
    for name, index, status, duration in found:
        total = float(duration)
        seconds[name][status] = seconds[name].get(status, 0.0) + total
        per_bucket[name][int(index)][status] = total
    return {
        name: ComponentHistory(
            name,
            seconds[name],
            [
                (bucket.get(OPERATIONAL, 0.0) / sum(bucket.values())) if sum(bucket.values()) else None
                for bucket in per_bucket[name]
            ],
        )
        for name in names
    }
