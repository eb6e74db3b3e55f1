"""The environment reader: typed values, or an error that names the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from letraz.env import Env


def test_unset_and_blank_variables_take_the_default() -> None:
    env = Env({"BLANK": "  "})
    assert env.number("MISSING", 0.5) == 0.5
    assert env.number("BLANK", 0.5) == 0.5
    assert env.boolean("MISSING", True) is True
    assert env.string("BLANK", "x") == "x"


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("1", True), ("ON", True), ("false", False), ("0", False)]
)
def test_booleans_are_read_in_the_usual_spellings(text: str, expected: bool) -> None:
    assert Env({"FLAG": text}).boolean("FLAG", not expected) is expected


@pytest.mark.parametrize(
    ("method", "value", "message"),
    [
        ("number", "fast", "HEALTH_X must be a number"),
        ("number", "nan", "HEALTH_X must be a finite number"),
        ("integer", "8000.5", "HEALTH_X must be a whole number"),
        ("boolean", "maybe", "HEALTH_X must be true or false"),
    ],
)
def test_a_malformed_value_is_an_error_naming_the_variable(method: str, value: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        getattr(Env({"HEALTH_X": value}), method)("HEALTH_X", 1)


def test_lists_drop_blanks_and_empty_items() -> None:
    assert Env({"L": " clerk, ,db ,"}).items("L") == ("clerk", "db")
    assert Env({}).items("L", ("x",)) == ("x",)


@pytest.mark.parametrize("blank", ["", "  ", " , ,"])
def test_a_blank_list_is_the_default_not_an_empty_list(blank: str) -> None:
    assert Env({"L": blank}).items("L", ("clerk", "db")) == ("clerk", "db")


def test_production_settings_refuse_to_load_without_a_secret_key() -> None:
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "letraz.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.startswith("Configuration error: DJANGO_SECRET_KEY must be set")
    assert "Traceback" not in result.stderr


def test_a_malformed_number_stops_the_process_at_start() -> None:
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SECRET_KEY": "x", "HEALTH_CHECK_TIMEOUT": "soon"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr == "Configuration error: HEALTH_CHECK_TIMEOUT must be a number, got 'soon'.\n"
