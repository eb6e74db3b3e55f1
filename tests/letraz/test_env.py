"""The environment reader: typed values, or an error that names the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_the_deploy_check_requires_a_secret_key_outside_debug() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    command = [sys.executable, "manage.py", "check", "--deploy", "--tag", "letraz"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "letraz.E001" in result.stderr
    assert "DJANGO_SECRET_KEY must be set in production" in result.stderr
    with_key = subprocess.run(
        command, env=env | {"DJANGO_SECRET_KEY": "k"}, capture_output=True, text=True, timeout=60, check=False
    )
    assert with_key.returncode == 0, with_key.stderr
    development = subprocess.run(
        command, env=env | {"DJANGO_DEBUG": "true"}, capture_output=True, text=True, timeout=60, check=False
    )
    assert development.returncode == 0, development.stderr


def test_the_schema_can_be_generated_on_a_fresh_clone_without_any_variable() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "operationId: health_retrieve" in result.stdout


def test_a_malformed_number_stops_the_process_at_start() -> None:
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SECRET_KEY": "x", "HEALTH_CHECK_TIMEOUT": "soon"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr == "Configuration error: HEALTH_CHECK_TIMEOUT must be a number, got 'soon'.\n"


def test_a_variable_can_come_from_the_file_its_file_variable_names(tmp_path: Path) -> None:
    secret = tmp_path / "CLERK_SECRET_KEY"
    secret.write_text("sk_test_from_a_file\n")
    env = Env({"CLERK_SECRET_KEY_FILE": str(secret), "HEALTH_CACHE_TTL_FILE": str(_written(tmp_path, "7.5"))})
    assert env.string("CLERK_SECRET_KEY") == "sk_test_from_a_file"
    assert env.number("HEALTH_CACHE_TTL", 5.0) == 7.5


def test_both_a_variable_and_its_file_is_an_error(tmp_path: Path) -> None:
    env = Env({"DATABASE_URL": "sqlite://", "DATABASE_URL_FILE": str(_written(tmp_path, "postgres://x"))})
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL or DATABASE_URL_FILE, not both"):
        env.string("DATABASE_URL")


def test_an_unreadable_file_is_an_error_naming_the_variable_not_the_content(tmp_path: Path) -> None:
    env = Env({"DJANGO_SECRET_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(ImproperlyConfigured, match=r"DJANGO_SECRET_KEY_FILE names a file that cannot be read"):
        env.string("DJANGO_SECRET_KEY")


def _written(directory: Path, text: str) -> Path:
    path = directory / f"value-{abs(hash(text))}"
    path.write_text(text)
    return path


def test_forwarded_allow_ips_is_nobody_by_default_and_checked() -> None:
    from letraz.proxies import is_trusted, trusted_proxies

    assert trusted_proxies(Env({})) == ()
    assert not is_trusted("127.0.0.1", ())
    proxies = trusted_proxies(Env({"FORWARDED_ALLOW_IPS": "10.0.0.0/8, ::1"}))
    assert is_trusted("10.2.3.4", proxies) and is_trusted("::1", proxies)
    assert not is_trusted("192.0.2.1", proxies) and not is_trusted("not-an-ip", proxies)
    with pytest.raises(ImproperlyConfigured, match="would trust every client"):
        trusted_proxies(Env({"FORWARDED_ALLOW_IPS": "*"}))
    with pytest.raises(ImproperlyConfigured, match="FORWARDED_ALLOW_IPS must be IP addresses or networks, got 'proxy'"):
        trusted_proxies(Env({"FORWARDED_ALLOW_IPS": "proxy"}))
