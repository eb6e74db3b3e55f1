"""A stand-in for the Dockerfile's base image, built from Debian's own packages. Tests only.

No container registry is reachable where the tests run, so ``python:3.11-slim-bookworm``
cannot be pulled. Debian's archive is reachable, and the official image is Debian
bookworm plus a CPython 3.11 in ``/usr/local``; so the stand-in is ``debootstrap
--variant=minbase bookworm`` from the mirror apt uses here, plus Debian's ``python3.11``
(with ``venv`` and ``pip``), the official image's ``/usr/local/bin`` links and
environment (``PATH``, ``LANG``, ``GPG_KEY``, ``PYTHON_VERSION``, ``CMD``), tagged with
the SAME name as the Dockerfile's ``FROM``, so the project's Dockerfile builds unchanged.

Two differences from the official image are deliberate and test-only:
- the host's CA bundle replaces Debian's, so pip (Debian's pip reads the system
  bundle) reaches the package index through this network's TLS-inspecting proxy;
- a host pip ``index-url`` other than the default, if any, goes into ``/etc/pip.conf``.

It is never pushed or shipped: it lives only in the test engine's data root, labelled
with a hash of this file (``RECIPE_LABEL``) so that a changed recipe rebuilds it and an
unchanged one is reused (a repeated run skips the ~1 min build).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.engine import DockerEngine

RECIPE_LABEL = "org.letraz.health.test.standin-recipe"
RECIPE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
#: What the official slim image installs at run time, plus the interpreter and its venv/pip.
EXTRA_PACKAGES = ("ca-certificates", "netbase", "tzdata", "python3-pip", "python3-venv")
#: The CPython release manager's key the official image names (informational there too).
OFFICIAL_GPG_KEY = "A035C8C19219BA821ECEA86B64E628F8D684696D"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BUILD_TIMEOUT = 900.0


@dataclass(frozen=True)
class BaseTag:
    """``python:<minor>-slim-<suite>``, the only kind of base the Dockerfile test allows."""

    tag: str
    python: str
    suite: str

    @classmethod
    def parse(cls, tag: str) -> BaseTag:
        match = re.fullmatch(r"python:(3\.\d+)-slim-([a-z]+)", tag)
        if not match:
            raise ValueError(f"no stand-in recipe for base image {tag!r}")
        return cls(tag, match.group(1), match.group(2))


@dataclass(frozen=True)
class StandIn:
    tag: str
    built: bool
    seconds: float
    python_version: str


def dockerfile_base(dockerfile: Path) -> str:
    """The single image every ``FROM`` of the Dockerfile names (stage names excluded)."""
    stages: set[str] = set()
    images: set[str] = set()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            image = next(w for w in words[1:] if not w.startswith("--"))
            if image not in stages:
                images.add(image)
            if len(words) >= 4 and words[-2].upper() == "AS":
                stages.add(words[-1])
    assert len(images) == 1, f"expected one base image, found {images}"
    return images.pop()


def debian_mirror(suite: str) -> str:
    """The Debian mirror apt uses on this machine for ``suite`` (deb822 or one-line sources)."""
    override = os.environ.get("LETRAZ_DEBIAN_MIRROR")
    if override:
        return override
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {
                    key.strip().lower(): value.strip()
                    for key, _, value in (line.partition(":") for line in stanza.splitlines())
                    if not key.startswith("#") and value
                }
                if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                    uri = fields.get("uris", "").split()
                    if uri and "security" not in uri[0]:
                        return uri[0]
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite and "security" not in words[1]:
                    return words[1]
    return DEFAULT_MIRROR


def _apt_proxy_env() -> dict[str, str]:
    """apt's own HTTP proxy, if it has one, for debootstrap's downloads."""
    done = subprocess.run(
        ["apt-config", "shell", "PROXY", "Acquire::http::Proxy"], capture_output=True, text=True, check=False
    )
    match = re.search(r"PROXY='([^']+)'", done.stdout)
    return {"http_proxy": match.group(1)} if match else {}


def host_ca_bundle() -> Path:
    for candidate in (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    fallback = Path("/etc/ssl/certs/ca-certificates.crt")
    assert fallback.is_file(), "no CA bundle on the host"
    return fallback


def host_index_url() -> str | None:
    """A non-default package index the host's pip uses (``PIP_INDEX_URL`` or pip config), if any."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        done = subprocess.run(
            ["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, check=False, timeout=60
        )
        match = re.search(r"^[\w:.-]*\.index-url='([^']+)'", done.stdout, re.MULTILINE)
        url = match.group(1) if match else None
    return url if url and url.startswith(("http://", "https://")) else None


