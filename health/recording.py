"""Wires the timeline into a server process: the recorder (a listener) and the heartbeat.

Only long-lived servers record (gunicorn workers, ``grpcserver``): they get their service
from :func:`health.service.get_health_service`, which builds it with
:func:`timeline_listeners` and then calls :func:`start_recording`. One-shot callers such
as ``manage.py health`` do not. ``HEALTH_HISTORY_DAYS=0`` turns recording off.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from health.conf import HealthSettings, health_settings
from health.fleet import Heartbeat
from health.stream import get_timeline_tail
from health.timeline import TimelineRecorder

if TYPE_CHECKING:
    from health.runner import HealthListener
    from health.service import HealthService


@dataclass
class Recording:
    recorder: TimelineRecorder
    heartbeat: Heartbeat

    def close(self) -> None:
        self.heartbeat.close()
        self.recorder.close()


_recorder: TimelineRecorder | None = None
_recording: Recording | None = None
_lock = threading.Lock()


def timeline_listeners(conf: HealthSettings = health_settings) -> list[HealthListener]:
    """The listeners a server's service gets: the timeline recorder, unless turned off."""
    global _recorder
    if not conf.timeline_enabled:
        return []
    with _lock:
        _recorder = TimelineRecorder(conf.instance_id, on_written=get_timeline_tail().wake)
        return [_recorder]


def start_recording(service: HealthService, conf: HealthSettings = health_settings) -> None:
    """Start the recorder's writer (with a ``start`` row) and the heartbeat for ``service``."""
    global _recording
    with _lock:
        recorder = _recorder
        if recorder is None or recorder not in service.listeners or _recording is not None:
            return
        recorder.record_start()
        recorder.start()
        heartbeat = Heartbeat(service, interval=conf.heartbeat_interval, history_days=conf.history_days).start()
        _recording = Recording(recorder, heartbeat)


def stop_recording() -> None:
    """Stop the threads, writing what is buffered if the database answers (bounded)."""
    global _recording, _recorder
    with _lock:
        recording, _recording, _recorder = _recording, None, None
    if recording is not None:
        recording.close()


def forget_after_fork() -> None:
    # Threads do not survive fork(); the child starts its own.
    global _recording, _recorder, _lock
    _recording, _recorder, _lock = None, None, threading.Lock()
