"""The environment reader: typed values, or an error that names the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from letraz.env import Env, masked, shown


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
        ("number", "fast", "HEALTH_X is 'fast': expected a number, such as 1."),
        ("number", "nan", "HEALTH_X is 'nan': expected a number, such as 1."),
        ("integer", "8000.5", "HEALTH_X is '8000.5': expected a whole number, such as 1."),
        ("boolean", "maybe", "HEALTH_X is 'maybe': expected true or false (also 1/0, yes/no, on/off)."),
    ],
)
def test_a_malformed_value_gives_the_default_and_a_problem_naming_it(method: str, value: str, message: str) -> None:
    env = Env({"HEALTH_X": value})
    assert getattr(env, method)("HEALTH_X", 1) == 1
    assert [problem.message for problem in env.problems] == [message]


def test_the_unit_says_what_a_number_counts() -> None:
    env = Env({"HEALTH_CHECK_TIMEOUT": "abc"})
    env.number("HEALTH_CHECK_TIMEOUT", 0.5, unit="a number of seconds")
    assert env.problems[0].message == "HEALTH_CHECK_TIMEOUT is 'abc': expected a number of seconds, such as 0.5."


def test_a_variable_read_twice_is_one_problem() -> None:
    env = Env({"PORT": "eighty"})
    assert env.integer("PORT", 8000) == env.integer("PORT", 8000) == 8000
    assert len(env.problems) == 1


def test_a_long_value_is_cut_short_in_the_message() -> None:
    env = Env({"HEALTH_X": "x" * 500})
    env.number("HEALTH_X", 1)
    assert len(env.problems[0].message) < 120


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        ("https://abc123key@o0.ingest.sentry.io/42", "'https://***@o0.ingest.sentry.io/42'"),
        ("postgres://app:hunter2@db.internal:5432/letraz", "'postgres://***@db.internal:5432/letraz'"),
        ("sk_live_abcdef", "<14 characters, masked>"),
        ("http://[::1/x", "<13 characters, masked>"),
    ],
)
def test_secrets_are_masked_never_shown(secret: str, shown: str) -> None:
    assert masked(secret) == shown


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
    assert (
        "?: (letraz.E001) DJANGO_SECRET_KEY is not set: expected a long random secret in production "
        "(or DJANGO_DEBUG=true for development, which uses a throwaway key)."
    ) in result.stderr.splitlines()
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


def check(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SECRET_KEY": "x"} | variables
    return subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"HEALTH_CHECK_TIMEOUT": "soon"},
            "?: (letraz.E004) HEALTH_CHECK_TIMEOUT is 'soon': expected a number of seconds, such as 0.5.",
        ),
        ({"PORT": "eighty"}, "?: (letraz.E004) PORT is 'eighty': expected a port number, such as 8000."),
        (
            {"DATABASE_URL": "mysq://app:hunter2@db/letraz"},
            "?: (letraz.E004) DATABASE_URL is 'mysq://***@db/letraz': expected a database URL such as "
            "postgres://USER:PASSWORD@HOST:5432/NAME or sqlite:///PATH.",
        ),
        (
            {"SENTRY_DSN": "https://topsecretkey@o0.ingest.sentry.io/abc"},
            "?: (letraz.E005) SENTRY_DSN is 'https://***@o0.ingest.sentry.io/abc': expected a DSN such as "
            "https://PUBLIC_KEY@o0.ingest.sentry.io/PROJECT_ID (Invalid project in DSN ('abc')).",
        ),
    ],
)
def test_a_malformed_variable_is_a_check_error_with_an_id_and_exit_1(variables: dict[str, str], line: str) -> None:
    result = check(**variables)
    assert result.returncode == 1, result.stderr
    assert line in result.stderr.splitlines(), result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
    assert "topsecretkey" not in result.stderr
    assert "System check identified 1 issue" in result.stderr, "one problem, one message"


def test_a_variable_can_come_from_the_file_its_file_variable_names(tmp_path: Path) -> None:
    secret = tmp_path / "CLERK_SECRET_KEY"
    secret.write_text("sk_test_from_a_file\n")
    env = Env({"CLERK_SECRET_KEY_FILE": str(secret), "HEALTH_CACHE_TTL_FILE": str(_written(tmp_path, "7.5"))})
    assert env.string("CLERK_SECRET_KEY") == "sk_test_from_a_file"
    assert env.number("HEALTH_CACHE_TTL", 5.0) == 7.5


def test_both_a_variable_and_its_file_is_a_problem(tmp_path: Path) -> None:
    env = Env({"DATABASE_URL": "sqlite://", "DATABASE_URL_FILE": str(_written(tmp_path, "postgres://x"))})
    assert env.string("DATABASE_URL", "default") == "default"
    assert [p.message for p in env.problems] == [
        "DATABASE_URL is set together with DATABASE_URL_FILE: expected DATABASE_URL or DATABASE_URL_FILE, not both."
    ]


def test_an_unreadable_file_is_a_problem_naming_the_variable_not_the_content(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    env = Env({"DJANGO_SECRET_KEY_FILE": str(missing)})
    assert env.string("DJANGO_SECRET_KEY") == ""
    assert [p.message for p in env.problems] == [
        f"DJANGO_SECRET_KEY_FILE is {shown(str(missing))}: expected a readable UTF-8 file (FileNotFoundError)."
    ]


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
    for value, expected in [
        ("*", "FORWARDED_ALLOW_IPS is '*': expected the proxies' addresses; '*' would trust every client."),
        ("proxy", "FORWARDED_ALLOW_IPS is 'proxy': expected IP addresses or networks, such as 10.0.0.0/8."),
    ]:
        source = Env({"FORWARDED_ALLOW_IPS": value})
        assert trusted_proxies(source) == (), "a malformed list trusts nobody"
        assert [p.message for p in source.problems] == [expected]
