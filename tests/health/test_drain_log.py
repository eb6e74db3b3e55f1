"""Draining says so in the log, once when it starts and once when it ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from health.service import HealthService


def drain_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("Draining")]


def test_draining_logs_one_line_when_it_starts_and_one_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    drain_file = tmp_path / "drain"
    service = HealthService([], instance_id="d", critical=frozenset(), drain_file=drain_file)
    caplog.set_level("INFO", logger="health")
    assert service.check().draining is False
    assert drain_lines(caplog) == []
    drain_file.touch()
    for _ in range(3):
        assert service.check().draining is True
    assert drain_lines(caplog) == [("WARNING", "Draining: readiness answers 503 while HEALTH_DRAIN_FILE exists")]
    drain_file.unlink()
    for _ in range(3):
        assert service.check().draining is False
    assert drain_lines(caplog) == [
        ("WARNING", "Draining: readiness answers 503 while HEALTH_DRAIN_FILE exists"),
        ("INFO", "Draining ended: readiness answers for this instance again"),
    ]