def _run(args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, env=os.environ | (env or {})
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:3])} … exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def _prepare_rootfs(root: Path, base: BaseTag) -> str:
    """Make the debootstrapped tree look like the official image; return the Python version."""
    python = f"python{base.python}"
    # The official slim image carries no package caches or lists.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / leftover).glob("*"):
            if entry.is_file():
                entry.unlink()
    shutil.copyfile(host_ca_bundle(), root / "etc/ssl/certs/ca-certificates.crt")
    # The official image's interpreter is not "externally managed" (PEP 668).
    with contextlib.suppress(FileNotFoundError):
        (root / f"usr/lib/{python}/EXTERNALLY-MANAGED").unlink()
    local_bin = root / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    links = {
        python: f"/usr/bin/{python}",
        "python3": python,
        "python": python,
        "pip3": "/usr/bin/pip3",
        "pip": "pip3",
        f"pip{base.python}": "pip3",
        "pydoc3": f"/usr/bin/pydoc{base.python}",
        "pydoc": "pydoc3",
    }
    for name, target in links.items():
        link = local_bin / name
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(target)
    index_url = host_index_url()
    if index_url:
        (root / "etc/pip.conf").write_text(f"[global]\nindex-url = {index_url}\n")
    version = _run(
        ["chroot", str(root), f"/usr/bin/{python}", "-c", "import platform; print(platform.python_version())"],
        timeout=60,
    ).strip()
    assert version.startswith(f"{base.python}."), version
    return version


def ensure_standin(engine: DockerEngine, tag: str, *, workdir: Path | None = None) -> StandIn:
    """The stand-in tagged ``tag``: reused when this recipe built it, otherwise built now."""
    started = time.monotonic()
    base = BaseTag.parse(tag)
    existing = engine.inspect("image", tag)
    if existing is not None:
        labels = (existing.get("Config") or {}).get("Labels") or {}
        env = dict(item.split("=", 1) for item in (existing.get("Config") or {}).get("Env") or [])
        if labels.get(RECIPE_LABEL) == RECIPE:
            return StandIn(tag, False, time.monotonic() - started, env.get("PYTHON_VERSION", "?"))
        engine.docker("rmi", "-f", tag, timeout=120)
    for tool in ("debootstrap", "chroot", "tar"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is needed to build the stand-in for {tag} (apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix="standin-", dir=workdir) as scratch:
        root = Path(scratch) / "rootfs"
        mirror = debian_mirror(base.suite)
        packages = ",".join((f"python{base.python}", f"python{base.python}-venv", *EXTRA_PACKAGES))
        _run(
            ["debootstrap", "--variant=minbase", f"--include={packages}", base.suite, str(root), mirror],
            timeout=BUILD_TIMEOUT,
            env=_apt_proxy_env(),
        )
        version = _prepare_rootfs(root, base)
        changes = [
            f"ENV PATH=/usr/local/bin:{DEBIAN_PATH}",
            "ENV LANG=C.UTF-8",
            f"ENV GPG_KEY={OFFICIAL_GPG_KEY}",
            f"ENV PYTHON_VERSION={version}",
            f"LABEL {RECIPE_LABEL}={RECIPE}",
            'CMD ["python3"]',
        ]
        with subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        ) as tar:
            assert tar.stdout is not None
            args = ["import", *(arg for change in changes for arg in ("--change", change))]
            args += ["--message", f"test-only stand-in for {tag} (debootstrap {base.suite}, {mirror})", "-", tag]
            engine.docker(*args, timeout=BUILD_TIMEOUT, stdin=tar.stdout)
        assert tar.returncode == 0, f"tar exited {tar.returncode}"
    return StandIn(tag, True, time.monotonic() - started, version)
