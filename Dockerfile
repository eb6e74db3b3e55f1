#
# Letraz health service image: one image, two processes.
#   web  (default CMD): gunicorn -c gunicorn.conf.py letraz.wsgi:application  -> :8000
#   grpc (override)   : python manage.py grpcserver                           -> :50051
#
# Build:  docker build -t letraz-health:0.1.0 .
# Run:    docker run --rm -p 8000:8000 -e DJANGO_SECRET_KEY=... -e DATABASE_URL=postgres://... letraz-health:0.1.0
#         (/app is read-only for the runtime user, so the SQLite fallback cannot be created)
#
# Python is pinned to the minor version CI tests (3.11) on Debian bookworm; the
# builder and the final stage use the same base so the venv's interpreter
# symlinks (/opt/venv/bin/python -> /usr/local/bin/python3.11) stay valid.

# ---------------------------------------------------------------------------
# builder: resolve nothing, install exactly the hash-pinned runtime lock
# ---------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /build
COPY requirements.lock ./
# --require-hashes: every distribution (transitive ones included) must match the
# lock, so the image gets the same bytes CI tested. psycopg[binary] and grpcio
# ship manylinux wheels, so no compiler or libpq is needed even here.
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# ---------------------------------------------------------------------------
# runtime: slim base + the venv + the source; no compilers, no build tools
# ---------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="letraz-health" \
      org.opencontainers.image.description="Letraz backend health service (Django/DRF over gunicorn, plus a gRPC health server)" \
      org.opencontainers.image.version="0.1.0"

# The project itself is NOT pip-installed: the source is copied to /app and put
# on PYTHONPATH. `pip install .` would need a PEP 517 build, whose isolated
# build environment fetches an unpinned setuptools outside the hash-checked
# lock; manage.py and gunicorn run from /app anyway, so an installed copy
# would only be a second, possibly diverging, copy of the same code.
#
# HOME=/tmp: the root filesystem is read-only in Kubernetes and /tmp is the one
# writable mount (an emptyDir); gunicorn puts its control socket under
# $HOME/.gunicorn. HEALTH_DRAIN_FILE lives there too (see ENTRYPOINT).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PATH="/opt/venv/bin:${PATH}" \
    HOME=/tmp \
    PORT=8000 \
    GRPC_PORT=50051 \
    HEALTH_DRAIN_FILE=/tmp/drain

# Fixed, numeric, non-root identity so Kubernetes can verify runAsNonRoot and
# securityContext.runAsUser can name the same UID (10001).
RUN groupadd --system --gid 10001 letraz \
    && useradd --system --uid 10001 --gid letraz --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin letraz

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Only what runs; everything else is kept out by listing, not by .dockerignore
# alone. Files stay root-owned and read-only for the runtime user.
COPY manage.py gunicorn.conf.py ./
COPY letraz ./letraz
COPY core ./core
COPY health ./health

# collectstatic imports the settings, which insist on a secret key outside
# DEBUG: the dummy exists for this RUN only and is not baked into the image's
# environment. Byte-compiling here because the runtime filesystem is read-only.
RUN DJANGO_SECRET_KEY=build-only-not-secret python manage.py collectstatic --noinput \
    && python -m compileall -q letraz core health

USER 10001:10001

EXPOSE 8000 50051

# gunicorn and the gRPC server both drain on SIGTERM.
STOPSIGNAL SIGTERM

# Docker-level liveness (Kubernetes ignores this and uses its own probes). The
# image has no curl: the app's own management command does the request, and
# /live/ touches no dependency, so a broken database never restarts the web.
# Meaningful for the web process only; a grpcserver container run by Docker
# Compose should override it (e.g. `healthcheck: disable: true`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "exec python manage.py health --live \"http://127.0.0.1:${PORT:-8000}/api/v1/health/live/\" --quiet"]

# The drain marker (HEALTH_DRAIN_FILE, written by `manage.py drain` from the
# preStop hook) lives on /tmp, which survives container restarts: an emptyDir
# in Kubernetes, the writable layer under `docker restart`. A preStop hook
# also runs when the kubelet restarts a container whose liveness probe failed,
# so without this cleanup the restarted process would report "draining" (not
# ready) forever. Remove any stale marker, then exec the command so it is PID 1
# and receives SIGTERM directly.
ENTRYPOINT ["/bin/sh", "-c", "rm -f -- \"${HEALTH_DRAIN_FILE:-/tmp/drain}\"; exec \"$@\"", "letraz-entrypoint"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "letraz.wsgi:application"]
